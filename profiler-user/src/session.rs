//! The one engine: ring-buffer records in; every process's heap (the
//! tracker), the stacks the kernel sent and the session's own counters out.
//! `record`, `snapshot --duration` and the daemon all feed one of these, and
//! [`crate::report::draft`] builds every process report from it.

use std::{
    collections::{HashMap, HashSet},
    io,
    time::Duration,
};

use crate::{
    events::{EventKind, HeapEvent, Record, decode},
    probes::EventReader,
    procinfo,
    stacks::{SiteResolver, StackTable},
    tracker::{EndReason, Finished, ProcessState, Tracker, TrackerConfig},
};

/// How long [`Session::pump`] waits for the kernel's wakeup before draining anyway.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a session keeps of the processes it traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Reports are asked for after processes end (`record`, `snapshot
    /// --duration`): each site is normalized while its process lives, and an
    /// exited process's state is kept for its report.
    KeepExited,
    /// Reports are asked for of running processes only (the daemon): a
    /// process's state goes when it exits or execs, and its stacks are
    /// retired once no live process uses them.
    LiveOnly,
}

/// The heap event a record held, and the process it ended, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The event.
    pub event: HeapEvent,
    /// The process whose state the event closed (exit or exec).
    pub ended: Option<u32>,
}

/// The session's own figures, for the daemon's self metrics and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFigures {
    /// Records decoded, by kind.
    pub events: [u64; EventKind::ALL.len()],
    /// Records that could not be decoded.
    pub malformed_records: u64,
    /// Frees of blocks never seen allocated in processes traced from their
    /// start (records missed), gone processes included.
    pub unmatched_frees: u64,
    /// Frees of blocks allocated before tracing began, in processes not
    /// traced from their start, gone processes included.
    pub pretrace_frees: u64,
    /// Live blocks not tracked because a cap was reached, gone processes included.
    pub refused_allocations: u64,
    /// Processes with heap state.
    pub tracked_processes: u64,
    /// Approximate memory the tracker takes.
    pub tracker_memory_bytes: u64,
    /// User stacks held for allocation sites.
    pub stacks_held: u64,
}

/// One tracing session's state.
pub struct Session {
    retention: Retention,
    tracker: Tracker,
    stacks: StackTable,
    sites: SiteResolver,
    exited: HashMap<u32, ProcessState>,
    /// Stack hashes of the sites of processes gone since the last retirement.
    gone_stacks: HashSet<u64>,
    events: [u64; EventKind::ALL.len()],
    malformed: u64,
    unmatched_gone: u64,
    pretrace_gone: u64,
    refused_gone: u64,
    /// Processes let go while alive: their allocator calls are ignored.
    let_go: HashSet<u32>,
    /// Command names read at each exec, for the reports of processes gone
    /// ([`Retention::KeepExited`]).
    names: HashMap<u32, String>,
}

impl Session {
    /// An empty session.
    pub fn new(tracker: TrackerConfig, retention: Retention) -> Self {
        Self {
            retention,
            tracker: Tracker::new(tracker),
            stacks: StackTable::new(),
            sites: SiteResolver::new(),
            exited: HashMap::new(),
            gone_stacks: HashSet::new(),
            events: [0; EventKind::ALL.len()],
            malformed: 0,
            unmatched_gone: 0,
            pretrace_gone: 0,
            refused_gone: 0,
            let_go: HashSet::new(),
            names: HashMap::new(),
        }
    }

    /// Process `pid`'s command name: as read at its exec, or now.
    pub fn comm(&self, pid: u32) -> Option<String> {
        self.names
            .get(&pid)
            .cloned()
            .or_else(|| procinfo::comm(pid))
    }

    /// What the session keeps of processes.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Waits for the kernel's wakeup (or the poll interval) and applies every
    /// record waiting then.
    pub fn pump(&mut self, reader: &mut EventReader) -> io::Result<()> {
        self.pump_each(reader, |_| {})
    }

    /// As [`Self::pump`], handing each event applied to `each`.
    pub fn pump_each(
        &mut self,
        reader: &mut EventReader,
        each: impl FnMut(&HeapEvent),
    ) -> io::Result<()> {
        reader.wait(POLL_INTERVAL, None)?;
        self.drain_each(reader, each);
        Ok(())
    }

    /// Applies every record waiting in the ring buffer.
    pub fn drain(&mut self, reader: &mut EventReader) {
        self.drain_each(reader, |_| {});
    }

