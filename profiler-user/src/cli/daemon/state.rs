//! The daemon's state: the tracker fed by the reader, and each tick's leak
//! sampling and metric rows. No eBPF here: testable with synthetic events.

use std::collections::{HashMap, HashSet};

use crate::{
    events::{HeapEvent, Record, decode},
    leaks::LeakDetector,
    metrics::{ProcessRow, SelfFigures, bounded_rows},
    procinfo::ProcessLabels,
    stacks::StackTable,
    tracker::{Finished, HeldSite, ProcessState, Tracker},
};

/// Names of the record kinds, for `heapwatch_events_total{kind}`.
const EVENT_KINDS: [&str; 7] = [
    "alloc",
    "free",
    "realloc_free",
    "realloc_fail",
    "exec",
    "exit",
    "fork",
];

/// Everything the reader thread and the ticks share.
pub struct DaemonState {
    /// Heap state of every process.
    pub tracker: Tracker,
    /// Per-site histories for the leak rule.
    pub detector: LeakDetector,
    /// The stacks the kernel has sent.
    pub stacks: StackTable,
    /// Stack hashes of the sites of processes gone since the last tick.
    gone_stacks: HashSet<u64>,
    /// Of those, the ones no live process used at the last tick.
    unused_stacks: Vec<u64>,
    labels: HashMap<u32, ProcessLabels>,
    events: [u64; EVENT_KINDS.len()],
    malformed: u64,
    unmatched_gone: u64,
    refused_gone: u64,
}

impl DaemonState {
    /// A state with no processes.
    pub fn new(tracker: Tracker, detector: LeakDetector) -> Self {
        Self {
            tracker,
            detector,
            stacks: StackTable::new(),
            gone_stacks: HashSet::new(),
            unused_stacks: Vec::new(),
            labels: HashMap::new(),
            events: [0; EVENT_KINDS.len()],
            malformed: 0,
            unmatched_gone: 0,
            refused_gone: 0,
        }
    }

    /// Decodes and applies one ring-buffer record, read at `read_ns`;
    /// returns the heap or process event it held.
    pub fn apply_record(&mut self, bytes: &[u8], read_ns: u64) -> Option<HeapEvent> {
        match decode(bytes, read_ns) {
            Ok(Record::Heap(event)) => {
                self.apply(&event);
                return Some(event);
            }
            Ok(Record::Stack(stack)) => self.stacks.insert(&stack),
            Err(_) => self.malformed += 1,
        }
        None
    }

    /// Applies one event; a process that exits or execs is forgotten.
    pub fn apply(&mut self, event: &HeapEvent) {
        self.events[kind_index(event)] += 1;
        if let Some(finished) = self.tracker.apply(event) {
            self.finish(&finished);
        }
    }

    /// Forgets process `tgid`'s heap state, as if it had exited unseen (it
    /// is no longer traced).
    pub fn forget_process(&mut self, tgid: u32) {
        if let Some(finished) = self.tracker.apply(&HeapEvent::Exit { tgid }) {
            self.finish(&finished);
        }
    }

    fn finish(&mut self, finished: &Finished) {
        self.gone_stacks.extend(stack_hashes([&finished.state]));
        let counters = finished.state.counters();
        self.unmatched_gone += counters.unmatched_frees;
        self.refused_gone += counters.refused_blocks;
        self.detector.forget_process(finished.tgid);
        self.labels.remove(&finished.tgid);
    }

