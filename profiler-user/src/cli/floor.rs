//! `heapwatch floor [--at-entry] -- CMD`: the benchmark's floor. Runs CMD
//! with programs that do nothing on the allocator's probes, at heapwatch's
//! placements (or at every function's +0), so that `cargo xtask bench` can
//! tell what the traps cost from what heapwatch adds on top.

use std::{io, num::NonZeroU32, time::Duration};

use super::{
    FloorArgs,
    command::resolve_command,
    record::RecordError,
    session::{HeldChild, delegate_signals},
};
use crate::{
    probes::{ProbeConfig, Probes, Scope},
    report::CommandStatus,
};

/// How often the command's end is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs the command under the floor's probes; returns its status.
pub fn floor(args: &FloorArgs) -> Result<CommandStatus, RecordError> {
    let name = args.command[0].clone();
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
            scope: Scope::Process {
                pid,
                follow_forks: false,
            },
            ring_bytes: 4096,
            stack_sample: 1,
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
