//! The daemon's state: the session fed by the applier, the leak rule's
//! histories, and each tick's metric rows. No eBPF here: testable with
//! synthetic events.

use std::collections::HashMap;

use profiler_common::Counter;

use super::post_mortem::Victim;
use crate::{
    coverage::Untraced,
    events::HeapEvent,
    leaks::{LeakConfig, LeakDetector},
    metrics::{AnonRow, Pid, ProcessRow, SelfFigures, bounded_rows},
    procinfo::{ProcessLabels, monotonic_ns},
    report::{ReportDraft, SiteSelection, draft},
    session::{Retention, Session},
    tiers::Tiers,
    tracker::{ProcessState, TrackerConfig},
};

/// Sites in an OOM victim's report, largest first.
const POST_MORTEM_SITES: usize = 50;

/// The kernel's counters, summed over CPUs, indexed by [`Counter`].
pub type KernelCounts = [u64; Counter::COUNT as usize];

/// Everything the applier thread, the ticks and the API answers share.
pub struct DaemonState {
    /// Heap state of every process, the stacks and the counters.
    pub session: Session,
    /// Per-site histories for the leak rule.
    pub detector: LeakDetector,
    /// Stack hashes of processes gone that no live process used at the last tick.
    unused_stacks: Vec<u64>,
    labels: HashMap<u32, ProcessLabels>,
    /// With scope `all`: each process looked at, traced (`None`) or not and why.
    pub coverage: HashMap<u32, Option<Untraced>>,
    /// With scope `tiered`: every process's memory from the kernel, and the
    /// escalations in force.
    pub tiers: Option<Tiers>,
    /// The kernel's count of lost records when processes were last
    /// reconciled with those it runs.
    lost_records_reconciled: u64,
}

impl DaemonState {
    /// A state with no processes.
    pub fn new(tracker: TrackerConfig, leak: LeakConfig) -> Self {
        Self {
            session: Session::new(tracker, Retention::LiveOnly),
            detector: LeakDetector::new(leak),
            unused_stacks: Vec::new(),
            labels: HashMap::new(),
            coverage: HashMap::new(),
            tiers: None,
            lost_records_reconciled: 0,
        }
    }

    /// Decodes and applies one ring-buffer record, read at `read_ns`;
    /// returns the heap or process event it held.
    pub fn apply_record(&mut self, bytes: &[u8], read_ns: u64) -> Option<HeapEvent> {
        let applied = self.session.apply_record(bytes, read_ns)?;
        if let Some(tgid) = applied.ended {
            self.forget_history(tgid);
        }
        Some(applied.event)
    }

    /// Applies one event; a process that exits or execs is forgotten.
    pub fn apply(&mut self, event: &HeapEvent) {
        if let Some(tgid) = self.session.apply(event).ended {
            self.forget_history(tgid);
        }
    }

    /// Forgets process `tgid`'s heap state, as if it had exited unseen (it
    /// is no longer traced).
    pub fn forget_process(&mut self, tgid: u32) {
        if self.session.forget_process(tgid) {
            self.forget_history(tgid);
        }
    }

    /// After records were lost (the kernel's count of them, `lost_records`,
    /// grew since the last call), ends the processes tracked that are not
    /// `running`: their exit records may have been among those lost.
    /// Returns the processes ended.
    pub fn end_vanished(&mut self, lost_records: u64, running: impl Fn(u32) -> bool) -> Vec<u32> {
        if lost_records <= self.lost_records_reconciled {
            return Vec::new();
        }
        self.lost_records_reconciled = lost_records;
        let vanished: Vec<u32> = self
            .session
            .tracked()
            .filter(|&tgid| !running(tgid))
            .collect();
        for &tgid in &vanished {
            if self.session.end_vanished(tgid) {
                self.forget_history(tgid);
            }
        }
        vanished
    }

    /// The tracker's caps and the leak rule's thresholds change.
    pub fn set_config(&mut self, tracker: TrackerConfig, leak: LeakConfig) {
        self.session.set_tracker_config(tracker);
        self.detector.set_config(leak);
    }

