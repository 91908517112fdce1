//! Scope `all` beyond the C library: each process's allocator is found
//! (coverage.rs), and each allocator's file other than the C library
//! attached at load — a jemalloc, a preloaded tcmalloc or mimalloc, a
//! static executable, a container's own libc — is attached once, by inode,
//! for every process that maps it, when the first process using it
//! appears; it is let go when the last one ends. Processes found without an
//! allocator are kept with the reason, for `ps --all` and the metrics.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use aya::programs::uprobe::UProbeScope;

use super::{DaemonState, scope_keeper::Change};
use crate::{
    coverage::{AllocatorFile, Coverage, Discovery, Untraced},
    probes::{AttachedProbes, Probes, linker_cache, plan_allocator, read_facts},
    stacks::{FileId, file_id, parse_maps},
};

/// How often every process is looked at again: one whose exec record was
/// lost, or gone without its exit record, is caught up with then.
const RESCAN: Duration = Duration::from_secs(30);

/// One allocator's file, attached for every process that maps it.
struct AttachedFile {
    probes: AttachedProbes,
    users: HashSet<u32>,
    shown: PathBuf,
    /// Installed on the host: kept attached with no user, so that the
    /// processes that load it later are traced from their first call.
    installed: bool,
}

/// Attaches and lets go of allocators' files as processes come and go.
pub struct AllocatorKeeper {
    probes: Arc<Mutex<Probes>>,
    state: Arc<Mutex<DaemonState>>,
    discovery: Discovery,
    /// The file attached at load, for every process.
    load_file: Option<FileId>,
    files: HashMap<FileId, AttachedFile>,
    /// The processes looked at, with the attached files they use.
    processes: HashMap<u32, Vec<FileId>>,
}

impl AllocatorKeeper {
    /// A keeper beside the probes attached at load (to `load_file`).
    pub fn new(probes: Arc<Mutex<Probes>>, state: Arc<Mutex<DaemonState>>) -> Self {
        let load_file = {
            let probes = probes.lock().unwrap_or_else(|e| e.into_inner());
            file_id(probes.libc())
        };
        Self {
            probes,
            state,
            discovery: Discovery::new(),
            load_file,
            files: HashMap::new(),
            processes: HashMap::new(),
        }
    }

    /// Attaches the allocators installed on the host (in its linker cache:
    /// a jemalloc, tcmalloc or mimalloc), for every process that loads them.
    pub fn attach_installed(&mut self) {
        for file in installed_allocators() {
            if Some(file.id) != self.load_file && !self.files.contains_key(&file.id) {
                self.attach(&file, true);
            }
        }
    }

    /// Looks at every running process.
    pub fn scan(&mut self) {
        let running = running_pids();
        let gone: Vec<u32> = self
            .processes
            .keys()
            .filter(|pid| !running.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            self.ended(pid);
        }
        for pid in running {
            if !self.processes.contains_key(&pid) {
                let coverage = self.discovery.running(pid);
                let _ = self.cover(pid, coverage);
            }
        }
    }

