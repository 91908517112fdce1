//! Recording a command: run it traced from its first instruction to its
//! exit, and report its heap as valgrind would.

mod child;
mod command;
mod exec;
mod floor;

use std::{convert::Infallible, io, num::NonZeroU32, path::PathBuf, time::Instant};

use profiler_common::Counter;
use thiserror::Error;

use child::HeldChild;
pub use command::{CommandError, resolve_command};
pub use floor::{FloorOptions, floor};

use exec::ExecFollower;

use crate::{
    events::HeapEvent,
    probes::{
        AttachedProbes, EventReader, ProbeConfig, ProbeError, Probes, Targets, allocators_of,
        linker_cache,
    },
    report::{CommandStatus, ProcessReport, RecordReport, SiteSelection, draft_of},
    session::{Retention, Session},
    signals::delegate_signals,
    stacks::Symbols,
    tracker::{ProcessState, TrackerConfig},
};

/// Why a recording failed.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The command cannot be run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The command could not be started.
    #[error("start {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The probes could not be loaded or attached.
    #[error(transparent)]
    Probes(#[from] ProbeError),
    /// Waiting for the command or reading events failed.
    #[error("trace {command}: {source}")]
    Trace {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl RecordError {
    /// heapwatch's exit code for this error: 127 when the command cannot be
    /// found or run (as a shell says), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Command(_) | Self::Spawn { .. } => 127,
            _ => 1,
        }
    }
}

/// What to record, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Trace the processes it forks too.
    pub follow_forks: bool,
    /// The allocator library to probe (`None`: heapwatch's own C library).
    pub libc: Option<PathBuf>,
    /// Ring-buffer size in KiB.
    pub ring_kib: u32,
    /// Capture the full stack of one allocation in this many.
    pub stack_sample: u32,
    /// Threads whose allocator state the kernel keeps in its fast array.
    pub thread_slots: u32,
}

/// A finished recording. Its probes stay attached until it is dropped:
/// detaching waits for the kernel, so show the report first.
pub struct Recording {
    /// Everything found.
    pub report: RecordReport,
    /// Probes attached for the programs the command exec'd.
    more: Vec<AttachedProbes>,
    probes: Probes,
}

impl Recording {
    /// Detaches the probes.
    pub fn detach(self) {
        drop(self.more);
        drop(self.probes);
    }
}

/// Runs the command traced and reports its heap; the command's own signals
/// and terminal stay its own.
pub fn record(options: &RecordOptions) -> Result<Recording, RecordError> {
    let (mut command, pid) = HeldCommand::spawn(&options.command)?;
    let (libc, also) = match &options.libc {
        Some(libc) => (Some(libc.clone()), Vec::new()),
        None => {
            let mut found = command.allocators().into_iter();
            (found.next(), found.collect())
        }
    };
    let mut probes = Probes::attach(&ProbeConfig {
        libc,
        also: also.clone(),
        targets: Targets::Process {
            pid,
            follow_forks: options.follow_forks,
        },
        ring_bytes: options.ring_kib * 1024,
        stack_sample: options.stack_sample,
        thread_slots: options.thread_slots,
        hold_at_exec: true,
    })?;
    let mut reader = probes.reader()?;
    let mut probed = vec![probes.libc().to_path_buf()];
    probed.extend(also.iter().cloned());
    let mut follower = ExecFollower::new(&probed);
    command.release()?;
    delegate_signals();
    let tracker = TrackerConfig {
        copy_on_fork: options.follow_forks,
        ..TrackerConfig::default()
    };
    let mut session = Session::new(tracker, Retention::KeepExited);
    let mut traced = Traced {
        session: &mut session,
        reader: &mut reader,
        probes: &mut probes,
        follower: &mut follower,
    };
    let started = Instant::now();
    let status = traced
        .run(&mut command.child)
        .map_err(|source| command.trace_error(source))?;
    let duration_secs = started.elapsed().as_secs_f64();
    let counters = probes.counters()?;
    let report = RecordReport {
        command: options.command.clone(),
        status,
        allocator_library: probes.libc().display().to_string(),
        absent_functions: probes.skipped(),
        other_allocators: also
            .iter()
            .map(|path| path.display().to_string())
            .chain(follower.probed_since())
            .collect(),
        unprobed_allocators: std::mem::take(&mut follower.failures),
        processes: process_reports(&session, pid.get()),
        duration_secs,
        lost_records: counters[Counter::RingbufFull as usize],
        unpaired_calls: counters[Counter::Unpaired as usize],
        malformed_records: session.figures().malformed_records,
    };
    Ok(Recording {
        report,
        more: follower.into_attached(),
        probes,
    })
}

