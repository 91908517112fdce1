//! Every metric heapwatch exports, declared once in [`FAMILIES`] (name,
//! type, help, labels): the registry is built from that table, and the
//! dashboard's, the rules' and the README's names are tested against it.
//! Per-process series are bounded: the top K processes by live bytes plus
//! every process with a leak suspect; the rest are summed into one series
//! (`pid="other"`); series of processes that are gone are removed.

pub mod http;

use std::{fmt, sync::Mutex};

use profiler_common::Counter;
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    process_collector::ProcessCollector,
};

use crate::{coverage::Untraced, events::EventKind, session::SessionFigures};

/// Labels of the per-process series.
const PROCESS_LABELS: &[&str] = &["pid", "comm", "unit", "runtime", "pod_uid"];

/// A metric family heapwatch exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Bytes in live blocks, per process.
    ProcessLiveBytes,
    /// Live blocks, per process.
    ProcessLiveAllocations,
    /// Bytes allocated since tracing began, per process.
    ProcessAllocatedBytes,
    /// Bytes freed since tracing began, per process.
    ProcessFreedBytes,
    /// Allocations since tracing began, per process.
    ProcessAllocations,
    /// Frees since tracing began, per process.
    ProcessFrees,
    /// Live bytes older than min_age at leak-suspect sites, per process.
    ProcessLeakSuspectBytes,
    /// Growth of live bytes over the window, per process.
    ProcessGrowthRate,
    /// 1 when a process's figures are not exact.
    ProcessInexact,
    /// Records decoded, by kind.
    Events,
    /// Records not applied, by reason.
    EventsDropped,
    /// Frees of blocks never seen allocated, in processes traced from their start.
    UnmatchedFrees,
    /// Frees of blocks allocated before tracing began.
    PretraceFrees,
    /// Live blocks not tracked because a cap was reached.
    RefusedAllocations,
    /// Processes with heap state.
    TrackedProcesses,
    /// Approximate memory of the tracker's state.
    TrackerMemory,
    /// User stacks held for allocation sites.
    StacksHeld,
    /// heapwatch's version.
    BuildInfo,
    /// Processes looked at, traced or not and why.
    Processes,
    /// Anonymous resident bytes, per process (tier 0).
    ProcessAnonBytes,
    /// Growth of anonymous resident bytes over the window, per process.
    ProcessAnonGrowthRate,
    /// 1 while a process is traced exactly because it grows (tier 1).
    ProcessEscalated,
    /// Anonymous resident bytes of a traced process beyond its live heap.
    ProcessRetainedBytes,
    /// Retained bytes of a process whose memory grows while its heap does not.
    ProcessRetentionSuspectBytes,
}

/// How a family's values behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole number that goes up and down.
    Gauge,
    /// A real number that goes up and down.
    RealGauge,
    /// A whole number that only goes up (until the daemon restarts).
    Counter,
}

/// One metric family: its name (a contract), type, help and labels.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// Which it is.
    pub metric: Metric,
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// What it measures.
    pub help: &'static str,
    /// Its labels' names.
    pub labels: &'static [&'static str],
}

