//! The Prometheus registry: every metric declared here, with its labels.
//! Per-process series are bounded: the top K processes by live bytes plus
//! every process with a leak suspect; the rest are summed into one series
//! (`pid="other"`); series of processes that are gone are removed.

pub mod http;

use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Labels of the per-process series.
const PROCESS_LABELS: [&str; 3] = ["pid", "comm", "unit"];

/// One process's figures (or the sum of the processes not shown one by one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessRow {
    /// Process id, or `other`.
    pub pid: String,
    /// Command name.
    pub comm: String,
    /// systemd unit, container id or cgroup path.
    pub unit: String,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfFigures {
    /// Records decoded, by kind.
    pub events: Vec<(&'static str, u64)>,
    /// Records the kernel could not write (ring buffer full).
    pub events_lost: u64,
    /// Other kernel-side drops, by reason.
    pub kernel_drops: Vec<(&'static str, u64)>,
    /// Frees of blocks never seen allocated.
    pub unmatched_frees: u64,
    /// Live blocks not tracked because a cap was reached.
    pub refused_allocations: u64,
    /// Records that could not be decoded.
    pub malformed_records: u64,
    /// Processes with heap state.
    pub tracked_processes: u64,
    /// Approximate memory the tracker takes.
    pub tracker_memory_bytes: u64,
    /// User stacks held for the sites of live processes.
    pub stacks_held: u64,
}

/// The registry and its metric families.
pub struct Metrics {
    registry: Registry,
    update: Mutex<()>,
    live_bytes: IntGaugeVec,
    live_allocations: IntGaugeVec,
    allocated_bytes: IntCounterVec,
    freed_bytes: IntCounterVec,
    allocations: IntCounterVec,
    frees: IntCounterVec,
    leak_suspect_bytes: IntGaugeVec,
    growth_rate: GaugeVec,
    inexact: IntGaugeVec,
    events: IntCounterVec,
    events_lost: IntCounterVec,
    kernel_drops: IntCounterVec,
    unmatched_frees: IntCounterVec,
    refused_allocations: IntCounterVec,
    malformed_records: IntCounterVec,
    tracked_processes: IntGauge,
    tracker_memory_bytes: IntGauge,
    stacks_held: IntGauge,
}

impl Metrics {
    /// Declares every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let per_process = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let v = IntGaugeVec::new(Opts::new(name, help), &PROCESS_LABELS)?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let per_process_total =
            |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), &PROCESS_LABELS)?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let growth_rate = GaugeVec::new(
            Opts::new(
                "heapwatch_process_live_bytes_growth_rate",
                "Growth of live heap bytes over the leak window, in bytes per second (Theil-Sen).",
            ),
            &PROCESS_LABELS,
        )?;
        registry.register(Box::new(growth_rate.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new("heapwatch_build_info", "heapwatch's version; always 1."),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            live_bytes: per_process(
                "heapwatch_process_live_bytes",
                "Bytes in live (allocated, not freed) heap blocks.",
            )?,
            live_allocations: per_process(
                "heapwatch_process_live_allocations",
                "Live heap blocks.",
            )?,
            allocated_bytes: per_process_total(
                "heapwatch_process_allocated_bytes_total",
                "Heap bytes allocated since tracing began.",
            )?,
            freed_bytes: per_process_total(
                "heapwatch_process_freed_bytes_total",
                "Heap bytes freed since tracing began.",
            )?,
            allocations: per_process_total(
                "heapwatch_process_allocations_total",
                "Heap allocations since tracing began.",
            )?,
            frees: per_process_total(
                "heapwatch_process_frees_total",
                "Heap frees since tracing began.",
            )?,
            leak_suspect_bytes: per_process(
                "heapwatch_process_leak_suspect_bytes",
                "Live bytes older than min_age at sites whose live bytes grow over the window.",
            )?,
            inexact: per_process(
                "heapwatch_process_inexact",
                "1 when the process's figures are not exact (blocks refused by a cap, frees of blocks never seen, records lost).",
            )?,
            growth_rate,
            events: counter(
                "heapwatch_events_total",
                "Ring-buffer records decoded, by kind.",
                &["kind"],
            )?,
            events_lost: counter(
                "heapwatch_events_lost_total",
                "Records the kernel could not write (ring buffer full).",
                &[],
            )?,
            kernel_drops: counter(
                "heapwatch_kernel_drops_total",
                "Other kernel-side drops, by reason.",
                &["reason"],
            )?,
            unmatched_frees: counter(
                "heapwatch_unmatched_frees_total",
                "Frees of blocks heapwatch never saw allocated.",
                &[],
            )?,
            refused_allocations: counter(
                "heapwatch_refused_allocations_total",
                "Live blocks not tracked because a memory cap was reached.",
                &[],
            )?,
            malformed_records: counter(
                "heapwatch_malformed_records_total",
                "Ring-buffer records that could not be decoded.",
                &[],
            )?,
            tracked_processes: gauge("heapwatch_tracked_processes", "Processes with heap state.")?,
            tracker_memory_bytes: gauge(
                "heapwatch_tracker_memory_bytes",
                "Approximate memory of the tracker's state.",
            )?,
            stacks_held: gauge(
                "heapwatch_stacks_held",
                "User stacks held for allocation sites (those only processes gone used are dropped).",
            )?,
            registry,
            update: Mutex::new(()),
        })
    }

    /// Replaces every series with this tick's figures.
    pub fn update(&self, rows: &[ProcessRow], own: &SelfFigures) {
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        self.update_processes(rows);
        set_counters(&self.events, &own.events);
        set_counters(&self.kernel_drops, &own.kernel_drops);
        set_counter(&self.events_lost, own.events_lost);
        set_counter(&self.unmatched_frees, own.unmatched_frees);
        set_counter(&self.refused_allocations, own.refused_allocations);
        set_counter(&self.malformed_records, own.malformed_records);
        self.tracked_processes.set(saturate(own.tracked_processes));
        self.tracker_memory_bytes
            .set(saturate(own.tracker_memory_bytes));
        self.stacks_held.set(saturate(own.stacks_held));
    }

    fn update_processes(&self, rows: &[ProcessRow]) {
        for vec in [
            &self.live_bytes,
            &self.live_allocations,
            &self.leak_suspect_bytes,
            &self.inexact,
        ] {
            vec.reset();
        }
        for vec in [
            &self.allocated_bytes,
            &self.freed_bytes,
            &self.allocations,
            &self.frees,
        ] {
            vec.reset();
        }
        self.growth_rate.reset();
        for row in rows {
            let labels = [row.pid.as_str(), row.comm.as_str(), row.unit.as_str()];
            self.live_bytes
                .with_label_values(&labels)
                .set(saturate(row.live_bytes));
            self.live_allocations
                .with_label_values(&labels)
                .set(saturate(row.live_allocations));
            self.leak_suspect_bytes
                .with_label_values(&labels)
                .set(saturate(row.leak_suspect_bytes));
            self.inexact
                .with_label_values(&labels)
                .set(i64::from(row.inexact));
            self.allocated_bytes
                .with_label_values(&labels)
                .inc_by(row.allocated_bytes);
            self.freed_bytes
                .with_label_values(&labels)
                .inc_by(row.freed_bytes);
            self.allocations
                .with_label_values(&labels)
                .inc_by(row.allocations);
            self.frees.with_label_values(&labels).inc_by(row.frees);
            self.growth_rate
                .with_label_values(&labels)
                .set(row.growth_rate);
        }
    }

    /// The text exposition of every metric, consistent with one update.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let _guard = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