    /// Samples every site for the leak rule and returns this tick's metric
    /// rows (bounded to `top` plus suspects) and the daemon's own figures.
    /// `now_ns` is the kernel's monotonic clock; `labels` reads a process's labels.
    pub fn tick(
        &mut self,
        now_ns: u64,
        top: usize,
        kernel: &KernelCounts,
        mut labels: impl FnMut(u32) -> ProcessLabels,
    ) -> (Vec<ProcessRow>, SelfFigures) {
        let min_age_ns =
            u64::try_from(self.detector.config().min_age.as_nanos()).unwrap_or(u64::MAX);
        let old_before = now_ns.saturating_sub(min_age_ns);
        let window_start = self.window_start(now_ns);
        let mut rows = Vec::new();
        for (tgid, state) in self.tracker.processes() {
            sample(&mut self.detector, tgid, state);
            let suspect = if state.lost_since(window_start) {
                0
            } else {
                suspect_bytes(&self.detector, tgid, state, old_before)
            };
            rows.push(row(
                tgid,
                state,
                suspect,
                self.detector.process_growth_rate(tgid),
            ));
        }
        let mut shown = bounded_rows(rows, top);
        for row in shown.iter_mut().filter(|r| r.pid != "other") {
            let Ok(pid) = row.pid.parse::<u32>() else {
                continue;
            };
            let cached = self.labels.entry(pid).or_insert_with(|| labels(pid));
            row.comm.clone_from(&cached.comm);
            row.unit.clone_from(&cached.unit);
        }
        let in_use = stack_hashes(self.tracker.processes().map(|(_, state)| state));
        let unused = self.gone_stacks.difference(&in_use).copied().collect();
        self.unused_stacks = self.stacks.retire(unused, &in_use);
        self.gone_stacks.clear();
        (shown, self.own_figures(kernel))
    }

    /// The sites of process `tgid` a snapshot shows, largest first, at most
    /// `top`: with `min_age_ns` above 0, only blocks at least that old count.
    /// `None` when the process made no allocation seen.
    pub fn snapshot_sites(
        &self,
        tgid: u32,
        now_ns: u64,
        min_age_ns: u64,
        top: usize,
    ) -> Option<Vec<SnapshotSite>> {
        let process = self.tracker.process(tgid)?;
        let before = match min_age_ns {
            0 => u64::MAX,
            age => now_ns.saturating_sub(age),
        };
        let suspect_before = now_ns.saturating_sub(
            u64::try_from(self.detector.config().min_age.as_nanos()).unwrap_or(u64::MAX),
        );
        let trusted = !process.lost_since(self.window_start(now_ns));
        let sites = process
            .sites_holding(before)
            .into_iter()
            .take(top)
            .map(|held| SnapshotSite {
                held,
                growth_bytes_per_sec: self.detector.site_growth_rate(tgid, held.index),
                leak_suspect: trusted
                    && self.detector.site_grows(tgid, held.index)
                    && held.oldest_ns < suspect_before,
            })
            .collect();
        Some(sites)
    }

    /// Notes the records the kernel lost, per process (tgid, count), found
    /// at `now_ns`: those processes' figures are inexact, and for a window
    /// their growth makes no leak suspect (a lost free leaves a block that
    /// looks live).
    pub fn note_lost(&mut self, lost: &[(u32, u64)], now_ns: u64) {
        for &(tgid, count) in lost {
            self.tracker.note_lost(tgid, count, now_ns);
        }
    }

    /// When the leak rule's window began, seen at `now_ns`.
    fn window_start(&self, now_ns: u64) -> u64 {
        let window = self.detector.config().window.as_nanos();
        now_ns.saturating_sub(u64::try_from(window).unwrap_or(u64::MAX))
    }

    /// The stack hashes of processes gone that no live process used at the
    /// last tick: the kernel is to forget them, with this state still locked
    /// (every new process brings stacks of its own). Dropped from
    /// [`Self::stacks`] a tick later.
    pub fn take_unused_stacks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unused_stacks)
    }

    fn own_figures(&self, kernel: &KernelCounts) -> SelfFigures {
        let live = self.tracker.processes().map(|(_, s)| s.counters());
        let (unmatched, refused) = live
            .fold((self.unmatched_gone, self.refused_gone), |(u, r), c| {
                (u + c.unmatched_frees, r + c.refused_blocks)
            });
        SelfFigures {
            events: EVENT_KINDS.iter().copied().zip(self.events).collect(),
            events_lost: kernel.ringbuf_full,
            kernel_drops: vec![
                ("unpaired", kernel.unpaired),
                ("targets_full", kernel.targets_full),
            ],
            unmatched_frees: unmatched,
            refused_allocations: refused,
            malformed_records: self.malformed,
            tracked_processes: self.tracker.processes().count() as u64,
            tracker_memory_bytes: self.tracker.memory_bytes(),
            stacks_held: self.stacks.len() as u64,
        }
    }
}

