//! `heapwatch snapshot --pid N`: the sites holding a process's memory, in
//! the format asked for, to stdout or a file.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use thiserror::Error;

use super::{
    output::check_writable,
    values::{parse_pid, parse_positive_duration, parse_top},
};
use crate::{
    config::{DEFAULT_TOP_SITES, parse_duration},
    report::{Format, ProcessReport, grown_since, parse_saved, render_snapshot},
    snapshot::{QueryError, SnapshotRequest, check_process, snapshot},
};

/// Options of `heapwatch snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The process.
    #[arg(long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true, required_unless_present = "from")]
    pub pid: Option<u32>,
    /// Read the snapshot from FILE, saved before as JSON (`--format json`,
    /// or `record`'s report) or pprof, instead of asking for one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pid", "duration", "since", "min_age"])]
    pub from: Option<PathBuf>,
    /// Show the sites whose live bytes grew since the snapshot saved in
    /// FILE (JSON or pprof), most first: sites are matched by their stacks'
    /// functions and lines.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// Show at most K sites, largest first.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_TOP_SITES, value_parser = parse_top, allow_negative_numbers = true)]
    pub top: u32,
    /// Count only blocks allocated at least this long ago, e.g. 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub min_age: Option<Duration>,
    /// Trace the process for this long, e.g. 30s, and show what it
    /// allocated then and still holds: by the daemon when it runs tiers (it
    /// traces the process on request), else by heapwatch itself (as root).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Show the sites whose live bytes grew over this last span, e.g. 10m,
    /// most first (the daemon keeps each site's live bytes over its leak
    /// window).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, allow_hyphen_values = true, conflicts_with = "duration")]
    pub since: Option<Duration>,
    /// Rendering (pprof and flamegraph need -o).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Why a question could not be answered and its answer printed.
#[derive(Debug, Error)]
pub enum AnswerError {
    /// The snapshot or list could not be had.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A binary rendering was asked for without a file.
    #[error("--format {0} needs -o FILE")]
    NeedsOutput(Format),
    /// A saved snapshot could not be read.
    #[error("read the saved snapshot {path}: {why}")]
    Saved {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Writing the answer failed.
    #[error("write the answer: {0}")]
    Write(#[source] io::Error),
    /// The output file cannot be written.
    #[error("write to {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl AnswerError {
    /// heapwatch's exit code for this error: 2 for a usage mistake (as for
    /// clap's own), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NeedsOutput(_) => 2,
            _ => 1,
        }
    }
}

/// Prints the snapshot of one process in the chosen format. The process and
/// the output file are checked first, before the daemon is asked or
/// tracing begins.
pub fn run(args: &SnapshotArgs) -> Result<(), AnswerError> {
    if matches!(args.format, Format::Pprof | Format::Flamegraph) && args.output.is_none() {
        return Err(AnswerError::NeedsOutput(args.format));
    }
    if let Some(pid) = args.pid {
        check_process(pid)?;
    }
    if let Some(path) = &args.output {
        check_writable(path).map_err(|source| output_error(path, source))?;
    }
    let base = args.base.as_deref().map(read_saved).transpose()?;
    let process = match (&args.from, args.pid) {
        (Some(path), _) => read_saved(path)?,
        (None, Some(pid)) => snapshot(&SnapshotRequest {
            pid,
            top: args.top,
            min_age: args.min_age,
            since: args.since,
            duration: args.duration,
            socket: args.socket.clone(),
        })?,
        (None, None) => unreachable!("clap requires --pid without --from"),
    };
    let mut process = match &base {
        Some(base) => grown_since(&process, base),
        None => process,
    };
    process.sites.truncate(args.top as usize);
    let bytes =
        render_snapshot(&process, args.format, args.top as usize).map_err(AnswerError::Write)?;
    match &args.output {
        Some(path) => std::fs::write(path, bytes).map_err(|source| output_error(path, source)),
        None => io::stdout().write_all(&bytes).map_err(AnswerError::Write),
    }
}

/// A snapshot saved in a file, read back.
fn read_saved(path: &Path) -> Result<ProcessReport, AnswerError> {
    let bytes = std::fs::read(path).map_err(|source| AnswerError::Saved {
        path: path.to_path_buf(),
        why: source.to_string(),
    })?;
    parse_saved(&bytes).map_err(|why| AnswerError::Saved {
        path: path.to_path_buf(),
        why: format!("{why}; give a snapshot saved with --format json or --format pprof"),
    })
}

fn output_error(path: &Path, source: io::Error) -> AnswerError {
    AnswerError::Output {
        path: path.to_path_buf(),
        source,
    }
}
