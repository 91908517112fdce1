//! `heapwatch floor [--at-entry] -- CMD` (hidden): the benchmark's floor.

use std::path::PathBuf;

use clap::Args;

use crate::{
    record::{FloorOptions, RecordError, floor},
    report::CommandStatus,
};

/// Options of `heapwatch floor`.
#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Probe every function at +0 instead of heapwatch's placements.
    #[arg(long)]
    pub at_entry: bool,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the command under probes that do nothing; returns its status.
pub fn run(args: &FloorArgs) -> Result<CommandStatus, RecordError> {
    floor(&FloorOptions {
        at_entry: args.at_entry,
        libc: args.libc.clone(),
        command: args.command.clone(),
    })
}