/// One site of a snapshot, before its stack is symbolized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotSite {
    /// Its figures and oldest block, counting only the blocks asked for.
    pub held: HeldSite,
    /// Growth of its live bytes over the leak window, bytes per second.
    pub growth_bytes_per_sec: f64,
    /// The leak rule flags it (growing, with blocks older than min_age).
    pub leak_suspect: bool,
}

/// The kernel's drop counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Records not written: ring buffer full.
    pub ringbuf_full: u64,
    /// Calls not paired: a thread's state could not be kept.
    pub unpaired: u64,
    /// Children not added to the target map.
    pub targets_full: u64,
}

/// The stack hashes of these processes' sites.
fn stack_hashes<'a>(states: impl IntoIterator<Item = &'a ProcessState>) -> HashSet<u64> {
    states
        .into_iter()
        .flat_map(ProcessState::sites)
        .map(|site| site.site.stack)
        .collect()
}

fn sample(detector: &mut LeakDetector, tgid: u32, state: &ProcessState) {
    detector.sample_process(tgid, state.live_bytes());
    for (index, site) in state.sites().iter().enumerate() {
        detector.sample_site(tgid, index as u32, site.live_bytes);
    }
}

/// Live bytes older than min_age at the process's growing sites.
fn suspect_bytes(detector: &LeakDetector, tgid: u32, state: &ProcessState, old_before: u64) -> u64 {
    let growing: Vec<u32> = (0..state.sites().len() as u32)
        .filter(|&site| detector.site_grows(tgid, site))
        .collect();
    if growing.is_empty() {
        return 0;
    }
    let old = state.aged_by_site(old_before);
    growing
        .iter()
        .filter_map(|site| old.get(site))
        .map(|aged| aged.bytes)
        .sum()
}

fn row(tgid: u32, state: &ProcessState, leak_suspect_bytes: u64, growth_rate: f64) -> ProcessRow {
    let c = state.counters();
    ProcessRow {
        pid: tgid.to_string(),
        comm: String::new(),
        unit: String::new(),
        live_bytes: state.live_bytes(),
        live_allocations: state.live_blocks(),
        allocated_bytes: c.bytes_allocated,
        freed_bytes: c.bytes_freed,
        allocations: c.allocs,
        frees: c.frees,
        leak_suspect_bytes,
        growth_rate,
        inexact: state.inexact(),
    }
}