fn set_counters(vec: &IntCounterVec, values: &[(&'static str, u64)]) {
    vec.reset();
    for (label, value) in values {
        vec.with_label_values(&[label]).inc_by(*value);
    }
}

fn set_counter(vec: &IntCounterVec, value: u64) {
    vec.reset();
    vec.with_label_values(&[] as &[&str]).inc_by(value);
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
        pid: "other".to_owned(),
        comm: "other".to_owned(),
        unit: "other".to_owned(),
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
        other.allocated_bytes += row.allocated_bytes;
        other.freed_bytes += row.freed_bytes;
        other.allocations += row.allocations;
        other.frees += row.frees;
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
            pid: pid.to_string(),
            comm: format!("p{pid}"),
            unit: "test.service".to_owned(),
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
        let pids: Vec<&str> = shown.iter().map(|r| r.pid.as_str()).collect();
        assert_eq!(pids, ["2", "3", "4", "other"]);
        let other = shown.last().expect("other row");
        assert_eq!((other.live_bytes, other.live_allocations), (11, 2));
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
        let own = SelfFigures {
            events: vec![("alloc", 3)],
            events_lost: 2,
            ..SelfFigures::default()
        };
        metrics.update(&[row(1, 10, 0), row(2, 20, 4)], &own);
        let text = metrics.render().expect("renders");
        for line in [
            "heapwatch_process_live_bytes{comm=\"p2\",pid=\"2\",unit=\"test.service\"} 20",
            "heapwatch_process_leak_suspect_bytes{comm=\"p2\",pid=\"2\",unit=\"test.service\"} 4",
            "heapwatch_events_total{kind=\"alloc\"} 3",
            "heapwatch_events_lost_total 2",
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
}