    fn forget_history(&mut self, tgid: u32) {
        self.detector.forget_process(tgid);
        self.labels.remove(&tgid);
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
        let mut rows = Vec::new();
        for (tgid, state) in self.session.running() {
            self.detector.sample(tgid, state);
            rows.push(row(tgid, state, &self.detector, now_ns));
        }
        let mut shown = bounded_rows(rows, top);
        for row in &mut shown {
            let Pid::Process(pid) = row.pid else {
                continue;
            };
            let cached = self.labels.entry(pid).or_insert_with(|| labels(pid));
            row.comm.clone_from(&cached.comm);
            row.unit.clone_from(&cached.unit);
            row.runtime.clone_from(&cached.runtime);
            row.pod_uid.clone_from(&cached.pod_uid);
        }
        self.unused_stacks = self.session.retire_unused_stacks();
        let mut coverage = std::collections::BTreeMap::new();
        for untraced in self.coverage.values() {
            *coverage.entry(*untraced).or_default() += 1;
        }
        let anon = self.anon_rows(top, &mut labels);
        let watched = self.tiers.as_ref().map(|tiers| {
            let alone = tiers
                .watched()
                .filter(|(pid, _)| !self.coverage.contains_key(pid));
            u64::try_from(alone.count()).unwrap_or(u64::MAX)
        });
        let own = SelfFigures {
            session: self.session.figures(),
            kernel: *kernel,
            coverage,
            watched,
            anon,
        };
        (shown, own)
    }

    /// Process `pid`'s anonymous memory growth over the window, bytes per second.
    fn anon_growth_rate(&self, tiers: &Tiers, pid: u32) -> f64 {
        let tick_secs = self.detector.config().tick.as_secs_f64();
        tiers.growth_per_tick(pid) / tick_secs.max(f64::MIN_POSITIVE)
    }

    /// Tier 0's rows: the `top` processes by anonymous memory, and every
    /// one escalated, growth in bytes per second.
    fn anon_rows(&self, top: usize, labels: &mut impl FnMut(u32) -> ProcessLabels) -> Vec<AnonRow> {
        let Some(tiers) = &self.tiers else {
            return Vec::new();
        };
        let mut watched: Vec<(u32, u64)> = tiers.watched().collect();
        watched.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<(u32, u64)> = watched
            .iter()
            .enumerate()
            .filter(|&(rank, &(pid, _))| rank < top || tiers.is_escalated(pid))
            .map(|(_, &row)| row)
            .collect();
        shown
            .into_iter()
            .map(|(pid, anon_bytes)| {
                let traced = self.session.process(pid).filter(|&(_, exited)| !exited);
                AnonRow {
                    pid,
                    labels: labels(pid),
                    anon_bytes,
                    growth_rate: self.anon_growth_rate(tiers, pid),
                    escalated: tiers.is_escalated(pid),
                    live_bytes: traced.map(|(state, _)| state.live_bytes()),
                    retention: traced.is_some()
                        && self
                            .detector
                            .process_history(pid)
                            .is_some_and(|heap| tiers.retains(pid, heap)),
                }
            })
            .collect()
    }

    /// What is known of process `pid`, which the OOM killer chose with
    /// `anon_bytes` of anonymous memory: its sites if traced (its exit,
    /// which drops them, is still to come), its growth if tier 0 watched it.
    pub fn oom_victim(&mut self, pid: u32, anon_bytes: u64) -> Victim {
        let selection = SiteSelection {
            top: POST_MORTEM_SITES,
            now_ns: Some(monotonic_ns()),
            min_age_ns: 0,
            since: None,
        };
        Victim {
            pid,
            labels: self
                .labels
                .get(&pid)
                .cloned()
                .unwrap_or_else(|| ProcessLabels::read(pid)),
            anon_bytes,
            anon_growth_rate: self
                .tiers
                .as_ref()
                .map(|tiers| self.anon_growth_rate(tiers, pid)),
            // Normalized now with the mappings read at its attach: it may
            // be gone by the time the report is written.
            draft: self
                .snapshot(pid, &selection)
                .map(|draft| draft.normalize_with(self.session.sites_mut())),
        }
    }

    /// How far back the leak rule keeps each site's live bytes.
    pub fn leak_window(&self) -> std::time::Duration {
        self.detector.config().window
    }

