//! The daemon's answers to API requests: health, the process list, and
//! snapshots of one process's live sites with symbolized stacks.

use std::{
    fs,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, StackTraceMap};
use serde_json::json;

use super::{DaemonState, monotonic_ns};
use crate::{
    api::{Reply, Request, authorize},
    procinfo::ProcessLabels,
    report::{ProcessReport, SiteReport},
    stacks::{SiteResolver, Symbols},
    tracker::SiteStats,
};

/// What the API handler reads.
pub struct ApiSource {
    /// The daemon's state.
    pub state: Arc<Mutex<DaemonState>>,
    /// The kernel's stack-trace map.
    pub stacks: StackTraceMap<MapData>,
}

impl ApiSource {
    /// Answers `request` from the caller with `uid`.
    pub fn answer(&self, request: Request, uid: u32) -> Reply {
        match request {
            Request::Health {} => self.health(),
            Request::List {} => self.list(uid),
            Request::Snapshot { pid, top } => match self.snapshot(pid, top, uid) {
                Ok(process) => match serde_json::to_value(process) {
                    Ok(value) => Reply::ok(value),
                    Err(err) => Reply::error(err),
                },
                Err(message) => Reply::error(message),
            },
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

    fn snapshot(&self, pid: u32, top: usize, uid: u32) -> Result<ProcessReport, String> {
        let owner = owner(pid).ok_or_else(|| format!("no such process: {pid}"))?;
        authorize(uid, pid, owner).map_err(|e| e.to_string())?;
        if is_kernel_thread(pid) {
            return Err(format!("process {pid} is a kernel thread: it has no heap"));
        }
        let now = monotonic_ns();
        let (mut report, sites) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let process = state.tracker.process(pid).ok_or_else(|| {
                format!("process {pid} has made no allocation heapwatch saw (it traces the C library's malloc family)")
            })?;
            let oldest = process.oldest_by_site();
            let mut live: Vec<(u32, SiteStats)> = process
                .sites()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.live_blocks > 0)
                .map(|(i, s)| (i as u32, *s))
                .collect();
            live.sort_by_key(|(_, s)| std::cmp::Reverse(s.live_bytes));
            live.truncate(top);
            let sites: Vec<(SiteStats, Option<u64>, bool)> = live
                .into_iter()
                .map(|(i, s)| {
                    (
                        s,
                        oldest.get(&i).copied(),
                        state.detector.site_grows(pid, i),
                    )
                })
                .collect();
            (ProcessReport::summary(pid, process, false), sites)
        };
        let mut resolver = SiteResolver::new();
        let mut symbols = Symbols::new();
        report.sites = sites
            .into_iter()
            .map(|(s, oldest, suspect)| {
                resolver.observe(pid, s.site, &self.stacks);
                let stack = resolver
                    .frames(pid, s.site)
                    .map(|f| symbols.symbolize(&f))
                    .unwrap_or_default();
                SiteReport {
                    oldest_age_secs: oldest.map(|t| now.saturating_sub(t) as f64 / 1e9),
                    leak_suspect: suspect,
                    ..SiteReport::new(&s, stack)
                }
            })
            .collect();
        Ok(report)
    }
}

/// The real uid owning process `pid`, if it exists.
fn owner(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// Kernel threads have no memory map of their own.
fn is_kernel_thread(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.is_empty())
        && fs::read_link(format!("/proc/{pid}/exe")).is_err()
}