fn kind_index(event: &HeapEvent) -> usize {
    match event {
        HeapEvent::Alloc { .. } => 0,
        HeapEvent::Free { .. } | HeapEvent::ExitingFree { .. } => 1,
        HeapEvent::ReallocFree { .. } => 2,
        HeapEvent::ReallocFail { .. } => 3,
        HeapEvent::Exec { .. } => 4,
        HeapEvent::Exit { .. } => 5,
        HeapEvent::Fork { .. } => 6,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        events::{RawSite, Task, stack_record_bytes},
        leaks::LeakConfig,
        tracker::{TIME_GRAIN_NS, TrackerConfig},
    };

    const SECOND: u64 = 1_000_000_000;

    fn state() -> DaemonState {
        let leak = LeakConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(4),
            min_age: Duration::from_secs(2),
        };
        DaemonState::new(
            Tracker::new(TrackerConfig::default()),
            LeakDetector::new(leak),
        )
    }

    fn alloc(tgid: u32, ptr: u64, stack: u64, time_ns: u64) -> HeapEvent {
        HeapEvent::Alloc {
            task: Task { tgid, tid: tgid },
            ptr,
            size: 100,
            site: RawSite { stack },
            time_ns,
        }
    }

    fn labels(pid: u32) -> ProcessLabels {
        ProcessLabels {
            comm: format!("proc{pid}"),
            unit: "test.scope".to_owned(),
        }
    }

    #[test]
    fn a_growing_site_with_old_blocks_is_suspect_and_a_constant_one_is_not() {
        let mut s = state();
        s.apply(&alloc(20, 0x9000, 0x2, 0));
        let mut rows = Vec::new();
        for t in 0..6u64 {
            s.apply(&alloc(10, 0x1000 + t * 0x100, 0x1, t * SECOND));
            (rows, _) = s.tick(t * SECOND, 10, &KernelCounts::default(), labels);
        }
        let leaker = rows.iter().find(|r| r.pid == "10").expect("leaker row");
        // Blocks allocated at 0, 1 and 2 s are older than 2 s at t = 5 s.
        assert_eq!(leaker.leak_suspect_bytes, 300);
        assert!(leaker.growth_rate > 99.0, "{leaker:?}");
        assert_eq!(
            (leaker.comm.as_str(), leaker.unit.as_str()),
            ("proc10", "test.scope")
        );
        let constant = rows.iter().find(|r| r.pid == "20").expect("constant row");
        assert_eq!(constant.leak_suspect_bytes, 0);
    }

    #[test]
    fn a_process_that_lost_records_is_inexact_and_suspect_of_nothing_for_a_window() {
        let mut s = state();
        let leaker_at = |s: &mut DaemonState, now: u64| {
            let (rows, _) = s.tick(now, 10, &KernelCounts::default(), labels);
            let row = rows.into_iter().find(|r| r.pid == "10").expect("row");
            let sites = s.snapshot_sites(10, now, 0, 10).expect("tracked");
            (row.inexact, row.leak_suspect_bytes, sites[0].leak_suspect)
        };
        for t in 0..6u64 {
            s.apply(&alloc(10, 0x1000 + t * 0x100, 0x1, t * SECOND));
            s.tick(t * SECOND, 10, &KernelCounts::default(), labels);
        }
        assert_eq!(leaker_at(&mut s, 5 * SECOND), (false, 300, true), "a leak");
        s.note_lost(&[(10, 3), (99, 1)], 5 * SECOND);
        assert_eq!(
            leaker_at(&mut s, 5 * SECOND),
            (true, 0, false),
            "its growth may be frees lost"
        );
        for t in 6..11u64 {
            s.apply(&alloc(10, 0x1000 + t * 0x100, 0x1, t * SECOND));
            s.tick(t * SECOND, 10, &KernelCounts::default(), labels);
        }
        let (inexact, suspect_bytes, suspect) = leaker_at(&mut s, 10 * SECOND);
        assert!(inexact, "lost records stay counted");
        assert!(
            suspect && suspect_bytes > 0,
            "a window later, growth is a leak again"
        );
        assert!(
            s.tracker.process(99).is_none(),
            "an untracked process is ignored"
        );
    }

    #[test]
    fn snapshots_show_sites_largest_first_and_old_blocks_on_request() {
        let mut s = state();
        for t in 0..6u64 {
            s.apply(&alloc(10, 0x1000 + t * 0x100, 0x1, t * SECOND));
            s.tick(t * SECOND, 10, &KernelCounts::default(), labels);
        }
        s.apply(&alloc(10, 0x9000, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9100, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9200, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9300, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9400, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9500, 0x2, 5 * SECOND));
        s.apply(&alloc(10, 0x9600, 0x2, 5 * SECOND));

        let all = s.snapshot_sites(10, 6 * SECOND, 0, 10).expect("tracked");
        let figures: Vec<(u64, u64, u64)> = all
            .iter()
            .map(|site| {
                (
                    site.held.stats.site.stack,
                    site.held.stats.live_bytes,
                    site.held.oldest_ns,
                )
            })
            .collect();
        // Block times are kept to the tracker's grain, rounded up.
        let five_seconds = (5 * SECOND).div_ceil(TIME_GRAIN_NS) * TIME_GRAIN_NS;
        assert_eq!(figures, [(0x2, 700, five_seconds), (0x1, 600, 0)]);
        assert!(!all[0].leak_suspect);
        assert!(all[1].leak_suspect);
        assert!(all[1].growth_bytes_per_sec > 99.0, "{:?}", all[1]);

        let old = s
            .snapshot_sites(10, 6 * SECOND, 3 * SECOND, 10)
            .expect("tracked");
        let figures: Vec<(u64, u64, u64)> = old
            .iter()
            .map(|site| {
                (
                    site.held.stats.site.stack,
                    site.held.stats.live_bytes,
                    site.held.stats.live_blocks,
                )
            })
            .collect();
        assert_eq!(figures, [(0x1, 300, 3)], "blocks of 0, 1 and 2 s");
        assert_eq!(
            s.snapshot_sites(10, 6 * SECOND, 0, 1).map(|v| v.len()),
            Some(1)
        );
        assert_eq!(s.snapshot_sites(99, 6 * SECOND, 0, 10), None);
    }

    #[test]
    fn the_stacks_of_processes_gone_are_unused_once_no_live_process_shares_them() {
        // As in the daemon: a forked child starts with its parent's heap.
        let mut s = DaemonState::new(
            Tracker::new(TrackerConfig {
                copy_on_fork: true,
                ..TrackerConfig::default()
            }),
            LeakDetector::new(LeakConfig::default()),
        );
        let alloc_with = |tgid, ptr, stack| HeapEvent::Alloc {
            task: Task { tgid, tid: tgid },
            ptr,
            size: 8,
            site: RawSite { stack },
            time_ns: 0,
        };
        let stack = |frame: u64| profiler_common::stack_hash(0, &[frame]);
        for frame in [7, 8, 9] {
            s.apply_record(&stack_record_bytes(&[frame], 0), 0);
        }
        s.apply(&alloc_with(10, 0x10, stack(7)));
        s.apply(&alloc_with(10, 0x20, stack(8)));
        s.apply(&alloc_with(20, 0x10, stack(7)));
        s.apply(&alloc_with(20, 0x20, stack(9)));
        s.apply(&HeapEvent::Fork {
            child: 30,
            parent: 10,
        });
        let unused_at_tick = |s: &mut DaemonState| {
            let (_, own) = s.tick(SECOND, 10, &KernelCounts::default(), labels);
            (s.take_unused_stacks(), own.stacks_held)
        };
        s.apply(&HeapEvent::Exit { tgid: 10 });
        assert_eq!(
            unused_at_tick(&mut s),
            (vec![], 3),
            "20 and 30 hold 7, 8 and 9"
        );
        s.apply(&HeapEvent::Exec { tgid: 30 });
        assert_eq!(
            unused_at_tick(&mut s),
            (vec![stack(8)], 3),
            "20 still holds 7; 8 is kept a tick longer"
        );
        s.apply(&HeapEvent::Exit { tgid: 20 });
        let (mut unused, held) = unused_at_tick(&mut s);
        unused.sort_unstable();
        let mut expected = vec![stack(7), stack(9)];
        expected.sort_unstable();
        assert_eq!((unused, held), (expected, 2), "8 is gone");
        assert!(s.take_unused_stacks().is_empty(), "taken once");
    }

    #[test]
    fn exited_processes_leave_no_row_and_count_their_events() {
        let mut s = state();
        s.apply(&alloc(10, 0x1000, 0x1, 0));
        s.apply(&HeapEvent::Free {
            task: Task { tgid: 10, tid: 10 },
            ptr: 0x55,
        });
        s.apply(&HeapEvent::Exit { tgid: 10 });
        s.apply_record(&[1, 2, 3], 0);
        let kernel = KernelCounts {
            ringbuf_full: 7,
            ..KernelCounts::default()
        };
        let (rows, own) = s.tick(SECOND, 10, &kernel, labels);
        assert!(rows.is_empty());
        assert_eq!(own.events[..2], [("alloc", 1), ("free", 1)]);
        assert_eq!(
            (own.unmatched_frees, own.malformed_records, own.events_lost),
            (1, 1, 7)
        );
        assert_eq!(own.tracked_processes, 0);
    }
}