    /// The draft of a snapshot of process `pid` at `now_ns`: the sites
    /// `selection` picks, with the leak rule's verdict on each. `None` when
    /// the process made no allocation seen.
    pub fn snapshot(&self, pid: u32, selection: &SiteSelection) -> Option<ReportDraft> {
        let (state, _) = self.session.process(pid)?;
        let now_ns = selection.now_ns.unwrap_or_default();
        let verdict = self.detector.verdict(pid, state, now_ns);
        draft(&self.session, pid, selection, Some(&verdict))
    }

    /// Notes the records the kernel lost, per process (tgid, count), found
    /// at `now_ns`: those processes' figures are inexact, and for a window
    /// their growth makes no leak suspect (a lost free leaves a block that
    /// looks live).
    pub fn note_lost(&mut self, lost: &[(u32, u64)], now_ns: u64) {
        self.session.note_lost(lost, now_ns);
    }

    /// The stack hashes of processes gone that no live process used at the
    /// last tick: the kernel is to forget them, with this state still locked
    /// (every new process brings stacks of its own). Dropped from the
    /// session's stack table a tick later.
    pub fn take_unused_stacks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.unused_stacks)
    }
}

/// One process's metric row, judged by the leak rule at `now_ns`.
fn row(tgid: u32, state: &ProcessState, detector: &LeakDetector, now_ns: u64) -> ProcessRow {
    let verdict = detector.verdict(tgid, state, now_ns);
    let c = state.counters();
    ProcessRow {
        pid: Pid::Process(tgid),
        comm: String::new(),
        unit: String::new(),
        runtime: String::new(),
        pod_uid: String::new(),
        live_bytes: state.live_bytes(),
        live_allocations: state.live_blocks(),
        allocated_bytes: c.bytes_allocated,
        freed_bytes: c.bytes_freed,
        allocations: c.allocs,
        frees: c.frees,
        leak_suspect_bytes: verdict.suspect_bytes(state),
        growth_rate: verdict.process_growth_rate(),
        inexact: state.inexact(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        events::{EventKind, RawSite, Task, stack_record_bytes},
        report::SiteReport,
        tracker::TIME_GRAIN_NS,
    };

    const SECOND: u64 = 1_000_000_000;

    fn state() -> DaemonState {
        let leak = LeakConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(4),
            min_age: Duration::from_secs(2),
        };
        DaemonState::new(TrackerConfig::default(), leak)
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

    /// The sites of a snapshot of process 10 at `now`, counting blocks at
    /// least `min_age` old, at most `top`.
    fn snapshot(s: &DaemonState, now: u64, min_age: u64, top: usize) -> Option<Vec<SiteReport>> {
        let selection = SiteSelection {
            top,
            now_ns: Some(now),
            min_age_ns: min_age,
            since: None,
        };
        Some(s.snapshot(10, &selection)?.report().sites.clone())
    }

    #[test]
    fn after_records_are_lost_processes_no_longer_running_are_ended() {
        let mut s = state();
        for tgid in [7, 8, 9] {
            s.apply(&alloc(tgid, 0x1000, 1, 0));
        }
        let running = |tgid: u32| tgid == 7;
        assert!(
            s.end_vanished(0, running).is_empty(),
            "nothing lost: no check"
        );
        let mut ended = s.end_vanished(3, running);
        ended.sort_unstable();
        assert_eq!(ended, [8, 9]);
        assert_eq!(s.session.tracked().collect::<Vec<_>>(), [7]);
        assert_eq!(
            s.session.figures().events[EventKind::Exit as usize],
            0,
            "no exit counted"
        );
        s.apply(&alloc(8, 0x1000, 1, 0));
        assert!(
            s.end_vanished(3, running).is_empty(),
            "no new loss: no check"
        );
        assert_eq!(s.end_vanished(4, running), [8]);
    }

    fn labels(pid: u32) -> ProcessLabels {
        ProcessLabels {
            comm: format!("proc{pid}"),
            unit: "test.scope".to_owned(),
            ..ProcessLabels::default()
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
        let leaker = rows
            .iter()
            .find(|r| r.pid == Pid::Process(10))
            .expect("leaker row");
        // Blocks allocated at 0, 1 and 2 s are older than 2 s at t = 5 s.
        assert_eq!(leaker.leak_suspect_bytes, 300);
        assert!(leaker.growth_rate > 99.0, "{leaker:?}");
        assert_eq!(
            (leaker.comm.as_str(), leaker.unit.as_str()),
            ("proc10", "test.scope")
        );
        let constant = rows
            .iter()
            .find(|r| r.pid == Pid::Process(20))
            .expect("constant row");
        assert_eq!(constant.leak_suspect_bytes, 0);
    }

    #[test]
    fn a_process_that_lost_records_is_inexact_and_suspect_of_nothing_for_a_window() {
        let mut s = state();
        let leaker_at = |s: &mut DaemonState, now: u64| {
            let (rows, _) = s.tick(now, 10, &KernelCounts::default(), labels);
            let row = rows
                .into_iter()
                .find(|r| r.pid == Pid::Process(10))
                .expect("row");
            let sites = snapshot(s, now, 0, 10).expect("tracked");
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
            s.session.process(99).is_none(),
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

        let all = snapshot(&s, 6 * SECOND, 0, 10).expect("tracked");
        let figures: Vec<(u64, Option<f64>)> = all
            .iter()
            .map(|site| (site.live_bytes, site.oldest_age_secs))
            .collect();
        // Block times are kept to the tracker's grain, rounded up.
        let five_seconds = (5 * SECOND).div_ceil(TIME_GRAIN_NS) * TIME_GRAIN_NS;
        let age_of_five = (6 * SECOND - five_seconds) as f64 / 1e9;
        assert_eq!(figures, [(700, Some(age_of_five)), (600, Some(6.0))]);
        assert!(!all[0].leak_suspect);
        assert!(all[1].leak_suspect);
        assert!(
            all[1].growth_bytes_per_sec.is_some_and(|rate| rate > 99.0),
            "{:?}",
            all[1]
        );

        let old = snapshot(&s, 6 * SECOND, 3 * SECOND, 10).expect("tracked");
        let figures: Vec<(u64, u64)> = old
            .iter()
            .map(|site| (site.live_bytes, site.live_blocks))
            .collect();
        assert_eq!(figures, [(300, 3)], "blocks of 0, 1 and 2 s");
        assert_eq!(
            snapshot(&s, 6 * SECOND, 0, 1).map(|sites| sites.len()),
            Some(1)
        );
        assert!(s.snapshot(99, &SiteSelection::ALL).is_none());
    }

    #[test]
    fn the_stacks_of_processes_gone_are_unused_once_no_live_process_shares_them() {
        // As in the daemon: a forked child starts with its parent's heap.
        let mut s = DaemonState::new(
            TrackerConfig {
                copy_on_fork: true,
                ..TrackerConfig::default()
            },
            LeakConfig::default(),
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
            shares_memory: false,
        });
        let unused_at_tick = |s: &mut DaemonState| {
            let (_, own) = s.tick(SECOND, 10, &KernelCounts::default(), labels);
            (s.take_unused_stacks(), own.session.stacks_held)
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
        s.apply(&HeapEvent::Exec { tgid: 10 });
        s.apply(&alloc(10, 0x1000, 0x1, 0));
        s.apply(&HeapEvent::Free {
            task: Task { tgid: 10, tid: 10 },
            ptr: 0x55,
        });
        s.apply(&HeapEvent::Exit { tgid: 10 });
        s.apply_record(&[1, 2, 3], 0);
        let mut kernel = KernelCounts::default();
        kernel[Counter::RingbufFull as usize] = 7;
        let (rows, own) = s.tick(SECOND, 10, &kernel, labels);
        assert!(rows.is_empty());
        assert_eq!(own.session.events[..2], [1, 1], "an alloc and a free");
        assert_eq!(own.session.pretrace_frees, 0);
        assert_eq!(
            (
                own.session.unmatched_frees,
                own.session.malformed_records,
                own.kernel[Counter::RingbufFull as usize]
            ),
            (1, 1, 7)
        );
        assert_eq!(own.session.tracked_processes, 0);
    }
}