/// The command's process, forked and held before exec, with its name for errors.
struct HeldCommand {
    name: String,
    program: PathBuf,
    child: HeldChild,
}

impl HeldCommand {
    /// Finds the command as a shell would and forks it, held before exec.
    fn spawn(command: &[String]) -> Result<(Self, NonZeroU32), RecordError> {
        let name = command.first().cloned().unwrap_or_default();
        let program = resolve_command(&name, &std::env::var("PATH").unwrap_or_default())?;
        let spawned = HeldChild::spawn(&program, command).and_then(|child| {
            let pid = NonZeroU32::new(child.pid())
                .ok_or_else(|| io::Error::other("fork returned pid 0"))?;
            Ok((child, pid))
        });
        match spawned {
            Ok((child, pid)) => Ok((
                Self {
                    name,
                    program,
                    child,
                },
                pid,
            )),
            Err(source) => Err(RecordError::Spawn {
                command: name,
                source,
            }),
        }
    }

    /// The files providing the command's allocator as it will run (its
    /// own, `LD_PRELOAD`'s, a library's it needs), whose `malloc` it calls first.
    fn allocators(&self) -> Vec<PathBuf> {
        let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
        allocators_of(&self.program, &preload, &linker_cache())
    }

    /// Lets the command exec.
    fn release(&mut self) -> Result<(), RecordError> {
        self.child.release().map_err(|source| RecordError::Spawn {
            command: self.name.clone(),
            source,
        })
    }

    /// An error met while the command ran.
    fn trace_error(&self, source: io::Error) -> RecordError {
        RecordError::Trace {
            command: self.name.clone(),
            source,
        }
    }
}

/// A recording under way: its session, ring buffer and probes.
struct Traced<'a> {
    session: &'a mut Session,
    reader: &'a mut EventReader,
    probes: &'a mut Probes,
    follower: &'a mut ExecFollower,
}

impl Traced<'_> {
    /// Drains events until the command has ended and every record is read;
    /// each process held at its exec is probed anew and continued.
    fn run(&mut self, child: &mut HeldChild) -> io::Result<CommandStatus> {
        loop {
            let mut execs = Vec::new();
            self.session.pump_each(self.reader, |event| {
                if let HeapEvent::Exec { tgid } = *event {
                    execs.push(tgid);
                }
            })?;
            for tgid in execs {
                self.follower.exec(tgid, self.probes);
            }
            child.forward_signals();
            if let Some(status) = child.try_wait()? {
                self.session.drain(self.reader);
                return Ok(status);
            }
        }
    }
}

/// Every process's report, the command's process first (with an empty one
/// if it made no allocation), then the others by pid.
fn process_reports(session: &Session, main_pid: u32) -> Vec<ProcessReport> {
    let mut symbols = Symbols::default();
    let mut pids = session.pids();
    if !pids.contains(&main_pid) {
        pids.push(main_pid);
    }
    pids.sort_by_key(|&pid| (pid != main_pid, pid));
    let no_allocations = ProcessState::default();
    pids.into_iter()
        .map(|pid| {
            let (state, exited) = session.process(pid).unwrap_or((&no_allocations, true));
            draft_of(session, pid, state, exited, &SiteSelection::ALL, None)
                .finish(|stacks| Ok::<_, Infallible>(symbols.symbolize_all(&stacks)))
                .unwrap_or_else(|never| match never {})
        })
        .collect()
}
