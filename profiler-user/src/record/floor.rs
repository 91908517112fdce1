//! `heapwatch floor [--at-entry] -- CMD`: the benchmark's floor. Runs CMD
//! with programs that do nothing on the allocator's probes, at heapwatch's
//! placements (or at every function's +0), so that `cargo xtask bench` can
//! tell what the traps cost from what heapwatch adds on top.

use std::{path::PathBuf, time::Duration};

use super::{HeldCommand, RecordError};
use crate::{
    probes::{ProbeConfig, Probes, Targets},
    report::CommandStatus,
    signals::delegate_signals,
};

/// How often the command's end is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The floor's ring buffer: its programs write nothing.
const RING_BYTES: u32 = 4096;

/// What the floor runs, and where its probes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloorOptions {
    /// Probe every function at +0 instead of heapwatch's placements.
    pub at_entry: bool,
    /// The allocator library to probe (`None`: heapwatch's own C library).
    pub libc: Option<PathBuf>,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// Runs the command under the floor's probes; returns its status.
pub fn floor(args: &FloorOptions) -> Result<CommandStatus, RecordError> {
    let (mut command, pid) = HeldCommand::spawn(&args.command)?;
    let probes = Probes::attach_floor(
        &ProbeConfig {
            libc: args.libc.clone(),
            also: Vec::new(),
            targets: Targets::Process {
                pid,
                follow_forks: false,
            },
            ring_bytes: RING_BYTES,
            stack_sample: crate::config::DEFAULT_STACK_SAMPLE,
            thread_slots: crate::config::DEFAULT_THREAD_SLOTS,
            hold_at_exec: false,
        },
        args.at_entry,
    )?;
    command.release()?;
    delegate_signals();
    let status = loop {
        command.child.forward_signals();
        let ended = command.child.try_wait();
        if let Some(status) = ended.map_err(|source| command.trace_error(source))? {
            break status;
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    drop(probes);
    Ok(status)
}
