//! Attached probes as owned links: dropping them detaches them, return
//! probes first, each kind all at once. The allocator's probes attached at
//! load are such a set, and so are those of one process alone
//! (`Targets::Selected`), whose breakpoints the kernel inserts into that
//! process only.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::programs::uprobe::{UProbeLink, UProbeLinkId, UProbeScope};

use super::{
    AllocatorPlan, Attachment, CXX_NEW_PROGRAM, ProbeError, Probes, add_target, map_error,
    tgid_map, uprobe, uprobe_multi::MultiLink, uprobe_scope,
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

impl AttachedProbes {
    fn push(&mut self, returns: bool, link: Link) {
        if returns {
            self.returns.push(link);
        } else {
            self.entries.push(link);
        }
    }

    /// Takes `other`'s links into this set.
    pub fn absorb(&mut self, mut other: Self) {
        self.returns.append(&mut other.returns);
        self.entries.append(&mut other.entries);
    }

    /// True when nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.returns.is_empty() && self.entries.is_empty()
    }
}

/// One probe to attach: a program at an offset of a file.
struct Probe {
    program: &'static str,
    /// A return probe.
    returns: bool,
    file: PathBuf,
    file_offset: u64,
    /// The symbol there, for errors.
    symbol: String,
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

    /// Attaches the probes planned at load (the allocator and the C++
    /// runtime's `operator new`) with `scope`.
    pub(super) fn attach_planned(
        &mut self,
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        let mut probes: Vec<Probe> = self
            .plans
            .iter()
            .flat_map(|plan| self.probes_of(plan))
            .collect();
        if let Some((runtime, symbols)) = &self.cxx_new {
            probes.extend(symbols.iter().map(|&(symbol, file_offset)| Probe {
                program: CXX_NEW_PROGRAM,
                returns: false,
                file: runtime.clone(),
                file_offset,
                symbol: symbol.to_owned(),
            }));
        }
        self.attach_probes(&probes, scope)
    }

    /// Attaches the probes of another allocator's file, `plan`, with
    /// `scope`: every process that maps that file (its inode), or one.
    pub fn attach_allocator(
        &mut self,
        plan: &AllocatorPlan,
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        let probes = self.probes_of(plan);
        self.attach_probes(&probes, scope)
    }

    /// Attaches the probes of another allocator's file, `plan`, where the
    /// probes attached at load fire (the traced processes).
    pub fn attach_more(&mut self, plan: &AllocatorPlan) -> Result<AttachedProbes, ProbeError> {
        let scope = uprobe_scope(self.targets).unwrap_or(UProbeScope::AllProcesses);
        self.attach_allocator(plan, scope)
    }

    /// The probes of `plan`'s functions: entries and returns.
    fn probes_of(&self, plan: &AllocatorPlan) -> Vec<Probe> {
        let mut probes = Vec::new();
        for planned in &plan.probes {
            let probe = |program, returns| Probe {
                program,
                returns,
                file: plan.path.clone(),
                file_offset: planned.file_offset,
                symbol: planned.symbol.clone(),
            };
            if planned.kind.returns {
                probes.push(probe(self.programs.on_return(), true));
            }
            probes.push(probe(self.programs.entry(planned.kind.entry), false));
        }
        probes
    }

    fn attach_probes(
        &mut self,
        probes: &[Probe],
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        match &self.attachment {
            Attachment::Multi(_) => self.attach_multi(probes, scope),
            Attachment::PerfEvents(_) => self.attach_perf(probes, scope),
        }
    }

    /// Attaches `probes` by multi-uprobe links: one for each program and
    /// file, at every offset it serves there.
    fn attach_multi(
        &self,
        probes: &[Probe],
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        let Attachment::Multi(multi) = &self.attachment else {
            return Ok(AttachedProbes::default());
        };
        let pid = match scope {
            UProbeScope::OneProcess(pid) => Some(pid),
            _ => None,
        };
        // Keyed entry-last: return probes are attached before entry probes,
        // or a call entered in between would have its entry seen and never
        // its return, leaving its thread inside a call for good.
        let mut links: BTreeMap<(bool, &'static str, &Path), Vec<u64>> = BTreeMap::new();
        for probe in probes {
            links
                .entry((!probe.returns, probe.program, &probe.file))
                .or_default()
                .push(probe.file_offset);
        }
        let mut attached = AttachedProbes::default();
        for ((entry, program, library), offsets) in links {
            let returns = !entry;
            let link = multi
                .link(program, library, &offsets, returns, pid)
                .map(Link::Multi)
                .map_err(|source| ProbeError::AttachMulti {
                    program,
                    library: library.to_owned(),
                    source,
                })?;
            attached.push(returns, link);
        }
        Ok(attached)
    }

    /// Attaches `probes` by perf events, one a probe.
    fn attach_perf(
        &mut self,
        probes: &[Probe],
        scope: UProbeScope,
    ) -> Result<AttachedProbes, ProbeError> {
        let mut attached = AttachedProbes::default();
        for probe in probes {
            let link = self.attach_one(
                probe.program,
                &probe.symbol,
                probe.file_offset,
                &probe.file,
                scope,
            )?;
            attached.push(
                probe.returns,
                Link::PerfEvent(self.own(probe.program, link)?),
            );
        }
        Ok(attached)
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
