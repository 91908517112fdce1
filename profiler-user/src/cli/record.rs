//! `heapwatch record -- CMD`: record the command, then print its heap
//! summary to stderr and write the renderings asked for.

use std::{fs, io, path::PathBuf};

use clap::Args;
use thiserror::Error;

use super::{
    output::check_writable,
    values::{parse_ring_kib, parse_stack_sample, parse_thread_slots, parse_top},
};
use crate::{
    config::{DEFAULT_RING_KIB, DEFAULT_STACK_SAMPLE, DEFAULT_THREAD_SLOTS, DEFAULT_TOP_SITES},
    record::{RecordError, RecordOptions, record},
    report::{CommandStatus, Format, RecordReport, render, render_text},
};

/// Options of `heapwatch record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace the processes CMD forks too (each gets its own summary).
    #[arg(long)]
    pub follow_forks: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Rendering written to -o FILE (text goes to stderr without -o; the others need -o).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the --format rendering to FILE.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Show at most K sites per process.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_TOP_SITES, value_parser = parse_top, allow_negative_numbers = true)]
    pub top: u32,
    /// The allocator library to probe (default: the file CMD's malloc comes
    /// from: itself if static, LD_PRELOAD's, or a library it links).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// Ring-buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = DEFAULT_RING_KIB, value_parser = parse_ring_kib, allow_negative_numbers = true)]
    pub ring_kib: u32,
    /// Capture the full stack of one allocation in N on average (at random
    /// intervals) and of each call site's first; the others keep their
    /// immediate caller. Byte counts stay exact.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_SAMPLE, value_parser = parse_stack_sample, allow_negative_numbers = true)]
    pub stack_sample: u32,
    /// Threads whose allocator state the kernel keeps in its fast array, a
    /// power of two; others keep it in task storage, exact but slower.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_THREAD_SLOTS, value_parser = parse_thread_slots, allow_negative_numbers = true)]
    pub thread_slots: u32,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Why `heapwatch record` failed.
#[derive(Debug, Error)]
pub enum RecordCommandError {
    /// The recording failed.
    #[error(transparent)]
    Record(#[from] RecordError),
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

impl RecordCommandError {
    /// heapwatch's exit code for this error: 127 when the command cannot be
    /// found or run (as a shell says), 2 for a usage mistake, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Record(err) => err.exit_code(),
            Self::NeedsOutput(_) => 2,
            Self::WriteReport { .. } => 1,
        }
    }
}

/// Records the command; prints its summary to stderr and returns its status.
/// The report files are checked before the command runs.
pub fn run(args: &RecordArgs) -> Result<CommandStatus, RecordCommandError> {
    if args.format != Format::Text && args.output.is_none() {
        return Err(RecordCommandError::NeedsOutput(args.format));
    }
    for path in args.output.iter().chain(&args.json) {
        check_writable(path).map_err(|source| RecordCommandError::WriteReport {
            path: path.clone(),
            source,
        })?;
    }
    let recording = record(&RecordOptions {
        command: args.command.clone(),
        follow_forks: args.follow_forks,
        libc: args.libc.clone(),
        ring_kib: args.ring_kib,
        stack_sample: args.stack_sample,
        thread_slots: args.thread_slots,
    })?;
    let report = &recording.report;
    let top = args.top as usize;
    match &args.output {
        Some(path) => write_report(path, report, args.format, top)?,
        None => eprint!("{}", render_text(report, top)),
    }
    if args.output.is_some() && args.format != Format::Text {
        eprint!("{}", render_text(report, top));
    }
    if let Some(path) = &args.json {
        write_report(path, report, Format::Json, top)?;
    }
    let status = report.status;
    recording.detach();
    Ok(status)
}

fn write_report(
    path: &PathBuf,
    report: &RecordReport,
    format: Format,
    top: usize,
) -> Result<(), RecordCommandError> {
    let write_error = |source| RecordCommandError::WriteReport {
        path: path.clone(),
        source,
    };
    let bytes = render(report, format, top).map_err(write_error)?;
    fs::write(path, bytes).map_err(write_error)
}
