//! `heapwatch record -- CMD`: trace a command from its first instruction to
//! its exit and report its heap as valgrind would.

use std::{fs, io, num::NonZeroU32, path::PathBuf};

use profiler_common::Counter;
use thiserror::Error;

use super::{
    RecordArgs,
    command::{CommandError, resolve_command},
    output::check_writable,
    recording::{Recording, SiteSelection},
    session::{HeldChild, delegate_signals},
};
use crate::{
    probes::{EventReader, ProbeConfig, ProbeError, Probes, Scope},
    report::{CommandStatus, Format, ProcessReport, RecordReport, render, render_text},
    stacks::Symbols,
    tracker::ProcessState,
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
    /// A rendering other than text was asked for without a file.
    #[error("--format {0} needs -o FILE (stdout belongs to the command)")]
    NeedsOutput(Format),
    /// A report could not be written.
    #[error("write the report to {path}: {source}")]
    WriteReport {
        /// Where.
        path: PathBuf,
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
            Self::NeedsOutput(_) => 2,
            _ => 1,
        }
    }
}

/// Records the command; prints its summary to stderr and returns its status.
/// The report files are checked before the command runs.
pub fn record(args: &RecordArgs) -> Result<CommandStatus, RecordError> {
    if args.format != Format::Text && args.output.is_none() {
        return Err(RecordError::NeedsOutput(args.format));
    }
    for path in args.output.iter().chain(&args.json) {
        check_writable(path).map_err(|source| RecordError::WriteReport {
            path: path.clone(),
            source,
        })?;
    }
    let name = args.command[0].clone();
    let program = resolve_command(&name, &std::env::var("PATH").unwrap_or_default())?;
    let spawn_error = |source| RecordError::Spawn {
        command: name.clone(),
        source,
    };
    let mut child = HeldChild::spawn(&program, &args.command).map_err(spawn_error)?;
    let pid = NonZeroU32::new(child.pid())
        .ok_or_else(|| spawn_error(io::Error::other("fork returned pid 0")))?;
    let mut probes = Probes::attach(&ProbeConfig {
        libc: args.libc.clone(),
        scope: Scope::Process {
            pid,
            follow_forks: args.follow_forks,
        },
        ring_bytes: args.ring_kib * 1024,
        stack_sample: args.stack_sample,
        thread_slots: args.thread_slots,
    })?;
    let mut reader = probes.reader()?;
    child.release().map_err(spawn_error)?;
    delegate_signals();
    let mut recording = Recording::new(args.follow_forks);
    let status =
        run(&mut recording, &mut child, &mut reader).map_err(|source| RecordError::Trace {
            command: name.clone(),
            source,
        })?;
    let counters = probes.counters()?;
    let allocator = Allocator {
        library: probes.libc().display().to_string(),
        absent: probes.skipped().iter().map(|f| (*f).to_owned()).collect(),
    };
    let report = into_report(recording, args, status, pid.get(), &counters, allocator);
    let top = args.top as usize;
    match &args.output {
        Some(path) => write_report(path, &report, args.format, top)?,
        None => eprint!("{}", render_text(&report, top)),
    }
    if args.output.is_some() && args.format != Format::Text {
        eprint!("{}", render_text(&report, top));
    }
    if let Some(path) = &args.json {
        write_report(path, &report, Format::Json, top)?;
    }
    drop(probes);
    Ok(status)
}

fn write_report(
    path: &PathBuf,
    report: &RecordReport,
    format: Format,
    top: usize,
) -> Result<(), RecordError> {
    let write_error = |source| RecordError::WriteReport {
        path: path.clone(),
        source,
    };
    let bytes = render(report, format, top).map_err(write_error)?;
    fs::write(path, bytes).map_err(write_error)
}

/// What was probed.
struct Allocator {
    library: String,
    absent: Vec<String>,
}

/// Drains events until the command has ended and every record is read.
fn run(
    recording: &mut Recording,
    child: &mut HeldChild,
    reader: &mut EventReader,
) -> io::Result<CommandStatus> {
    loop {
        recording.pump(reader)?;
        child.forward_signals();
        if let Some(status) = child.try_wait()? {
            recording.drain(reader);
            return Ok(status);
        }
    }
}

/// The report of everything recorded: the command's process first.
fn into_report(
    mut recording: Recording,
    args: &RecordArgs,
    status: CommandStatus,
    main_pid: u32,
    counters: &[u64; Counter::COUNT as usize],
    allocator: Allocator,
) -> RecordReport {
    let mut symbols = Symbols::default();
    let running = recording.tracker.drain();
    let ended: Vec<(u32, ProcessState)> = recording.exited.drain().collect();
    let mut processes: Vec<ProcessReport> = ended
        .iter()
        .map(|(pid, state)| (pid, state, true))
        .chain(running.iter().map(|(pid, state)| (pid, state, false)))
        .map(|(&pid, state, exited)| {
            recording.process_report(pid, state, exited, &SiteSelection::ALL, &mut symbols)
        })
        .collect();
    if !processes.iter().any(|p| p.pid == main_pid) {
        let no_allocations = ProcessState::default();
        processes.push(recording.process_report(
            main_pid,
            &no_allocations,
            true,
            &SiteSelection::ALL,
            &mut symbols,
        ));
    }
    processes.sort_by_key(|p| (p.pid != main_pid, p.pid));
    RecordReport {
        command: args.command.clone(),
        status,
        allocator_library: allocator.library,
        absent_functions: allocator.absent,
        processes,
        lost_records: counters[Counter::RingbufFull as usize],
        unpaired_calls: counters[Counter::Unpaired as usize],
        malformed_records: recording.malformed,
    }
}
