//! `heapwatch floor [--at-entry] -- CMD`: the benchmark's floor. Runs CMD
//! with programs that do nothing on the allocator's probes, at heapwatch's
//! placements (or at every function's +0), so that `cargo xtask bench` can
//! tell what the traps cost from what heapwatch adds on top.

use std::{io, num::NonZeroU32, path::PathBuf, time::Duration};

use super::{RecordError, child::HeldChild, command::resolve_command};
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
    let name = args.command.first().cloned().unwrap_or_default();
    let program = resolve_command(&name, &std::env::var("PATH").unwrap_or_default())?;
    let spawn_error = |source| RecordError::Spawn {
        command: name.clone(),
        source,
    };
    let mut child = HeldChild::spawn(&program, &args.command).map_err(spawn_error)?;
    let pid = NonZeroU32::new(child.pid())
        .ok_or_else(|| spawn_error(io::Error::other("fork returned pid 0")))?;
    let probes = Probes::attach_floor(
        &ProbeConfig {
            libc: args.libc.clone(),
            targets: Targets::Process {
                pid,
                follow_forks: false,
            },
            ring_bytes: RING_BYTES,
            stack_sample: crate::config::DEFAULT_STACK_SAMPLE,
            thread_slots: crate::config::DEFAULT_THREAD_SLOTS,
        },
        args.at_entry,
    )?;
    child.release().map_err(spawn_error)?;
    delegate_signals();
    let trace_error = |source| RecordError::Trace {
        command: name.clone(),
        source,
    };
    let status = loop {
        child.forward_signals();
        if let Some(status) = child.try_wait().map_err(trace_error)? {
            break status;
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    drop(probes);
    Ok(status)
}
