//! A snapshot of one running process: asked of the daemon, or, with a
//! duration, traced for that long — by the daemon when it runs tiers (it
//! escalates the process on request), else by heapwatch itself — so that
//! only what it allocated in that time and still holds is seen. Also the
//! daemon's list of traced processes.

use std::{
    convert::Infallible,
    io,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    api::{ProcessListEntry, Request, UntracedEntry, call},
    config::{DEFAULT_RING_KIB, DEFAULT_STACK_SAMPLE, DEFAULT_THREAD_SLOTS},
    coverage::{Coverage, Discovery, Untraced},
    probes::{ProbeConfig, ProbeError, Probes, Targets, is_c_library},
    procinfo::{is_kernel_thread, monotonic_ns, owner},
    report::{ProcessReport, SiteSelection, draft_of},
    session::{Retention, Session},
    signals::{stop_on_signals, stop_requested},
    stacks::Symbols,
    tracker::{ProcessState, TrackerConfig},
};

/// Why a snapshot or the process list could not be had.
#[derive(Debug, Error)]
pub enum QueryError {
    /// No daemon answers at the socket.
    #[error(
        "the heapwatch daemon is not running (nothing answers at {path}: {source}); start it with `heapwatch daemon` or `systemctl start heapwatch`, or trace the process yourself for a while with --duration D (as root)"
    )]
    NoDaemon {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The process does not exist.
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// The process is a kernel thread.
    #[error("process {0} is a kernel thread: it has no heap")]
    KernelThread(u32),
    /// Tracing the process without the daemon failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The daemon refused the request, or its answer could not be read.
    #[error("{0}")]
    Refused(String),
}

/// Why tracing a process for a snapshot failed.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The process does not exist (any more).
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// The process maps no C library.
    #[error(
        "process {pid} maps no allocator heapwatch can trace ({}): heapwatch traces the malloc family of glibc, musl, jemalloc, tcmalloc, mimalloc and static executables with symbols",
        reason.label()
    )]
    Untraced {
        /// The process.
        pid: u32,
        /// Why.
        reason: Untraced,
    },
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

/// What a snapshot asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The process.
    pub pid: u32,
    /// At most this many sites, largest first.
    pub top: u32,
    /// Count only blocks at least this old.
    pub min_age: Option<Duration>,
    /// Show the sites whose live bytes grew over this last span (the
    /// daemon keeps their history), by growth.
    pub since: Option<Duration>,
    /// Trace the process for this long: by the daemon if it runs tiers,
    /// else by heapwatch itself.
    pub duration: Option<Duration>,
    /// The daemon's API socket.
    pub socket: PathBuf,
}

/// The snapshot of one process: the process is checked first, then the
/// daemon is asked, or with a duration the process is traced: by the
/// daemon if it takes the request, else here.
pub fn snapshot(request: &SnapshotRequest) -> Result<ProcessReport, QueryError> {
    check_process(request.pid)?;
    let Some(duration) = request.duration else {
        return ask_snapshot(request);
    };
    let asked = Request::Trace {
        pid: request.pid,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    };
    // No daemon, or one that does not take the request: traced here.
    match ask::<u32>(&request.socket, &asked) {
        Ok(_) => traced_by_daemon(request, duration),
        Err(_) => Ok(trace(request, duration)?),
    }
}

/// Waits `duration` (less if the process exits or heapwatch gets
/// SIGINT/SIGTERM) while the daemon traces the process, then asks it.
fn traced_by_daemon(
    request: &SnapshotRequest,
    duration: Duration,
) -> Result<ProcessReport, QueryError> {
    stop_on_signals();
    let started = Instant::now();
    while started.elapsed() < duration && owner(request.pid).is_some() && !stop_requested() {
        std::thread::sleep(WAIT_STEP.min(duration.saturating_sub(started.elapsed())));
    }
    let mut report = ask_snapshot(request)?;
    report.traced_secs = Some(started.elapsed().as_secs_f64());
    Ok(report)
}

/// How often a wait for the daemon's tracing looks at the process and signals.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// The processes the daemon traces, by live bytes.
pub fn list(socket: &Path) -> Result<Vec<ProcessListEntry>, QueryError> {
    ask(socket, &Request::List {})
}