const fn family(
    metric: Metric,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family {
    Family {
        metric,
        name,
        kind,
        help,
        labels,
    }
}

/// Every metric family, in [`Metric`]'s order.
pub const FAMILIES: [Family; 24] = [
    family(
        Metric::ProcessLiveBytes,
        "heapwatch_process_live_bytes",
        Kind::Gauge,
        "Bytes in live (allocated, not freed) heap blocks.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessLiveAllocations,
        "heapwatch_process_live_allocations",
        Kind::Gauge,
        "Live heap blocks.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessAllocatedBytes,
        "heapwatch_process_allocated_bytes_total",
        Kind::Counter,
        "Heap bytes allocated since tracing began.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessFreedBytes,
        "heapwatch_process_freed_bytes_total",
        Kind::Counter,
        "Heap bytes freed since tracing began.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessAllocations,
        "heapwatch_process_allocations_total",
        Kind::Counter,
        "Heap allocations since tracing began.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessFrees,
        "heapwatch_process_frees_total",
        Kind::Counter,
        "Heap frees since tracing began.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessLeakSuspectBytes,
        "heapwatch_process_leak_suspect_bytes",
        Kind::Gauge,
        "Live bytes older than min_age at sites whose live bytes grow over the window.",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessGrowthRate,
        "heapwatch_process_live_growth_bytes_per_second",
        Kind::RealGauge,
        "Growth of live heap bytes over the leak window, in bytes per second (Theil-Sen).",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessInexact,
        "heapwatch_process_inexact",
        Kind::Gauge,
        "1 when the process's figures are not exact (blocks refused by a cap, frees of blocks never seen, records lost).",
        PROCESS_LABELS,
    ),
    family(
        Metric::Events,
        "heapwatch_events_total",
        Kind::Counter,
        "Ring-buffer records decoded, by kind.",
        &["kind"],
    ),
    family(
        Metric::EventsDropped,
        "heapwatch_events_dropped_total",
        Kind::Counter,
        "Allocator calls and process events not applied, by reason: ring_full (the kernel could not write the record), unpaired (an allocation's entry could not meet its return), targets_full (a forked child could not be traced), malformed (a record could not be decoded).",
        &["reason"],
    ),
    family(
        Metric::UnmatchedFrees,
        "heapwatch_unmatched_frees_total",
        Kind::Counter,
        "Frees of blocks heapwatch never saw allocated, in processes traced from their start: records missed.",
        &[],
    ),
    family(
        Metric::PretraceFrees,
        "heapwatch_pretrace_frees_total",
        Kind::Counter,
        "Frees of blocks allocated before tracing began, in processes running when it began (or forks of them): expected, not a miss.",
        &[],
    ),
    family(
        Metric::RefusedAllocations,
        "heapwatch_refused_allocations_total",
        Kind::Counter,
        "Live blocks not tracked because a memory cap was reached.",
        &[],
    ),
    family(
        Metric::TrackedProcesses,
        "heapwatch_tracked_processes",
        Kind::Gauge,
        "Processes with heap state.",
        &[],
    ),
    family(
        Metric::TrackerMemory,
        "heapwatch_tracker_memory_bytes",
        Kind::Gauge,
        "Approximate memory of the tracker's state.",
        &[],
    ),
    family(
        Metric::StacksHeld,
        "heapwatch_stacks_held",
        Kind::Gauge,
        "User stacks held for allocation sites (those only processes gone used are dropped).",
        &[],
    ),
    family(
        Metric::BuildInfo,
        "heapwatch_build_info",
        Kind::Gauge,
        "heapwatch's version; always 1.",
        &["version"],
    ),
    family(
        Metric::Processes,
        "heapwatch_processes",
        Kind::Gauge,
        "Processes on the host: traced, watched by tier 0 alone (scope tiered), or untraced and why (own_runtime, stripped_static, allocator_not_recognized, attach_failed, over_budget).",
        &["state", "reason"],
    ),
    family(
        Metric::ProcessAnonBytes,
        "heapwatch_process_anon_bytes",
        Kind::Gauge,
        "Anonymous resident bytes (heap, anonymous mappings), from the kernel, of every process (scope tiered).",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessAnonGrowthRate,
        "heapwatch_process_anon_growth_bytes_per_second",
        Kind::RealGauge,
        "Growth of anonymous resident bytes over the window, bytes per second (Theil-Sen; scope tiered).",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessEscalated,
        "heapwatch_process_escalated",
        Kind::Gauge,
        "1 while the process is traced exactly because its memory grows (scope tiered).",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessRetainedBytes,
        "heapwatch_process_retained_bytes",
        Kind::Gauge,
        "Anonymous resident bytes of a traced process beyond its live heap: freed memory its allocator keeps, fragmentation (scope tiered).",
        PROCESS_LABELS,
    ),
    family(
        Metric::ProcessRetentionSuspectBytes,
        "heapwatch_process_retention_suspect_bytes",
        Kind::Gauge,
        "Retained bytes of a traced process whose anonymous memory grows over the window while its live heap does not: allocator retention, not a leak (scope tiered).",
        PROCESS_LABELS,
    ),
];

/// The `kind` label of records of this kind.
pub fn event_kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Alloc => "alloc",
        EventKind::Free => "free",
        EventKind::ReallocFree => "realloc_free",
        EventKind::ReallocFail => "realloc_fail",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::Fork => "fork",
        EventKind::OomVictim => "oom_victim",
    }
}