    /// As [`Self::drain`], handing each event applied to `each`.
    pub fn drain_each(&mut self, reader: &mut EventReader, mut each: impl FnMut(&HeapEvent)) {
        reader.drain(|bytes, read_ns| {
            if let Some(applied) = self.apply_record(bytes, read_ns) {
                each(&applied.event);
            }
        });
    }

    /// Decodes and applies one ring-buffer record, read at `read_ns`.
    pub fn apply_record(&mut self, bytes: &[u8], read_ns: u64) -> Option<Applied> {
        match decode(bytes, read_ns) {
            Ok(Record::Heap(event)) => return Some(self.apply(&event)),
            Ok(Record::Stack(stack)) => self.stacks.insert(&stack),
            Err(_) => self.malformed += 1,
        }
        None
    }

    /// Applies one decoded event. An allocator call of a process let go
    /// (forgotten while alive) is counted, not applied: its probes may fire
    /// until they are detached, and its records may wait in the ring buffer.
    pub fn apply(&mut self, event: &HeapEvent) -> Applied {
        self.events[event.kind() as usize] += 1;
        match *event {
            HeapEvent::Exec { tgid } | HeapEvent::Exit { tgid } => self.image_ended(tgid),
            HeapEvent::Fork { .. } | HeapEvent::OomVictim { .. } => {}
            HeapEvent::Alloc { task, .. }
            | HeapEvent::Free { task, .. }
            | HeapEvent::ExitingFree { task, .. }
            | HeapEvent::ReallocFree { task, .. }
            | HeapEvent::ReallocFail { task, .. } => {
                if self.let_go.contains(&task.tgid) {
                    return Applied {
                        event: *event,
                        ended: None,
                    };
                }
            }
        }
        if self.retention == Retention::KeepExited {
            self.normalize_while_live(event);
        }
        let ended = self
            .tracker
            .apply(event)
            .map(|finished| self.finish(finished));
        Applied {
            event: *event,
            ended,
        }
    }

    /// Ends process `tgid`, which the kernel no longer runs though its exit
    /// record never came (lost in an overflow), as that record would have;
    /// no event is counted. True if it had any state.
    pub fn end_vanished(&mut self, tgid: u32) -> bool {
        self.image_ended(tgid);
        match self.tracker.apply(&HeapEvent::Exit { tgid }) {
            Some(finished) => {
                self.finish(finished);
                true
            }
            None => false,
        }
    }

    /// What process `tgid`'s image leaves behind when it ends (exec or exit).
    fn image_ended(&mut self, tgid: u32) {
        self.let_go.remove(&tgid);
        if self.retention == Retention::LiveOnly {
            self.sites.forget(tgid);
        }
    }

