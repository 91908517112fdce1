//! Probes attached to one process alone (`Targets::Selected`): the kernel
//! inserts their breakpoints into that process only.

use std::num::NonZeroU32;

use aya::programs::uprobe::{UProbeLink, UProbeScope};

use super::{CXX_NEW_PROGRAM, ProbeError, Probes, add_target, map_error, tgid_map, uprobe};

/// One process's probes. Dropping them detaches them, return probes first;
/// each detach waits for the kernel's grace period, so drop them off any
/// thread that must stay quick.
pub struct ProcessProbes {
    // Declared first: dropped first.
    returns: Vec<UProbeLink>,
    entries: Vec<UProbeLink>,
}

impl Probes {
    /// Attaches every planned probe to process `pid` alone and traces it.
    pub fn attach_process(&mut self, pid: NonZeroU32) -> Result<ProcessProbes, ProbeError> {
        add_target(&mut self.ebpf, pid.get())?;
        let scope = UProbeScope::OneProcess(pid);
        let mut probes = ProcessProbes {
            returns: Vec::new(),
            entries: Vec::new(),
        };
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

    /// Stops tracing process `pid` (drop its [`ProcessProbes`] too).
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

    /// Takes a link out of its program's keeping, so that dropping it detaches it.
    fn own(
        &mut self,
        program: &'static str,
        link: aya::programs::uprobe::UProbeLinkId,
    ) -> Result<UProbeLink, ProbeError> {
        uprobe(&mut self.ebpf, program)?
            .take_link(link)
            .map_err(|source| ProbeError::Program {
                name: program,
                source: Box::new(source),
            })
    }
}
