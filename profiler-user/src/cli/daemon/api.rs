//! The daemon's answers to API requests: health, the process list, and
//! snapshots of one process's live sites with symbolized stacks.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use super::{DaemonState, pipeline::Progress};
use crate::{
    api::{Reply, Request, authorize},
    events::RawSite,
    procinfo::{ProcessLabels, has_exited, is_kernel_thread, monotonic_ns, owner},
    report::{ProcessReport, SampledStacks, SiteReport},
    stacks::{RawStack, SiteResolver, StackStatus, StackTable, SymbolService},
    tracker::ProcessState,
};

/// What the API handler reads.
pub struct ApiSource {
    /// The daemon's state.
    pub state: Arc<Mutex<DaemonState>>,
    /// How far the reader and applier have got.
    pub progress: Arc<Progress>,
    /// The symbolizer thread and its cache.
    pub symbols: SymbolService,
}

/// How long a query waits for the records written before it to be applied.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// What a snapshot request asks for.
struct SnapshotQuery {
    pid: u32,
    top: usize,
    min_age_ns: u64,
}

impl ApiSource {
    /// Answers `request` from the caller with `uid`. The list and snapshots
    /// first wait for every record written before the request to be applied.
    pub fn answer(&self, request: Request, uid: u32) -> Reply {
        if !matches!(request, Request::Health {}) {
            self.catch_up();
        }
        match request {
            Request::Health {} => self.health(),
            Request::List {} => self.list(uid),
            Request::Snapshot {
                pid,
                top,
                min_age_ms,
            } => {
                let query = SnapshotQuery {
                    pid,
                    top,
                    min_age_ns: min_age_ms.saturating_mul(1_000_000),
                };
                match self.snapshot(&query, uid) {
                    Ok(process) => match serde_json::to_value(process) {
                        Ok(value) => Reply::ok(value),
                        Err(err) => Reply::error(err),
                    },
                    Err(message) => Reply::error(message),
                }
            }
        }
    }

    fn catch_up(&self) {
        if !self.progress.wait_applied(monotonic_ns(), CATCH_UP_LIMIT) {
            tracing::warn!(
                limit = ?CATCH_UP_LIMIT,
                "the event pipeline is behind: answering before the latest records are applied"
            );
        }
    }

    fn health(&self) -> Reply {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Reply::ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "tracked_processes": state.tracker.processes().count(),
            "live_allocations": state.tracker.live_blocks(),
            "tracker_memory_bytes": state.tracker.memory_bytes(),
        }))
    }

    fn list(&self, uid: u32) -> Reply {
        let mut rows: Vec<(u32, u64, u64)> = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .tracker
                .processes()
                .map(|(pid, p)| (pid, p.live_bytes(), p.live_blocks()))
                .collect()
        };
        rows.retain(|(pid, _, _)| owner(*pid).is_some_and(|o| authorize(uid, *pid, o).is_ok()));
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let list: Vec<_> = rows
            .into_iter()
            .map(|(pid, bytes, blocks)| {
                json!({"pid": pid, "comm": ProcessLabels::read(pid).comm, "live_bytes": bytes, "live_allocations": blocks})
            })
            .collect();
        Reply::ok(json!(list))
    }

    fn snapshot(&self, query: &SnapshotQuery, uid: u32) -> Result<ProcessReport, String> {
        let pid = query.pid;
        let owner = owner(pid).ok_or_else(|| format!("no such process: {pid}"))?;
        authorize(uid, pid, owner).map_err(|e| e.to_string())?;
        if is_kernel_thread(pid) {
            return Err(format!("process {pid} is a kernel thread: it has no heap"));
        }
        let now = monotonic_ns();
        let (mut report, sites, raw_stacks, examples) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let not_seen = || {
                if has_exited(pid) {
                    return format!("process {pid} has exited");
                }
                format!(
                    "process {pid} has made no allocation heapwatch saw (it traces the C library's malloc family)"
                )
            };
            let sites = state
                .snapshot_sites(pid, now, query.min_age_ns, query.top)
                .ok_or_else(not_seen)?;
            let process = state.tracker.process(pid).ok_or_else(not_seen)?;
            let raw_stacks: Vec<_> = sites
                .iter()
                .map(|site| state.stacks.get(site.held.stats.site.stack).cloned())
                .collect();
            let examples = sampled_examples(process, &state.stacks, &raw_stacks);
            (
                ProcessReport::summary(pid, process, false),
                sites,
                raw_stacks,
                examples,
            )
        };
        if query.min_age_ns > 0 {
            report.only_older_than_secs = Some(query.min_age_ns as f64 / 1e9);
        }
        let mut resolver = SiteResolver::new();
        let stacks: Vec<_> = sites
            .iter()
            .zip(&raw_stacks)
            .map(|(site, raw)| resolver.observe(pid, site.held.stats.site, || raw.as_deref()))
            .collect();
        let example_stacks: Vec<_> = examples
            .iter()
            .flatten()
            .map(|(site, raw)| resolver.observe(pid, *site, || Some(&**raw)))
            .collect();
        let mut batch = stacks.clone();
        batch.extend(example_stacks);
        let mut symbolized = self.symbols.symbolize(batch).map_err(|e| e.to_string())?;
        let mut example_frames = symbolized.split_off(stacks.len()).into_iter();
        report.sites = sites
            .iter()
            .zip(stacks.iter().zip(symbolized))
            .zip(&examples)
            .map(|((site, (stack, frames)), example)| SiteReport {
                oldest_age_secs: Some(now.saturating_sub(site.held.oldest_ns) as f64 / 1e9),
                growth_bytes_per_sec: Some(site.growth_bytes_per_sec),
                leak_suspect: site.leak_suspect,
                sampled_stack: example
                    .as_ref()
                    .and_then(|_| example_frames.next())
                    .unwrap_or_default(),
                ..SiteReport::new(&site.held.stats, frames, stack.status)
            })
            .collect();
        Ok(report)
    }
}

/// For each site whose callers were not sampled (by its stack, `raw`), the
/// full-stack site sampled most often at its call site, with its stack.
fn sampled_examples(
    process: &ProcessState,
    stacks: &StackTable,
    raw: &[Option<Arc<RawStack>>],
) -> Vec<Option<(RawSite, Arc<RawStack>)>> {
    let unsampled = |stack: &Option<Arc<RawStack>>| {
        stack
            .as_deref()
            .filter(|s| s.status == StackStatus::Unsampled)
            .and_then(|s| s.frames.first().copied())
    };
    if !raw.iter().any(|stack| unsampled(stack).is_some()) {
        return vec![None; raw.len()];
    }
    let sampled = SampledStacks::new(process.sites(), |site| {
        let stack = stacks.get(site.stack)?;
        Some((stack.status, *stack.frames.first()?))
    });
    raw.iter()
        .map(|stack| {
            let full = sampled.for_caller(unsampled(stack)?)?;
            Some((full, Arc::clone(stacks.get(full.stack)?)))
        })
        .collect()
}