    /// The processes known now: with heap state, or traced from their exec.
    pub fn tracked(&self) -> impl Iterator<Item = u32> + '_ {
        self.tracker.known()
    }

    /// Traces process `tgid` again after it was let go.
    pub fn trace_again(&mut self, tgid: u32) {
        self.let_go.remove(&tgid);
    }

    /// Forgets process `tgid`'s heap state, as if it had exited unseen (it
    /// is no longer traced), and ignores its allocator calls until it is
    /// traced again, execs or exits; true if there was any state.
    pub fn forget_process(&mut self, tgid: u32) -> bool {
        self.let_go.insert(tgid);
        match self.tracker.apply(&HeapEvent::Exit { tgid }) {
            Some(finished) => {
                self.finish(finished);
                true
            }
            None => false,
        }
    }

    /// Notes the records the kernel lost, per process (tgid, count), found
    /// at `now_ns`: those processes' figures are inexact.
    pub fn note_lost(&mut self, lost: &[(u32, u64)], now_ns: u64) {
        for &(tgid, count) in lost {
            self.tracker.note_lost(tgid, count, now_ns);
        }
    }

    /// Notes that process `tgid`'s allocator was attached after it had
    /// started using it.
    pub fn note_attached_late(&mut self, tgid: u32) {
        self.tracker.note_attached_late(tgid);
    }

    /// The state of process `pid` and whether it has exited, if the session
    /// holds one.
    pub fn process(&self, pid: u32) -> Option<(&ProcessState, bool)> {
        match self.exited.get(&pid) {
            Some(state) => Some((state, true)),
            None => self.tracker.process(pid).map(|state| (state, false)),
        }
    }

    /// Every process still running, with its state.
    pub fn running(&self) -> impl Iterator<Item = (u32, &ProcessState)> {
        self.tracker.processes()
    }

    /// Every process the session holds a state of, running or exited.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.exited.keys().copied().collect();
        pids.extend(self.tracker.processes().map(|(pid, _)| pid));
        pids
    }

    /// Live blocks kept, in all running processes.
    pub fn live_blocks(&self) -> u64 {
        self.tracker.live_blocks()
    }

    /// Approximate bytes of memory the tracker takes.
    pub fn tracker_memory_bytes(&self) -> u64 {
        self.tracker.memory_bytes()
    }

    /// The tracker's caps and fork rule change (from the next event on).
    pub fn set_tracker_config(&mut self, config: TrackerConfig) {
        self.tracker.set_config(config);
    }

    /// The stacks the kernel has sent.
    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    /// The sites normalized while their processes lived ([`Retention::KeepExited`]).
    pub fn sites(&self) -> &SiteResolver {
        &self.sites
    }

    /// Reads process `tgid`'s mappings now, while it surely lives, for
    /// normalizing its sites later even if it has gone by then (a session
    /// that keeps live processes only normalizes on demand); forgotten at
    /// its exit or exec.
    pub fn remember_maps(&mut self, tgid: u32) {
        self.sites.exec_maps(tgid);
    }

    /// The resolver of sites, with the mappings remembered.
    pub fn sites_mut(&mut self) -> &mut SiteResolver {
        &mut self.sites
    }

    /// Retires the stacks that only processes gone since the last call
    /// used: returns their hashes, for the kernel to forget (they are
    /// dropped from the table a call later, see [`StackTable::retire`]).
    pub fn retire_unused_stacks(&mut self) -> Vec<u64> {
        let in_use = stack_hashes(self.tracker.processes().map(|(_, state)| state));
        let unused = self.gone_stacks.difference(&in_use).copied().collect();
        self.gone_stacks.clear();
        self.stacks.retire(unused, &in_use)
    }

    /// The session's own figures.
    pub fn figures(&self) -> SessionFigures {
        let running = self.tracker.processes().map(|(_, s)| s.counters());
        let start = (self.unmatched_gone, self.pretrace_gone, self.refused_gone);
        let (unmatched, pretrace, refused) = running.fold(start, |(u, p, r), c| {
            (
                u + c.unmatched_frees,
                p + c.pretrace_frees,
                r + c.refused_blocks,
            )
        });
        SessionFigures {
            events: self.events,
            malformed_records: self.malformed,
            unmatched_frees: unmatched - pretrace,
            pretrace_frees: pretrace,
            refused_allocations: refused,
            tracked_processes: self.tracker.processes().count() as u64,
            tracker_memory_bytes: self.tracker.memory_bytes(),
            stacks_held: self.stacks.len() as u64,
        }
    }

    /// Normalizes an allocation's site while its process can still be read,
    /// and follows each process's mappings through fork and exec.
    fn normalize_while_live(&mut self, event: &HeapEvent) {
        match *event {
            HeapEvent::Alloc { task, site, .. } => {
                let stacks = &self.stacks;
                self.sites
                    .observe(task.tgid, site, || stacks.get(site.stack).map(|raw| &**raw));
            }
            HeapEvent::Exec { tgid } => {
                self.sites.exec_maps(tgid);
                if let Some(name) = procinfo::comm(tgid) {
                    self.names.insert(tgid, name);
                }
            }
            HeapEvent::Fork { child, parent, .. } => {
                self.sites.inherit_maps(child, parent);
                if let Some(name) = self.comm(parent) {
                    self.names.insert(child, name);
                }
            }
            _ => {}
        }
    }

    /// Takes a process's final state: kept for its report if it exited and
    /// the session keeps exited processes; otherwise only its counts stay.
    fn finish(&mut self, finished: Finished) -> u32 {
        let tgid = finished.tgid;
        match (self.retention, finished.reason) {
            (Retention::KeepExited, EndReason::Exit) => {
                self.exited.insert(tgid, finished.state);
            }
            (Retention::KeepExited, EndReason::Exec) => {}
            (Retention::LiveOnly, _) => {
                self.gone_stacks.extend(stack_hashes([&finished.state]));
                let counters = finished.state.counters();
                self.unmatched_gone += counters.unmatched_frees;
                self.pretrace_gone += counters.pretrace_frees;
                self.refused_gone += counters.refused_blocks;
            }
        }
        tgid
    }
}

/// The stack hashes of these processes' sites.
fn stack_hashes<'a>(states: impl IntoIterator<Item = &'a ProcessState>) -> HashSet<u64> {
    states
        .into_iter()
        .flat_map(ProcessState::sites)
        .map(|site| site.site.stack)
        .collect()
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
