//! `heapwatch snapshot --pid N --duration D` without a daemon: heapwatch
//! traces the running process itself for D, then reports the sites holding
//! what it allocated in that time and still holds.

use std::{
    io,
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{
    SnapshotArgs,
    recording::{Recording, SiteSelection},
    session::{stop_on_signals, stop_requested},
};
use crate::{
    probes::{ProbeConfig, ProbeError, Probes, Scope, libc_in_maps},
    procinfo::monotonic_ns,
    report::ProcessReport,
    stacks::Symbols,
    tracker::ProcessState,
};

/// Ring buffer of a standalone snapshot: 4 MiB, as `record`'s default.
const RING_BYTES: u32 = 4 << 20;

/// Why tracing a process for a snapshot failed.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The process does not exist (any more).
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// The process maps no C library.
    #[error(
        "process {0} maps no C library (statically linked?): heapwatch traces the C library's malloc family"
    )]
    NoLibc(u32),
    /// The probes could not be loaded or attached.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// Reading events failed.
    #[error("trace process {pid}: {source}")]
    Read {
        /// The process.
        pid: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Traces process `args.pid` for `duration` (less if it exits or heapwatch
/// gets SIGINT/SIGTERM) and reports what it allocated then and still holds.
pub fn trace_snapshot(
    args: &SnapshotArgs,
    duration: Duration,
) -> Result<ProcessReport, TraceError> {
    let pid = NonZeroU32::new(args.pid).ok_or(TraceError::NoSuchProcess(args.pid))?;
    let libc = allocator_of(pid.get())?;
    let mut probes = Probes::attach(&ProbeConfig {
        libc: Some(libc),
        scope: Scope::Process {
            pid,
            follow_forks: false,
        },
        ring_bytes: RING_BYTES,
        stack_sample: 1,
        thread_slots: crate::config::DEFAULT_THREAD_SLOTS,
    })?;
    let mut reader = probes.reader()?;
    stop_on_signals();
    let read_error = |source| TraceError::Read {
        pid: pid.get(),
        source,
    };
    let started = Instant::now();
    let mut recording = Recording::new(false);
    while started.elapsed() < duration
        && !recording.exited.contains_key(&pid.get())
        && !stop_requested()
    {
        recording.pump(&mut reader).map_err(read_error)?;
    }
    recording.drain(&mut reader);
    let traced = started.elapsed();
    let now = monotonic_ns();
    let selection = SiteSelection {
        before_ns: args
            .min_age
            .map_or(u64::MAX, |age| now.saturating_sub(age.as_nanos() as u64)),
        top: args.top as usize,
        ages_at_ns: Some(now),
    };
    let no_allocations = ProcessState::default();
    let (state, exited) = match recording.exited.get(&pid.get()) {
        Some(state) => (state, true),
        None => (
            recording
                .tracker
                .process(pid.get())
                .unwrap_or(&no_allocations),
            false,
        ),
    };
    let mut report = recording.process_report(
        pid.get(),
        state,
        exited,
        &selection,
        &mut Symbols::default(),
    );
    report.traced_secs = Some(traced.as_secs_f64());
    report.only_older_than_secs = args.min_age.map(|age| age.as_secs_f64());
    Ok(report)
}

/// The C library process `pid` maps, through its root (its mount namespace).
fn allocator_of(pid: u32) -> Result<PathBuf, TraceError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|_| TraceError::NoSuchProcess(pid))?;
    let libc = libc_in_maps(&maps).ok_or(TraceError::NoLibc(pid))?;
    let relative = libc.strip_prefix("/").unwrap_or(&libc);
    Ok(PathBuf::from(format!("/proc/{pid}/root")).join(relative))
}
