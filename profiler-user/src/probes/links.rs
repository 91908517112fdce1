//! Attached probes as owned links: dropping them detaches them, return
//! probes first, each kind all at once. The allocator's probes attached at
//! load are such a set, and so are those of one process alone
//! (`Targets::Selected`), whose breakpoints the kernel inserts into that
//! process only.

use std::{collections::BTreeMap, num::NonZeroU32, path::Path};

use aya::programs::uprobe::{UProbeLink, UProbeLinkId, UProbeScope};

use super::{
    Attachment, CXX_NEW_PROGRAM, ProbeError, Probes, add_target, map_error, tgid_map, uprobe,
    uprobe_multi::MultiLink,
};

/// One attachment: a perf event (one probe) or a multi-uprobe link (a
/// program at every offset of one file). Dropping it detaches it.
enum Link {
    PerfEvent(UProbeLink),
    Multi(MultiLink),
}

/// A set of attached probes. Dropping it detaches them; detaching waits for
/// the kernel's grace period, so drop it off any thread that must stay quick.
#[derive(Default)]
pub struct AttachedProbes {
    returns: Vec<Link>,
    entries: Vec<Link>,
}

impl Drop for AttachedProbes {
    /// Detaches return probes before entry probes: a return probe whose
    /// entry probe is gone would meet returns without their entry.
    fn drop(&mut self) {
        detach(std::mem::take(&mut self.returns));
        detach(std::mem::take(&mut self.entries));
    }
}

/// Detaches `links`. Multi-uprobe links at once, a thread each: each waits
/// for a grace period, and grace periods waited for together are shared.
/// Perf events one after another: the kernel detaches them one at a time,
/// under one lock.
fn detach(links: Vec<Link>) {
    std::thread::scope(|scope| {
        for link in links {
            match link {
                Link::PerfEvent(link) => drop(link),
                // A thread that cannot start drops its closure, and the
                // link with it, here: detached all the same.
                Link::Multi(link) => {
                    let _ = std::thread::Builder::new()
                        .name("heapwatch-detach".to_owned())
                        .spawn_scoped(scope, move || drop(link));
                }
            }
        }
    });
}

impl Probes {
    /// Attaches every planned probe to process `pid` alone and traces it.
    pub fn attach_process(&mut self, pid: NonZeroU32) -> Result<AttachedProbes, ProbeError> {
        add_target(&mut self.ebpf, pid.get())?;
        self.attach_planned(UProbeScope::OneProcess(pid))
    }

    /// Stops tracing process `pid` (drop its [`AttachedProbes`] too).
    pub fn release_process(&mut self, pid: u32) -> Result<(), ProbeError> {
        match tgid_map::<u8>(&mut self.ebpf, "TARGETS")?.remove(&pid) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(map_error("TARGETS", source)),
        }
    }

    /// Attaches every planned probe with `scope`.
    pub(super) fn attach_planned(
        &mut self,
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        match &self.attachment {
            Attachment::Multi(_) => self.attach_planned_multi(scope),
            Attachment::PerfEvents(_) => self.attach_planned_perf(scope),
        }
    }

    /// Attaches the planned probes by multi-uprobe links: one for the
    /// return program and one for each entry program, at every offset it
    /// serves, and one for `operator new`.
    fn attach_planned_multi(&self, scope: UProbeScope) -> Result<AttachedProbes, ProbeError> {
        let Attachment::Multi(multi) = &self.attachment else {
            return Ok(AttachedProbes::default());
        };
        let pid = match scope {
            UProbeScope::OneProcess(pid) => Some(pid),
            _ => None,
        };
        let link = |program: &'static str, library: &Path, offsets: &[u64], returns: bool| {
            multi
                .link(program, library, offsets, returns, pid)
                .map(Link::Multi)
                .map_err(|source| ProbeError::AttachMulti {
                    program,
                    library: library.to_owned(),
                    source,
                })
        };
        let mut entries: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
        let mut returns = Vec::new();
        for planned in &self.plan {
            let function = planned.function;
            if function.returns {
                returns.push(planned.file_offset);
            }
            entries
                .entry(self.programs.entry(function))
                .or_default()
                .push(planned.file_offset);
        }
        let mut probes = AttachedProbes::default();
        if !returns.is_empty() {
            let program = self.programs.on_return();
            probes
                .returns
                .push(link(program, &self.libc, &returns, true)?);
        }
        for (program, offsets) in &entries {
            probes
                .entries
                .push(link(program, &self.libc, offsets, false)?);
        }
        if let Some((runtime, symbols)) = &self.cxx_new {
            let offsets: Vec<u64> = symbols.iter().map(|&(_, offset)| offset).collect();
            probes
                .entries
                .push(link(CXX_NEW_PROGRAM, runtime, &offsets, false)?);
        }
        Ok(probes)
    }

    /// Attaches the planned probes by perf events, one a probe.
    fn attach_planned_perf(&mut self, scope: UProbeScope) -> Result<AttachedProbes, ProbeError> {
        let mut probes = AttachedProbes::default();
        for planned in self.plan.clone() {
            let function = planned.function;
            if function.returns {
                let program = self.programs.on_return();
                let link = self.attach_one(program, function.name, planned.offset, None, scope)?;
                probes
                    .returns
                    .push(Link::PerfEvent(self.own(program, link)?));
            }
            let program = self.programs.entry(function);
            let link = self.attach_one(program, function.name, planned.offset, None, scope)?;
            probes
                .entries
                .push(Link::PerfEvent(self.own(program, link)?));
        }
        if let Some((runtime, symbols)) = self.cxx_new.clone() {
            for (symbol, _) in symbols {
                let link = self.attach_one(CXX_NEW_PROGRAM, symbol, 0, Some(&runtime), scope)?;
                probes
                    .entries
                    .push(Link::PerfEvent(self.own(CXX_NEW_PROGRAM, link)?));
            }
        }
        Ok(probes)
    }

    /// Takes a link out of its program's keeping, so that dropping it detaches it.
    fn own(&mut self, program: &'static str, link: UProbeLinkId) -> Result<UProbeLink, ProbeError> {
        uprobe(&mut self.ebpf, program)?
            .take_link(link)
            .map_err(|source| ProbeError::Program {
                name: program,
                source: Box::new(source),
            })
    }
}