/// The `reason` label of the records a kernel counter counts as dropped.
fn dropped_reason(counter: Counter) -> &'static str {
    match counter {
        Counter::RingbufFull => "ring_full",
        Counter::Unpaired => "unpaired",
        Counter::TargetsFull => "targets_full",
    }
}

/// A process's `pid` label: its id, or the sum of the processes not shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pid {
    /// One process.
    Process(u32),
    /// The processes summed into one series.
    #[default]
    Other,
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process(pid) => write!(f, "{pid}"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// One process's figures (or the sum of the processes not shown one by one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessRow {
    /// Process id, or [`Pid::Other`].
    pub pid: Pid,
    /// Command name.
    pub comm: String,
    /// systemd unit, container id or cgroup path.
    pub unit: String,
    /// The container runtime, or empty.
    pub runtime: String,
    /// The Kubernetes pod's uid, or empty.
    pub pod_uid: String,
    /// Bytes in live blocks.
    pub live_bytes: u64,
    /// Live blocks.
    pub live_allocations: u64,
    /// Bytes allocated since tracing began.
    pub allocated_bytes: u64,
    /// Bytes freed since tracing began.
    pub freed_bytes: u64,
    /// Allocations since tracing began.
    pub allocations: u64,
    /// Frees since tracing began.
    pub frees: u64,
    /// Live bytes older than min_age at leak-suspect sites.
    pub leak_suspect_bytes: u64,
    /// Growth of live bytes over the window, bytes per second.
    pub growth_rate: f64,
    /// Figures are not exact (records lost, blocks refused, frees unmatched).
    pub inexact: bool,
}

/// The daemon's own figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelfFigures {
    /// The session's counters.
    pub session: SessionFigures,
    /// The kernel's counters, summed over CPUs, indexed by [`Counter`].
    pub kernel: [u64; Counter::COUNT as usize],
    /// Processes by coverage: traced (`None`) or untraced and why; empty
    /// where processes are not looked at (a scope other than `all`).
    pub coverage: std::collections::BTreeMap<Option<Untraced>, u64>,
    /// Processes watched by tier 0 alone (scope `tiered`): neither traced nor
    /// let go; `None` without tiers.
    pub watched: Option<u64>,
    /// Tier 0's rows (scope `tiered`): the processes with the most
    /// anonymous memory, and those escalated.
    pub anon: Vec<AnonRow>,
}

/// One process's tier-0 figures, exported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnonRow {
    /// The process.
    pub pid: u32,
    /// Its labels, as the per-process series have them.
    pub labels: crate::procinfo::ProcessLabels,
    /// Anonymous resident bytes.
    pub anon_bytes: u64,
    /// Their growth over the window, bytes per second.
    pub growth_rate: f64,
    /// Traced exactly because it grows.
    pub escalated: bool,
    /// Its live heap, when traced.
    pub live_bytes: Option<u64>,
    /// Its anonymous memory grows while its traced heap does not.
    pub retention: bool,
}

impl AnonRow {
    /// Anonymous resident bytes the heap does not account for: freed
    /// memory the allocator keeps, fragmentation, and anonymous memory not
    /// from the allocator. `None` when the process is not traced.
    pub fn retained_bytes(&self) -> Option<u64> {
        self.live_bytes
            .map(|live| self.anon_bytes.saturating_sub(live))
    }
}

/// A family's collector.
#[derive(Clone)]
enum Collector {
    Gauge(IntGaugeVec),
    RealGauge(GaugeVec),
    Counter(IntCounterVec),
}

