//! `heapwatch snapshot` and `heapwatch ps`: questions to the running daemon
//! (or, for a snapshot with `--duration`, heapwatch tracing the process itself).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::{
    PsArgs, SnapshotArgs,
    output::check_writable,
    standalone::{TraceError, trace_snapshot},
};
use crate::{
    api::{Reply, Request, call},
    procinfo::{is_kernel_thread, owner},
    report::{Format, ProcessReport, render_snapshot},
};

/// Why a question to the daemon failed.
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
        source: std::io::Error,
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
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
    /// A binary rendering was asked for without a file.
    #[error("--format {0} needs -o FILE")]
    NeedsOutput(Format),
    /// Writing the answer failed.
    #[error("write the answer: {0}")]
    Write(#[source] std::io::Error),
    /// The output file cannot be written.
    #[error("write to {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl QueryError {
    /// heapwatch's exit code for this error: 2 for a usage mistake (as for
    /// clap's own), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NeedsOutput(_) => 2,
            _ => 1,
        }
    }
}

fn ask(path: &Path, request: &Request) -> Result<serde_json::Value, QueryError> {
    let reply: Reply = call(path, request).map_err(|source| QueryError::NoDaemon {
        path: path.to_path_buf(),
        source,
    })?;
    match (reply.ok, reply.data) {
        (true, Some(data)) => Ok(data),
        _ => {
            Err(QueryError::Refused(reply.error.unwrap_or_else(|| {
                "the daemon sent an empty reply".to_owned()
            })))
        }
    }
}

/// Prints the snapshot of one process in the chosen format. The process and
/// the output file are checked first, before the daemon is asked or
/// tracing begins.
pub fn snapshot(args: &SnapshotArgs) -> Result<(), QueryError> {
    if matches!(args.format, Format::Pprof | Format::Flamegraph) && args.output.is_none() {
        return Err(QueryError::NeedsOutput(args.format));
    }
    check_process(args.pid)?;
    if let Some(path) = &args.output {
        check_writable(path).map_err(|source| output_error(path, source))?;
    }
    let process = match args.duration {
        Some(duration) => trace_snapshot(args, duration)?,
        None => ask_snapshot(args)?,
    };
    let bytes =
        render_snapshot(&process, args.format, args.top as usize).map_err(QueryError::Write)?;
    match &args.output {
        Some(path) => std::fs::write(path, bytes).map_err(|source| output_error(path, source)),
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(QueryError::Write),
    }
}

fn output_error(path: &Path, source: std::io::Error) -> QueryError {
    QueryError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a PID that names no process, or a kernel thread (which has no heap).
fn check_process(pid: u32) -> Result<(), QueryError> {
    if owner(pid).is_none() {
        return Err(QueryError::NoSuchProcess(pid));
    }
    if is_kernel_thread(pid) {
        return Err(QueryError::KernelThread(pid));
    }
    Ok(())
}

/// The daemon's snapshot of the process.
fn ask_snapshot(args: &SnapshotArgs) -> Result<ProcessReport, QueryError> {
    let request = Request::Snapshot {
        pid: args.pid,
        top: args.top as usize,
        min_age_ms: args.min_age.map_or(0, |age| age.as_millis() as u64),
    };
    let data = ask(&args.socket, &request)?;
    serde_json::from_value(data)
        .map_err(|e| QueryError::Refused(format!("unreadable snapshot: {e}")))
}

/// Prints the traced processes by live bytes.
pub fn ps(args: &PsArgs) -> Result<(), QueryError> {
    let data = ask(&args.socket, &Request::List {})?;
    let mut out = String::from("    PID  LIVE BYTES  LIVE BLOCKS  COMMAND\n");
    for row in data.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>7}  {:>10}  {:>11}  {}\n",
            row["pid"].as_u64().unwrap_or(0),
            row["live_bytes"].as_u64().unwrap_or(0),
            row["live_allocations"].as_u64().unwrap_or(0),
            row["comm"].as_str().unwrap_or("")
        ));
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(QueryError::Write)
}
