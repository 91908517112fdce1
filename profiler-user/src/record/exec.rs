//! A traced process that execs another program — in place, as `chroot ROOT
//! PROG`, `env` or a shell's last command do — is stopped by the kernel
//! once its exec is reported, before the new image runs; the new image's
//! allocators (a root's own libc, a static build) are probed, then it is
//! continued. So a command's allocations are seen from its first, whatever
//! it runs.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use crate::{
    coverage::{Coverage, Discovery},
    probes::{AttachedProbes, Probes, plan_allocator},
    stacks::{FileId, file_id},
};

/// Probes the allocators of the images traced processes exec.
pub struct ExecFollower {
    discovery: Discovery,
    probed: HashSet<FileId>,
    attached: Vec<AttachedProbes>,
    /// The files of `attached`, as the processes name them.
    shown: Vec<String>,
    /// Allocators found but not probed, and why.
    pub failures: Vec<String>,
}

impl ExecFollower {
    /// A follower of processes whose allocators in `probed` are probed already.
    pub fn new(probed: &[PathBuf]) -> Self {
        Self {
            discovery: Discovery::new(),
            probed: probed.iter().filter_map(|path| file_id(path)).collect(),
            attached: Vec::new(),
            shown: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Process `tgid` exec'd and is held: probes its new image's
    /// allocators not yet probed, then continues it.
    pub fn exec(&mut self, tgid: u32, probes: &mut Probes) {
        if let Some(Coverage::Traced(files)) = self.discovery.starting(tgid) {
            for file in files.into_iter().filter(|f| self.probed.insert(f.id)) {
                match plan_allocator(&file.path, false).and_then(|plan| probes.attach_more(&plan)) {
                    Ok(attached) => {
                        self.attached.push(attached);
                        self.shown.push(shown_from_here(tgid, &file.shown));
                    }
                    Err(err) => self
                        .failures
                        .push(format!("{}: {err}", shown_from_here(tgid, &file.shown))),
                }
            }
        }
        // A process gone meanwhile needs nothing.
        // SAFETY: a signal to a process of the recorded command.
        unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
    }

    /// The allocators' files probed since the command started.
    pub fn probed_since(&self) -> Vec<String> {
        self.shown.clone()
    }

    /// The probes attached, to be dropped (detached) with the others.
    pub fn into_attached(self) -> Vec<AttachedProbes> {
        self.attached
    }
}

/// `path` as process `tgid` names it, under its root as heapwatch sees
/// that root when it is another directory (a chroot).
fn shown_from_here(tgid: u32, path: &Path) -> String {
    match std::fs::read_link(format!("/proc/{tgid}/root")) {
        Ok(root) if root != Path::new("/") => root
            .join(path.strip_prefix("/").unwrap_or(path))
            .display()
            .to_string(),
        _ => path.display().to_string(),
    }
}