impl Collector {
    fn new(family: &Family) -> Result<Self, prometheus::Error> {
        let opts = Opts::new(family.name, family.help);
        Ok(match family.kind {
            Kind::Gauge => Self::Gauge(IntGaugeVec::new(opts, family.labels)?),
            Kind::RealGauge => Self::RealGauge(GaugeVec::new(opts, family.labels)?),
            Kind::Counter => Self::Counter(IntCounterVec::new(opts, family.labels)?),
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        match self {
            Self::Gauge(v) => registry.register(Box::new(v.clone())),
            Self::RealGauge(v) => registry.register(Box::new(v.clone())),
            Self::Counter(v) => registry.register(Box::new(v.clone())),
        }
    }

    fn reset(&self) {
        match self {
            Self::Gauge(v) => v.reset(),
            Self::RealGauge(v) => v.reset(),
            Self::Counter(v) => v.reset(),
        }
    }

    /// Sets a real-valued series; only a real gauge holds one.
    fn set_real(&self, labels: &[&str], value: f64) {
        if let Self::RealGauge(v) = self {
            v.with_label_values(labels).set(value);
        }
    }

    /// Sets a whole-number series exactly (a counter's series is made anew
    /// at each update, so setting is adding to zero).
    fn set_whole(&self, labels: &[&str], value: u64) {
        match self {
            Self::Gauge(v) => v.with_label_values(labels).set(saturate(value)),
            Self::RealGauge(v) => v.with_label_values(labels).set(value as f64),
            Self::Counter(v) => v.with_label_values(labels).inc_by(value),
        }
    }
}

/// The registry and its metric families.
pub struct Metrics {
    registry: Registry,
    update: Mutex<()>,
    collectors: Vec<Collector>,
}

impl Metrics {
    /// Declares every metric of [`FAMILIES`].
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let collectors = FAMILIES
            .iter()
            .map(Collector::new)
            .collect::<Result<Vec<_>, _>>()?;
        for collector in &collectors {
            collector.register(&registry)?;
        }
        // The daemon's own CPU, memory, descriptors and threads, under the
        // standard `process_*` names every exporter uses.
        registry.register(Box::new(ProcessCollector::for_self()))?;
        let metrics = Self {
            registry,
            update: Mutex::new(()),
            collectors,
        };
        metrics
            .collector(Metric::BuildInfo)
            .set_whole(&[env!("CARGO_PKG_VERSION")], 1);
        Ok(metrics)
    }

    fn collector(&self, metric: Metric) -> &Collector {
        &self.collectors[metric as usize]
    }

    /// Replaces every series with this tick's figures.
    pub fn update(&self, rows: &[ProcessRow], own: &SelfFigures) {
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        for family in FAMILIES.iter().filter(|f| f.metric != Metric::BuildInfo) {
            self.collector(family.metric).reset();
        }
        for row in rows {
            self.set_process(row);
        }
        for kind in EventKind::ALL {
            self.collector(Metric::Events)
                .set_whole(&[event_kind_label(kind)], own.session.events[kind as usize]);
        }
        let dropped = self.collector(Metric::EventsDropped);
        for counter in Counter::ALL {
            dropped.set_whole(&[dropped_reason(counter)], own.kernel[counter as usize]);
        }
        let session = &own.session;
        dropped.set_whole(&["malformed"], session.malformed_records);
        for (metric, value) in [
            (Metric::UnmatchedFrees, session.unmatched_frees),
            (Metric::PretraceFrees, session.pretrace_frees),
            (Metric::RefusedAllocations, session.refused_allocations),
            (Metric::TrackedProcesses, session.tracked_processes),
            (Metric::TrackerMemory, session.tracker_memory_bytes),
            (Metric::StacksHeld, session.stacks_held),
        ] {
            self.collector(metric).set_whole(&[], value);
        }
        for (untraced, count) in &own.coverage {
            let labels = match untraced {
                None => ["traced", ""],
                Some(reason) => ["untraced", reason.label()],
            };
            self.collector(Metric::Processes).set_whole(&labels, *count);
        }
        if let Some(watched) = own.watched {
            self.collector(Metric::Processes)
                .set_whole(&["watched", ""], watched);
        }
        for row in &own.anon {
            let pid = row.pid.to_string();
            let l = &row.labels;
            let labels = [
                pid.as_str(),
                l.comm.as_str(),
                l.unit.as_str(),
                l.runtime.as_str(),
                l.pod_uid.as_str(),
            ];
            self.collector(Metric::ProcessAnonBytes)
                .set_whole(&labels, row.anon_bytes);
            self.collector(Metric::ProcessAnonGrowthRate)
                .set_real(&labels, row.growth_rate);
            self.collector(Metric::ProcessEscalated)
                .set_whole(&labels, u64::from(row.escalated));
            if let Some(retained) = row.retained_bytes() {
                self.collector(Metric::ProcessRetainedBytes)
                    .set_whole(&labels, retained);
                self.collector(Metric::ProcessRetentionSuspectBytes)
                    .set_whole(&labels, if row.retention { retained } else { 0 });
            }
        }
    }

    fn set_process(&self, row: &ProcessRow) {
        let pid = row.pid.to_string();
        let labels = [
            pid.as_str(),
            row.comm.as_str(),
            row.unit.as_str(),
            row.runtime.as_str(),
            row.pod_uid.as_str(),
        ];
        for (metric, value) in [
            (Metric::ProcessLiveBytes, row.live_bytes),
            (Metric::ProcessLiveAllocations, row.live_allocations),
            (Metric::ProcessLeakSuspectBytes, row.leak_suspect_bytes),
            (Metric::ProcessInexact, u64::from(row.inexact)),
        ] {
            self.collector(metric).set_whole(&labels, value);
        }
        // The other processes are a set that changes from tick to tick: a
        // sum of their counters would go down, which a counter never does.
        if row.pid != Pid::Other {
            for (metric, value) in [
                (Metric::ProcessAllocatedBytes, row.allocated_bytes),
                (Metric::ProcessFreedBytes, row.freed_bytes),
                (Metric::ProcessAllocations, row.allocations),
                (Metric::ProcessFrees, row.frees),
            ] {
                self.collector(metric).set_whole(&labels, value);
            }
        }
        self.collector(Metric::ProcessGrowthRate)
            .set_real(&labels, row.growth_rate);
    }

    /// The text exposition of every metric, consistent with one update.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The rows exported: the `top` processes by live bytes and every process
/// with leak-suspect bytes, one by one; the rest summed into `pid="other"`.
pub fn bounded_rows(mut rows: Vec<ProcessRow>, top: usize) -> Vec<ProcessRow> {
    rows.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then_with(|| a.pid.cmp(&b.pid))
    });
    let mut shown = Vec::new();
    let mut other = ProcessRow {
        pid: Pid::Other,
        comm: "other".to_owned(),
        unit: "other".to_owned(),
        runtime: String::new(),
        pod_uid: String::new(),
        ..ProcessRow::default()
    };
    let mut summed = 0;
    for (rank, row) in rows.into_iter().enumerate() {
        if rank < top || row.leak_suspect_bytes > 0 {
            shown.push(row);
            continue;
        }
        summed += 1;
        other.live_bytes += row.live_bytes;
        other.live_allocations += row.live_allocations;
        other.growth_rate += row.growth_rate;
        other.inexact |= row.inexact;
    }
    if summed > 0 {
        shown.push(other);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, live_bytes: u64, suspect: u64) -> ProcessRow {
        ProcessRow {
            pid: Pid::Process(pid),
            comm: format!("p{pid}"),
            unit: "test.service".to_owned(),
            runtime: String::new(),
            pod_uid: String::new(),
            live_bytes,
            live_allocations: 1,
            allocated_bytes: live_bytes,
            allocations: 1,
            leak_suspect_bytes: suspect,
            ..ProcessRow::default()
        }
    }