/// The daemon's processes without an allocator it can trace, and why.
pub fn untraced(socket: &Path) -> Result<Vec<UntracedEntry>, QueryError> {
    ask(socket, &Request::Untraced {})
}

/// Refuses a PID that names no process, or a kernel thread (which has no heap).
pub fn check_process(pid: u32) -> Result<(), QueryError> {
    if owner(pid).is_none() {
        return Err(QueryError::NoSuchProcess(pid));
    }
    if is_kernel_thread(pid) {
        return Err(QueryError::KernelThread(pid));
    }
    Ok(())
}

fn ask<T: serde::de::DeserializeOwned>(path: &Path, request: &Request) -> Result<T, QueryError> {
    call(path, request)
        .map_err(|source| QueryError::NoDaemon {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(QueryError::Refused)
}

/// The daemon's snapshot of the process.
fn ask_snapshot(request: &SnapshotRequest) -> Result<ProcessReport, QueryError> {
    ask(
        &request.socket,
        &Request::Snapshot {
            pid: request.pid,
            top: request.top as usize,
            min_age_ms: request.min_age.map_or(0, |age| age.as_millis() as u64),
            since_ms: request.since.map_or(0, |since| since.as_millis() as u64),
        },
    )
}

/// Traces the process for `duration` (less if it exits or heapwatch gets
/// SIGINT/SIGTERM) and reports what it allocated then and still holds.
fn trace(request: &SnapshotRequest, duration: Duration) -> Result<ProcessReport, TraceError> {
    let pid = NonZeroU32::new(request.pid).ok_or(TraceError::NoSuchProcess(request.pid))?;
    let (libc, also) = allocators_of(pid.get())?;
    let mut probes = Probes::attach(&ProbeConfig {
        libc: Some(libc),
        also,
        targets: Targets::Process {
            pid,
            follow_forks: false,
        },
        ring_bytes: DEFAULT_RING_KIB * 1024,
        stack_sample: DEFAULT_STACK_SAMPLE,
        thread_slots: DEFAULT_THREAD_SLOTS,
        hold_at_exec: false,
    })?;
    let mut reader = probes.reader()?;
    stop_on_signals();
    let read_error = |source| TraceError::Read {
        pid: pid.get(),
        source,
    };
    let started = Instant::now();
    let mut session = Session::new(TrackerConfig::default(), Retention::KeepExited);
    while started.elapsed() < duration
        && !session.process(pid.get()).is_some_and(|(_, exited)| exited)
        && !stop_requested()
    {
        session.pump(&mut reader).map_err(read_error)?;
    }
    session.drain(&mut reader);
    let traced = started.elapsed();
    let selection = SiteSelection {
        top: request.top as usize,
        now_ns: Some(monotonic_ns()),
        min_age_ns: request.min_age.map_or(0, |age| age.as_nanos() as u64),
        since: None,
    };
    let no_allocations = ProcessState::default();
    let (state, exited) = session
        .process(pid.get())
        .unwrap_or((&no_allocations, false));
    let mut symbols = Symbols::default();
    let mut report = draft_of(&session, pid.get(), state, exited, &selection, None)
        .finish(|stacks| Ok::<_, Infallible>(symbols.symbolize_all(&stacks)))
        .unwrap_or_else(|never| match never {});
    report.traced_secs = Some(traced.as_secs_f64());
    Ok(report)
}

/// The files providing process `pid`'s allocator, each through the
/// process's own view of it: the C library's first where it is one.
fn allocators_of(pid: u32) -> Result<(PathBuf, Vec<PathBuf>), TraceError> {
    match Discovery::new().running(pid) {
        None => Err(TraceError::NoSuchProcess(pid)),
        Some(Coverage::Untraced(reason)) => Err(TraceError::Untraced { pid, reason }),
        Some(Coverage::Traced(mut files)) => {
            files.sort_by_key(|file| !is_c_library(&file.shown));
            let mut paths = files.into_iter().map(|file| file.path);
            let first = paths.next().ok_or(TraceError::NoSuchProcess(pid))?;
            Ok((first, paths.collect()))
        }
    }
}
