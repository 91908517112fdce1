//! The daemon's answers to API requests: health, the process list, and
//! snapshots of one process's live sites with symbolized stacks.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use super::{pipeline::Progress, scope_keeper::Change, state::DaemonState};
use crate::{
    api::{Health, ProcessListEntry, Reply, Request, UntracedEntry, authorize},
    container::Container,
    coverage::Untraced,
    procinfo::{ProcessLabels, has_exited, is_kernel_thread, monotonic_ns, owner},
    report::{ProcessReport, SiteSelection},
    stacks::SymbolService,
    tiers::ticks_covering,
};

/// What the API handler reads.
pub struct ApiSource {
    /// The daemon's state.
    pub state: Arc<Mutex<DaemonState>>,
    /// How far the reader and applier have got.
    pub progress: Arc<Progress>,
    /// The symbolizer thread and its cache.
    pub symbols: SymbolService,
    /// With scope `tiered`: where escalations on request go (the scope keeper).
    pub escalations: Option<mpsc::Sender<Change>>,
}

/// How long a query waits for the records written before it to be applied.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

impl ApiSource {
    /// Answers `request` from the caller with `uid`. The list and snapshots
    /// first wait for every record written before the request to be applied.
    pub fn answer(&self, request: Request, uid: u32) -> Reply {
        if !matches!(request, Request::Health {}) {
            self.catch_up();
        }
        match request {
            Request::Health {} => Reply::answer(&self.health()),
            Request::List {} => Reply::answer(&self.list(uid)),
            Request::Untraced {} => Reply::answer(&self.untraced(uid)),
            Request::Snapshot {
                pid,
                top,
                min_age_ms,
                since_ms,
            } => {
                let selection = SiteSelection {
                    top,
                    now_ns: Some(monotonic_ns()),
                    min_age_ns: min_age_ms.saturating_mul(1_000_000),
                    since: (since_ms > 0).then(|| Duration::from_millis(since_ms)),
                };
                match self.snapshot(pid, &selection, uid) {
                    Ok(process) => Reply::answer(&process),
                    Err(message) => Reply::error(message),
                }
            }
            Request::Trace { pid, duration_ms } => {
                match self.trace(pid, Duration::from_millis(duration_ms), uid) {
                    Ok(()) => Reply::answer(&pid),
                    Err(message) => Reply::error(message),
                }
            }
        }
    }

    /// Escalates `pid` for `duration` at least, as if it grew.
    fn trace(&self, pid: u32, duration: Duration, uid: u32) -> Result<(), String> {
        visible(pid, uid)?;
        let Some(escalations) = &self.escalations else {
            return Err(
                "the daemon traces no process on request: its scope is not `tiered`".to_owned(),
            );
        };
        {
            let mut state = self.lock();
            let tick = state.detector.config().tick;
            let tiers = state.tiers.as_mut().ok_or("the daemon has no tiers")?;
            // One tick more: still traced when the snapshot is asked for.
            tiers
                .request(pid, ticks_covering(duration, tick).saturating_add(1))
                .map_err(|refused| format!("process {pid} is not traced on request: {refused}"))?;
        }
        tracing::info!(pid, ?duration, "tiers: traced on request");
        escalations
            .send(Change::Escalated(pid))
            .map_err(|_| "the daemon is stopping".to_owned())
    }

    fn catch_up(&self) {
        if !self.progress.wait_applied(monotonic_ns(), CATCH_UP_LIMIT) {
            tracing::warn!(
                limit = ?CATCH_UP_LIMIT,
                "the event pipeline is behind: answering before the latest records are applied"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DaemonState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health(&self) -> Health {
        let state = self.lock();
        Health {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tracked_processes: state.session.running().count() as u64,
            live_allocations: state.session.live_blocks(),
            tracker_memory_bytes: state.session.tracker_memory_bytes(),
        }
    }

    /// The processes `uid` may see, by live bytes.
    fn list(&self, uid: u32) -> Vec<ProcessListEntry> {
        let mut rows: Vec<(u32, u64, u64)> = self
            .lock()
            .session
            .running()
            .map(|(pid, p)| (pid, p.live_bytes(), p.live_blocks()))
            .collect();
        rows.retain(|(pid, _, _)| owner(*pid).is_some_and(|o| authorize(uid, *pid, o).is_ok()));
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rows.into_iter()
            .map(|(pid, live_bytes, live_allocations)| ProcessListEntry {
                pid,
                comm: ProcessLabels::read(pid).comm,
                live_bytes,
                live_allocations,
                container: container_of(pid),
            })
            .collect()
    }

    /// The processes `uid` may see that are not traced, and why, by PID.
    fn untraced(&self, uid: u32) -> Vec<UntracedEntry> {
        let mut rows: Vec<(u32, Untraced)> = self
            .lock()
            .coverage
            .iter()
            .filter_map(|(&pid, untraced)| Some((pid, (*untraced)?)))
            .collect();
        rows.retain(|(pid, _)| owner(*pid).is_some_and(|o| authorize(uid, *pid, o).is_ok()));
        rows.sort_unstable_by_key(|&(pid, _)| pid);
        rows.into_iter()
            .map(|(pid, reason)| UntracedEntry {
                pid,
                comm: ProcessLabels::read(pid).comm,
                reason: reason.label().to_owned(),
                container: container_of(pid),
            })
            .collect()
    }

    /// The snapshot of `pid`: drafted under the state's lock, normalized
    /// and symbolized after it.
    fn snapshot(
        &self,
        pid: u32,
        selection: &SiteSelection,
        uid: u32,
    ) -> Result<ProcessReport, String> {
        visible(pid, uid)?;
        let (draft, tiered) = {
            let state = self.lock();
            let window = state.leak_window();
            if selection.since.is_some_and(|since| since > window) {
                return Err(format!(
                    "the daemon keeps the last {} s of each site's live bytes (its leak window, `window` in its config): ask --since for at most that",
                    window.as_secs()
                ));
            }
            (state.snapshot(pid, selection), state.tiers.is_some())
        };
        let draft = draft.ok_or_else(|| {
            if has_exited(pid) {
                format!("process {pid} has exited")
            } else if tiered {
                format!(
                    "process {pid} has made no allocation heapwatch saw: with tiers, the daemon traces a process while its memory grows; trace it now with `heapwatch snapshot --pid {pid} --duration 30s`, or always with --scope pid:{pid}"
                )
            } else {
                format!(
                    "process {pid} has made no allocation heapwatch saw (it traces each process's allocator from when it is picked)"
                )
            }
        })?;
        draft
            .finish(|stacks| self.symbols.symbolize(stacks))
            .map_err(|e| e.to_string())
    }
}

/// Refuses a process that is not there, not the caller's, or a kernel thread.
fn visible(pid: u32, uid: u32) -> Result<(), String> {
    let owner = owner(pid).ok_or_else(|| format!("no such process: {pid}"))?;
    authorize(uid, pid, owner).map_err(|e| e.to_string())?;
    if is_kernel_thread(pid) {
        return Err(format!("process {pid} is a kernel thread: it has no heap"));
    }
    Ok(())
}

/// The short id of process `pid`'s container, or empty.
fn container_of(pid: u32) -> String {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    Container::from_cgroup(&cgroup)
        .map(|c| c.short_id().to_owned())
        .unwrap_or_default()
}