    #[test]
    fn keeps_the_top_and_the_suspects_and_sums_the_rest() {
        let rows = vec![
            row(1, 10, 0),
            row(2, 500, 0),
            row(3, 300, 0),
            row(4, 5, 7),
            row(5, 1, 0),
        ];
        let shown = bounded_rows(rows, 2);
        let pids: Vec<String> = shown.iter().map(|r| r.pid.to_string()).collect();
        assert_eq!(pids, ["2", "3", "4", "other"]);
        let other = shown.last().expect("other row");
        assert_eq!((other.live_bytes, other.live_allocations), (11, 2));
    }

    #[test]
    fn the_other_processes_get_gauges_and_no_counter() {
        let metrics = Metrics::new().expect("metrics register");
        let rows = bounded_rows(vec![row(1, 10, 0), row(2, 500, 0), row(3, 5, 0)], 1);
        metrics.update(&rows, &SelfFigures::default());
        let text = metrics.render().expect("renders");
        let other: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("pid=\"other\""))
            .collect();
        assert!(
            other
                .iter()
                .any(|l| l.starts_with("heapwatch_process_live_bytes{")),
            "{text}"
        );
        for family in FAMILIES.iter().filter(|f| f.kind == Kind::Counter) {
            assert!(
                !other
                    .iter()
                    .any(|l| l.starts_with(&format!("{}{{", family.name))),
                "{} sums a changing set:\n{text}",
                family.name
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("heapwatch_process_allocations_total{")
                    && l.contains("pid=\"2\"")),
            "a shown process keeps its counters:\n{text}"
        );
    }

    #[test]
    fn the_daemon_exports_its_own_process_figures() {
        let metrics = Metrics::new().expect("metrics register");
        let text = metrics.render().expect("renders");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "no {name}:\n{text}"
            );
        }
    }

    #[test]
    fn no_other_row_when_everything_fits() {
        let shown = bounded_rows(vec![row(1, 10, 0)], 5);
        assert_eq!(shown.len(), 1);
        assert!(bounded_rows(vec![], 5).is_empty());
    }

    #[test]
    fn renders_contract_names_and_drops_gone_processes() {
        let metrics = Metrics::new().expect("metrics register");
        let mut own = SelfFigures::default();
        own.session.events[EventKind::Alloc as usize] = 3;
        own.kernel[Counter::RingbufFull as usize] = 2;
        own.coverage.insert(None, 5);
        own.coverage.insert(Some(Untraced::OwnRuntime), 1);
        own.watched = Some(40);
        metrics.update(&[row(1, 10, 0), row(2, 20, 4)], &own);
        let text = metrics.render().expect("renders");
        for line in [
            "heapwatch_process_live_bytes{comm=\"p2\",pid=\"2\",pod_uid=\"\",runtime=\"\",unit=\"test.service\"} 20",
            "heapwatch_process_leak_suspect_bytes{comm=\"p2\",pid=\"2\",pod_uid=\"\",runtime=\"\",unit=\"test.service\"} 4",
            "heapwatch_processes{reason=\"\",state=\"traced\"} 5",
            "heapwatch_processes{reason=\"own_runtime\",state=\"untraced\"} 1",
            "heapwatch_processes{reason=\"\",state=\"watched\"} 40",
            "heapwatch_events_total{kind=\"alloc\"} 3",
            "heapwatch_events_dropped_total{reason=\"ring_full\"} 2",
            "# TYPE heapwatch_process_allocations_total counter",
            "heapwatch_build_info{version=",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        metrics.update(&[row(2, 20, 4)], &own);
        let text = metrics.render().expect("renders");
        assert!(
            !text.contains("pid=\"1\""),
            "a gone process's series remain:\n{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new().expect("metrics register");
        let mut odd = row(9, 1, 0);
        odd.comm = "a\"b\\c\nd".to_owned();
        metrics.update(&[odd], &SelfFigures::default());
        let text = metrics.render().expect("renders");
        assert!(text.contains(r#"comm="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn the_table_is_in_metric_order_with_unique_names() {
        for (index, family) in FAMILIES.iter().enumerate() {
            assert_eq!(
                family.metric as usize, index,
                "{} is out of order",
                family.name
            );
        }
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a name is declared twice");
    }

    #[test]
    fn every_family_is_exported_with_its_type() {
        let metrics = Metrics::new().expect("metrics register");
        let mut own = SelfFigures::default();
        own.coverage.insert(None, 1);
        own.anon.push(AnonRow {
            pid: 1,
            live_bytes: Some(0),
            ..AnonRow::default()
        });
        metrics.update(&[row(1, 10, 0)], &own);
        let text = metrics.render().expect("renders");
        for family in &FAMILIES {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge | Kind::RealGauge => "gauge",
            };
            let line = format!("# TYPE {} {kind}", family.name);
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    /// Every `heapwatch_*` name in `text`, with a suffix Prometheus adds
    /// to a counter's samples (`_total` is part of our names) left as is.
    fn names_in(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("heapwatch_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let before = rest[..start].chars().next_back();
            if !before.is_some_and(|c| {
                c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.' || c == '-'
            }) {
                names.push(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn every_metric_named_in_deploy_and_the_docs_is_in_the_table() {
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        for (file, text) in [
            (
                "deploy/grafana-dashboard.json",
                include_str!("../../../deploy/grafana-dashboard.json"),
            ),
            (
                "deploy/prometheus-rules.yml",
                include_str!("../../../deploy/prometheus-rules.yml"),
            ),
            ("README.md", include_str!("../../../README.md")),
            ("docs/metrics.md", include_str!("../../../docs/metrics.md")),
        ] {
            let names = names_in(text);
            assert!(!names.is_empty(), "{file} names no metric");
            for name in names {
                assert!(
                    known.contains(&name.as_str()),
                    "{file} names {name}, which heapwatch does not export"
                );
            }
        }
    }
}
