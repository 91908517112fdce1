//! The daemon as a library: system-wide tracing, leak suspects every tick,
//! and Prometheus metrics; sd_notify readiness and watchdog; SIGTERM/SIGINT
//! detach and return; SIGHUP reloads the configuration. Configured by a
//! [`ConfigSource`] (the file and the flags), never by the command line's types.

mod allocator_keeper;
mod answers;
mod notify;
mod pipeline;
mod post_mortem;
mod scope_keeper;
mod state;

use std::{
    collections::BTreeMap,
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::{Interval, MissedTickBehavior, interval},
};

pub use state::{DaemonState, KernelCounts};

use profiler_common::Counter;

use crate::{
    config::{ConfigSource, DaemonConfig, LoadError},
    coverage::{Coverage, Discovery, Untraced},
    metrics::{Metrics, http},
    probes::{KnownStacks, ProbeConfig, ProbeError, Probes, Targets},
    procinfo::{self, ProcessLabels, monotonic_ns},
    scope::Scope,
    stacks::{DEFAULT_CACHE_FRAMES, SymbolService},
    tiers::{Decisions, Tiers, Usage, anon_bytes_of, cpu_ticks_of},
};

/// Why the daemon could not start or run.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The probes could not be loaded or attached.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// The metrics address could not be bound.
    #[error("listen on {address} for /metrics: {source} (choose another with --listen ADDR:PORT)")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The API socket could not be bound.
    #[error("bind the API socket {path}: {source}")]
    Api {
        /// The socket's path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The metrics registry could not be built.
    #[error("set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The runtime or a signal handler could not be set up.
    #[error("start the daemon's runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The process may open too few files.
    #[error(
        "heapwatch daemon needs at least {MIN_OPEN_FILES} open files and may open only {limit}: raise the limit (`ulimit -n {OPEN_FILES}`, or LimitNOFILE= in its unit)"
    )]
    OpenFiles {
        /// The hard limit found.
        limit: u64,
    },
}

/// Open files the daemon needs at least: its listeners' connections (two
/// [`crate::connections::MAX_CONNECTIONS`]), a perf event per probe
/// attached, a file per mapped object it symbolizes.
const MIN_OPEN_FILES: u64 = 1024;

/// Open files the daemon raises its soft limit to, if the hard limit allows.
const OPEN_FILES: u64 = 65_536;