    /// Applies changes until the reader's side of `changes` hangs up, and
    /// every [`RESCAN`] looks at every process again; then lets go of
    /// every file (dropping their probes detaches them).
    pub fn run(mut self, changes: &mpsc::Receiver<Change>) {
        loop {
            match changes.recv_timeout(RESCAN) {
                Ok(Change::Appeared(pid)) => {
                    // Attached anew before the old image's files are let go:
                    // a file both use stays attached.
                    let before = self.processes.remove(&pid).unwrap_or_default();
                    let coverage = self.discovery.starting(pid);
                    let attached = self.cover(pid, coverage);
                    self.note_if_late(pid, &attached);
                    self.release(pid, before);
                }
                Ok(Change::Ended(pid)) => self.ended(pid),
                // Tiers are not in force with scope `all`: nothing escalates.
                Ok(Change::Escalated(_) | Change::Released(_)) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => self.scan(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Every file's links at once: their grace periods are waited for together.
        let mut all = AttachedProbes::default();
        for (_, file) in self.files.drain() {
            all.absorb(file.probes);
        }
        drop(all);
    }

    /// Attaches what process `pid` needs of `coverage`, and records it;
    /// returns the files attached for it now.
    #[must_use]
    fn cover(&mut self, pid: u32, coverage: Option<Coverage>) -> Vec<FileId> {
        if pid == std::process::id() {
            return Vec::new();
        }
        let Some(coverage) = coverage else {
            return Vec::new();
        };
        let mut attached = Vec::new();
        let outcome = match coverage {
            Coverage::Untraced(reason) => Err(reason),
            Coverage::Traced(files) => self.attach_all(pid, &files, &mut attached),
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.coverage.insert(pid, outcome.err());
        attached
    }

    /// Marks process `pid` as traced late when it already maps one of the
    /// files just attached for it (`attached`: as it sees them): it may have
    /// allocated before.
    fn note_if_late(&self, pid: u32, attached: &[FileId]) {
        if attached.is_empty() {
            return;
        }
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if parse_maps(&maps)
            .iter()
            .any(|m| attached.contains(&(m.device, m.inode)))
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.session.note_attached_late(pid);
        }
    }

    /// Attaches each of `files` not yet attached (adding them to
    /// `attached`); the files `pid` uses are recorded. An error when none
    /// of them could be.
    fn attach_all(
        &mut self,
        pid: u32,
        files: &[AllocatorFile],
        attached: &mut Vec<FileId>,
    ) -> Result<(), Untraced> {
        let mut used = Vec::new();
        let mut covered = false;
        for file in files {
            if Some(file.id) == self.load_file {
                covered = true;
                continue;
            }
            if !self.files.contains_key(&file.id) {
                if !self.attach(file, false) {
                    continue;
                }
                attached.push(file.view);
            }
            if let Some(attached) = self.files.get_mut(&file.id) {
                attached.users.insert(pid);
                used.push(file.id);
                covered = true;
            }
        }
        self.processes.insert(pid, used);
        if covered {
            Ok(())
        } else {
            Err(Untraced::AttachFailed)
        }
    }

    fn attach(&mut self, file: &AllocatorFile, installed: bool) -> bool {
        let attached = plan_allocator(&file.path, false).and_then(|plan| {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.attach_allocator(&plan, UProbeScope::AllProcesses)
        });
        match attached {
            Ok(probes) => {
                tracing::info!(file = %file.shown.display(), "allocator: tracing");
                self.files.insert(
                    file.id,
                    AttachedFile {
                        probes,
                        users: HashSet::new(),
                        shown: file.shown.clone(),
                        installed,
                    },
                );
                true
            }
            Err(err) => {
                tracing::warn!(file = %file.shown.display(), error = %err, "allocator: not attached");
                false
            }
        }
    }

    /// Process `pid` ended (or exec'd): the files only it used are let go.
    fn ended(&mut self, pid: u32) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .coverage
            .remove(&pid);
        if let Some(used) = self.processes.remove(&pid) {
            self.release(pid, used);
        }
    }

    /// Process `pid` no longer uses the files `used` (unless it uses them
    /// still): those no process uses are let go.
    fn release(&mut self, pid: u32, used: Vec<FileId>) {
        let still = self.processes.get(&pid).cloned().unwrap_or_default();
        for id in used.into_iter().filter(|id| !still.contains(id)) {
            let unused = self.files.get_mut(&id).is_some_and(|file| {
                file.users.remove(&pid);
                file.users.is_empty() && !file.installed
            });
            if unused && let Some(file) = self.files.remove(&id) {
                // Detaching waits for a grace period: off this thread.
                thread::spawn(move || {
                    drop(file.probes);
                    tracing::debug!(file = %file.shown.display(), "allocator: detached");
                });
            }
        }
    }
}

/// The allocators' libraries in the host's linker cache: those named for
/// an allocator (`*malloc*`) that define `malloc`.
fn installed_allocators() -> Vec<AllocatorFile> {
    let cache = linker_cache();
    let mut seen = HashSet::new();
    cache
        .lines()
        .filter_map(|line| {
            line.split_once(" => ")
                .map(|(_, path)| PathBuf::from(path.trim()))
        })
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.contains("malloc"))
        })
        .filter_map(|path| {
            let id = file_id(&path)?;
            let facts = read_facts(&path).ok()?;
            (facts.allocator && seen.insert(id)).then(|| AllocatorFile {
                id,
                view: id,
                shown: path.clone(),
                path,
            })
        })
        .collect()
}

/// The processes running now.
pub(super) fn running_pids() -> HashSet<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}
