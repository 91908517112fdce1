//! Attached probes as owned links: dropping them detaches them, return
//! probes first, each kind all at once. The allocator's probes attached at
//! load are such a set, and so are those of one process alone
//! (`Targets::Selected`), whose breakpoints the kernel inserts into that
//! process only.

use std::num::NonZeroU32;

use aya::programs::uprobe::{UProbeLink, UProbeLinkId, UProbeScope};

use super::{CXX_NEW_PROGRAM, ProbeError, Probes, add_target, map_error, tgid_map, uprobe};

/// A set of attached probes. Dropping it detaches them; detaching waits for
/// the kernel's grace period, so drop it off any thread that must stay quick.
#[derive(Default)]
pub struct AttachedProbes {
    returns: Vec<UProbeLink>,
    entries: Vec<UProbeLink>,
}

impl Drop for AttachedProbes {
    /// Detaches return probes before entry probes: a return probe whose
    /// entry probe is gone would meet returns without their entry. (The
    /// kernel takes one perf event's detach at a time, under one lock, each
    /// waiting for a grace period: detaching from several threads at once
    /// gains nothing.)
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.returns));
        drop(std::mem::take(&mut self.entries));
    }
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
        let mut probes = AttachedProbes::default();
        for planned in self.plan.clone() {
            let function = planned.function;
            if function.returns {
                let program = self.programs.on_return();
                let link = self.attach_one(program, function.name, planned.offset, None, scope)?;
                probes.returns.push(self.own(program, link)?);
            }
            let program = self.programs.entry(function);
            let link = self.attach_one(program, function.name, planned.offset, None, scope)?;
            probes.entries.push(self.own(program, link)?);
        }
        if let Some((runtime, symbols)) = self.cxx_new.clone() {
            for symbol in symbols {
                let link = self.attach_one(CXX_NEW_PROGRAM, symbol, 0, Some(&runtime), scope)?;
                probes.entries.push(self.own(CXX_NEW_PROGRAM, link)?);
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