/// Raises the soft limit of open files towards [`OPEN_FILES`] (a host's
/// default soft limit, 1,024, is a shell's, not a daemon's); refuses to
/// start where the hard limit is below [`MIN_OPEN_FILES`], rather than fail
/// later in the middle of its work.
fn raise_open_files_limit() -> Result<(), DaemonError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(DaemonError::Runtime(io::Error::last_os_error()));
    }
    if limit.rlim_max < MIN_OPEN_FILES {
        return Err(DaemonError::OpenFiles {
            limit: limit.rlim_max,
        });
    }
    let wanted = limit.rlim_max.min(OPEN_FILES).max(limit.rlim_cur);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(DaemonError::Runtime(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Loads the probes and checks that everything attaches; prints what works.
pub fn check(source: &ConfigSource) -> Result<(), DaemonError> {
    let config = source.load()?;
    bind_metrics(config.listen)?;
    let probes = Probes::attach(&probe_config(&config))?;
    print_check(&probes, &config);
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT, answering the API at `socket`.
/// The configuration, the /metrics address and the API socket's path are
/// checked before any probe is loaded.
pub fn run(source: &ConfigSource, socket: &Path) -> Result<(), DaemonError> {
    raise_open_files_limit()?;
    let config = source.load()?;
    let metrics_listener = bind_metrics(config.listen)?;
    crate::api::check_vacant(socket).map_err(|source| DaemonError::Api {
        path: socket.to_owned(),
        source,
    })?;
    let mut probes = Probes::attach(&probe_config(&config))?;
    let reader = probes.reader()?;
    let known_stacks = probes.known_stacks()?;
    let mut new_state = DaemonState::new(config.tracker(), config.leak);
    if matches!(config.scope, Scope::Tiered(_)) {
        new_state.tiers = Some(Tiers::new(config.tiers()));
    }
    let state = Arc::new(Mutex::new(new_state));
    let progress = Arc::new(pipeline::Progress::new().map_err(DaemonError::Runtime)?);
    let probes = Arc::new(Mutex::new(probes));
    let (changes, keeper_thread) = match &config.scope {
        Scope::All => {
            let (sender, receiver) = mpsc::channel();
            let mut keeper =
                allocator_keeper::AllocatorKeeper::new(Arc::clone(&probes), Arc::clone(&state));
            keeper.attach_installed();
            keeper.scan();
            let thread = thread::spawn(move || keeper.run(&receiver));
            (Some(sender), Some(thread))
        }
        Scope::Only(_) | Scope::Tiered(_) => {
            let (sender, receiver) = mpsc::channel();
            let mut keeper = scope_keeper::ScopeKeeper::new(
                config.scope.clone(),
                Arc::clone(&probes),
                Arc::clone(&state),
            );
            keeper.attach_running();
            let thread = thread::spawn(move || keeper.run(&receiver));
            (Some(sender), Some(thread))
        }
    };
    let escalations = changes
        .clone()
        .filter(|_| matches!(config.scope, Scope::Tiered(_)));
    let api_source = Arc::new(answers::ApiSource {
        state: Arc::clone(&state),
        progress: Arc::clone(&progress),
        symbols: SymbolService::spawn(DEFAULT_CACHE_FRAMES).map_err(DaemonError::Runtime)?,
        escalations: escalations.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (victims, post_mortems) = post_mortem::spawn(&config.state_dir);
    let pipeline = pipeline::spawn(
        reader,
        Arc::clone(&state),
        progress,
        Arc::clone(&stop),
        pipeline::Outlets { changes, victims },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let endpoints = Endpoints {
        metrics: metrics_listener,
        api_socket: socket,
        escalations,
    };
    let result = runtime.block_on(serve(
        source,
        config,
        endpoints,
        &state,
        &probes,
        known_stacks,
        api_source,
    ));
    // Its tasks hold the API's senders of escalations, which the scope
    // keeper waits on to end.
    drop(runtime);
    stop.store(true, Ordering::Relaxed);
    for thread in pipeline {
        let _ = thread.join();
    }
    // The applier, gone, has sent every victim: the writer finishes them.
    let _ = post_mortems.join();
    let _ = notify::notify("STOPPING=1");
    if let Some(keeper) = keeper_thread {
        let _ = keeper.join();
    }
    drop(probes);
    tracing::info!("detached; exiting");
    result
}

/// What the probes of this configuration would be.
fn probe_config(config: &DaemonConfig) -> ProbeConfig {
    ProbeConfig {
        libc: config.libc.clone(),
        also: Vec::new(),
        targets: match config.scope {
            Scope::All => Targets::AllProcesses,
            Scope::Only(_) | Scope::Tiered(_) => Targets::Selected,
        },
        ring_bytes: config.ring_kib * 1024,
        stack_sample: config.stack_sample,
        thread_slots: config.thread_slots,
        hold_at_exec: false,
    }
}

fn print_check(probes: &Probes, config: &DaemonConfig) {
    match &config.scope {
        Scope::All => println!("heapwatch daemon --check: every probe loaded and attached"),
        Scope::Only(selectors) => {
            let scope: Vec<String> = selectors.iter().map(ToString::to_string).collect();
            println!(
                "heapwatch daemon --check: every probe loaded; attached to each process the scope selects ({})",
                scope.join(" ")
            );
        }
        Scope::Tiered(_) => println!(
            "heapwatch daemon --check: every probe loaded; every process watched from the kernel, attached to each that grows (for {:?}) or is pinned",
            config.trace_for
        ),
    }
    println!("  ok      {}", probes.attachment());
    for line in probes.attached() {
        println!("  ok      {line}");
    }
    for function in probes.skipped() {
        println!("  absent  {function} (not in {})", probes.libc().display());
    }
    if matches!(config.scope, Scope::All) {
        print_coverage();
    }
    println!("  ok      /metrics can listen on {}", config.listen);
}

use allocator_keeper::running_pids;

/// What the daemon would find of each running process's allocator.
fn print_coverage() {
    let mut discovery = Discovery::new();
    let mut files: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut untraced: BTreeMap<&'static str, usize> = BTreeMap::new();
    for pid in running_pids() {
        match discovery.running(pid) {
            Some(Coverage::Traced(found)) => {
                for file in found {
                    *files.entry(file.shown).or_default() += 1;
                }
            }
            Some(Coverage::Untraced(reason)) => *untraced.entry(reason.label()).or_default() += 1,
            None => {}
        }
    }
    for (file, processes) in files {
        println!(
            "  ok      allocator {} (used by {processes} processes now)",
            file.display()
        );
    }
    for (reason, processes) in untraced {
        println!("  untraced {processes} processes now: {reason}");
    }
}

/// Binds the /metrics address, before any probe is loaded: a port in use or
/// an address of no interface here is refused with nothing attached.
fn bind_metrics(address: SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    std::net::TcpListener::bind(address).map_err(|source| DaemonError::Listen { address, source })
}

/// Where the daemon answers.
struct Endpoints<'a> {
    /// /metrics, bound before any probe was loaded.
    metrics: std::net::TcpListener,
    /// The API socket's path, checked vacant before any probe was loaded.
    api_socket: &'a Path,
    /// With scope `tiered`: where escalations go (the scope keeper).
    escalations: Option<mpsc::Sender<scope_keeper::Change>>,
}

async fn serve(
    source: &ConfigSource,
    mut config: DaemonConfig,
    endpoints: Endpoints<'_>,
    state: &Mutex<DaemonState>,
    probes: &Mutex<Probes>,
    mut known_stacks: KnownStacks,
    api_source: Arc<answers::ApiSource>,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new()?);
    let Endpoints {
        metrics: metrics_listener,
        api_socket: socket_path,
        escalations,
    } = endpoints;
    let escalations = escalations.as_ref();
    let listener = metrics_listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(metrics_listener))
        .map_err(|source| DaemonError::Listen {
            address: config.listen,
            source,
        })?;
    tokio::spawn(http::serve(listener, Arc::clone(&metrics)));
    let socket = crate::api::bind(socket_path).map_err(|source| DaemonError::Api {
        path: socket_path.to_owned(),
        source,
    })?;
    let answers = Arc::clone(&api_source);
    let handler: crate::api::Handler = Arc::new(move |request, uid| answers.answer(request, uid));
    tokio::spawn(crate::api::serve(socket, handler));
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
    let mut ticks = ticker(config.leak.tick);
    let mut watchdog = notify::watchdog_interval().map(ticker);
    tick(
        state,
        probes,
        &mut known_stacks,
        &metrics,
        config.top_processes,
        escalations,
    );
    if let Err(err) = notify::notify("READY=1") {
        tracing::warn!(error = %err, "sd_notify READY failed");
    }
    let libc = probes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .libc()
        .to_owned();
    match &config.scope {
        Scope::All => {
            tracing::info!(listen = %config.listen, libc = %libc.display(), "tracing every process");
        }
        Scope::Only(selectors) => {
            let scope: Vec<String> = selectors.iter().map(ToString::to_string).collect();
            tracing::info!(listen = %config.listen, libc = %libc.display(), scope = %scope.join(" "), "tracing the selected processes");
        }
        Scope::Tiered(pinned) => {
            let pinned: Vec<String> = pinned.iter().map(ToString::to_string).collect();
            tracing::info!(listen = %config.listen, libc = %libc.display(), pinned = %pinned.join(" "), trace_for = ?config.trace_for, "watching every process; tracing those that grow");
        }
    }
    loop {
        tokio::select! {
            _ = ticks.tick() => tick(state, probes, &mut known_stacks, &metrics, config.top_processes, escalations),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                if let Some(new) = reload(source, &config, state) {
                    if new.leak.tick != config.leak.tick {
                        ticks = ticker(new.leak.tick);
                    }
                    config = new;
                }
            }
            _ = async {
                match watchdog.as_mut() {
                    Some(w) => w.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = notify::notify("WATCHDOG=1");
            }
        }
    }
    tracing::info!("signal received; detaching");
    let _ = fs::remove_file(socket_path);
    Ok(())
}

fn ticker(period: Duration) -> Interval {
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// Re-reads the configuration; a bad one is logged and the old one kept.
fn reload(
    source: &ConfigSource,
    old: &DaemonConfig,
    state: &Mutex<DaemonState>,
) -> Option<DaemonConfig> {
    let new = match source.load() {
        Ok(new) => new,
        Err(err) => {
            tracing::error!(error = %err, "SIGHUP: configuration not reloaded; keeping the one in force");
            return None;
        }
    };
    if new.listen != old.listen
        || new.ring_kib != old.ring_kib
        || new.stack_sample != old.stack_sample
        || new.thread_slots != old.thread_slots
        || new.libc != old.libc
        || new.scope != old.scope
    {
        tracing::warn!(
            "SIGHUP: listen, ring_kib, stack_sample, thread_slots, libc and scope take effect on restart"
        );
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.set_config(new.tracker(), new.leak);
    if let Some(tiers) = state.tiers.as_mut() {
        tiers.set_config(new.tiers());
    }
    tracing::info!(tick = ?new.leak.tick, window = ?new.leak.window, min_age = ?new.leak.min_age, "SIGHUP: configuration reloaded");
    Some(new)
}

/// Samples every process, updates the metrics, and makes the kernel forget
/// the stacks of processes gone (with the state still locked, so that no
/// event applied in between starts using one).
fn tick(
    state: &Mutex<DaemonState>,
    probes: &Mutex<Probes>,
    known_stacks: &mut KnownStacks,
    metrics: &Metrics,
    top: usize,
    escalations: Option<&mpsc::Sender<scope_keeper::Change>>,
) {
    let samples = escalations.map(|_| anon_samples()).unwrap_or_default();
    let (counters, lost) = {
        let mut probes = probes.lock().unwrap_or_else(|e| e.into_inner());
        (probes.counters(), probes.take_lost())
    };
    let lost = lost.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "reading the records lost per process failed");
        Vec::new()
    });
    let kernel = match counters {
        Ok(counts) => counts,
        Err(err) => {
            tracing::warn!(error = %err, "reading the kernel counters failed");
            KernelCounts::default()
        }
    };
    let (rows, own) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = monotonic_ns();
        state.note_lost(&lost, now);
        let lost_records = kernel[Counter::RingbufFull as usize];
        let vanished = state.end_vanished(lost_records, procinfo::is_running);
        if let Some(escalations) = escalations {
            for pid in vanished {
                let _ = escalations.send(scope_keeper::Change::Ended(pid));
            }
            tier_tick(&mut state, &samples, escalations);
        }
        let figures = state.tick(now, top, &kernel, ProcessLabels::read);
        known_stacks.forget(&state.take_unused_stacks());
        figures
    };
    metrics.update(&rows, &own);
}

/// Every process's anonymous resident bytes now (heapwatch's own aside).
fn anon_samples() -> Vec<(u32, u64)> {
    let own = std::process::id();
    // SAFETY: sysconf reads a constant of the system.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    running_pids()
        .into_iter()
        .filter(|&pid| pid != own)
        .filter_map(|pid| {
            let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            Some((pid, anon_bytes_of(&statm, page_size)?))
        })
        .collect()
}

/// Tier 0's tick: growth judged, escalations started and ended, and the
/// cost governor's verdict on each process escalated.
fn tier_tick(
    state: &mut DaemonState,
    samples: &[(u32, u64)],
    escalations: &mpsc::Sender<scope_keeper::Change>,
) {
    let DaemonState {
        tiers,
        session,
        coverage,
        ..
    } = state;
    let Some(tiers) = tiers.as_mut() else {
        return;
    };
    send_decisions(escalations, tiers.tick(samples));
    let usage: Vec<(u32, Usage)> = tiers
        .escalated()
        .filter_map(|pid| {
            let (process, _) = session.process(pid)?;
            let counters = process.counters();
            Some((
                pid,
                Usage {
                    events: counters.allocs + counters.frees,
                    cpu_ns: cpu_ns(pid)?,
                },
            ))
        })
        .collect();
    for pid in tiers.govern(&usage) {
        tracing::warn!(
            pid,
            "tiers: tracing costs the process more than the overhead budget; let go"
        );
        coverage.insert(pid, Some(Untraced::OverBudget));
        let _ = escalations.send(scope_keeper::Change::Released(pid));
    }
    coverage.retain(|pid, untraced| {
        untraced.is_none() || tiers.over_budget().any(|(barred, _)| barred == *pid)
    });
}

/// Process `pid`'s CPU time, user and system, in nanoseconds.
fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(cpu_ticks_of(&stat)? * 1_000_000_000 / ticks_per_sec.max(1))
}

/// Hands a tick's escalations to the scope keeper, which attaches and lets go.
fn send_decisions(escalations: &mpsc::Sender<scope_keeper::Change>, decisions: Decisions) {
    for pid in decisions.escalate {
        tracing::info!(pid, "tiers: memory grows; tracing exactly");
        let _ = escalations.send(scope_keeper::Change::Escalated(pid));
    }
    for pid in decisions.release {
        tracing::info!(pid, "tiers: no longer growing; let go");
        let _ = escalations.send(scope_keeper::Change::Released(pid));
    }
}
