//! Process lifecycle: exec, exit and new processes. Exec and exit are raw
//! tracepoints: their arguments are all they need, and detaching one does
//! not wait for a grace period, as a perf event's does.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use profiler_common::{Counter, kind};

use crate::{
    filter::traced,
    maps::{
        EVERY_LIFECYCLE, EXIT_HAS_GROUP_DEAD, FOLLOW_FORKS, HOLD_AT_EXEC, NEWTASK_FLAGS_OFFSET,
        NEWTASK_PID_OFFSET, OOM_ANON_RSS_OFFSET, OOM_PID_OFFSET, SELF_TGID, TARGETS, count,
    },
    record::emit,
    tgid_of,
    thread::{release_slot, reset_for_exec},
};

const CLONE_THREAD: u64 = 0x0001_0000;
/// clone's flag of a child that runs in its parent's memory (vfork).
const CLONE_VM: u64 = 0x0000_0100;

/// sched_process_exec(task, old_pid, bprm): the process's old image and
/// heap are gone, and so is the state its one remaining thread kept for it.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let old_tid = ctx.arg::<u64>(1) as u32;
    reset_for_exec(old_tid, pid_tgid);
    let tgid = tgid_of(pid_tgid);
    // Held only once its record is written: userspace, which continues
    // it, is sure to read that.
    if reported(tgid) && emit(kind::EXEC, pid_tgid, 0) && HOLD_AT_EXEC.load() != 0 && traced(tgid) {
        // SAFETY: a helper call with no pointer; the signal goes to the
        // current process, the one exec'ing.
        unsafe { bpf_send_signal(SIGSTOP) };
    }
    0
}

/// The signal that stops a process (x86_64 Linux).
const SIGSTOP: u32 = 19;

/// sched_process_exit(task, group_dead), at every thread's exit: frees the
/// thread's slot, and reports the process's end.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    release_slot(pid_tgid as u32);
    if !group_dead(&ctx, pid_tgid) {
        return 0;
    }
    if reported(tgid) {
        emit(kind::EXIT, pid_tgid, 0);
    }
    let _ = TARGETS.remove(tgid);
    0
}

/// True when process `tgid`'s exec and exit are reported: it is traced, or
/// userspace picks the processes to trace and must see every one.
fn reported(tgid: u32) -> bool {
    traced(tgid) || (EVERY_LIFECYCLE.load() != 0 && tgid != SELF_TGID.load())
}

/// task_newtask, at every new thread or process (before it first runs): a
/// traced process's new child process is traced too when following forks.
#[tracepoint]
pub fn new_task(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from the tracepoint's format file, read at load.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(NEWTASK_PID_OFFSET.load() as usize) }) else {
        return 0;
    };
    let child = child as u32;
    let parent = tgid_of(bpf_get_current_pid_tgid());
    if !traced(parent) {
        return 0;
    }
    // SAFETY: as above.
    let flags: u64 = unsafe { ctx.read_at(NEWTASK_FLAGS_OFFSET.load() as usize) }.unwrap_or(0);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    if FOLLOW_FORKS.load() != 0 && TARGETS.insert(child, 1u8, 0).is_err() {
        count(Counter::TargetsFull);
    }
    let shares_memory = if flags & CLONE_VM != 0 {
        kind::FORK_SHARES_MEMORY
    } else {
        0
    };
    emit(
        kind::FORK,
        (u64::from(child) << 32) | u64::from(child),
        u64::from(parent) | shares_memory,
    );
    0
}

/// oom/mark_victim: the OOM killer chose a process, traced or not. Its
/// record comes before the victim's exit, so userspace writes the victim's
/// last report while it still holds its state.
#[tracepoint]
pub fn oom_victim(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from the tracepoint's format file, read at load.
    let Ok(victim) = (unsafe { ctx.read_at::<i32>(OOM_PID_OFFSET.load() as usize) }) else {
        return 0;
    };
    // SAFETY: as above.
    let anon_kib: u64 = unsafe { ctx.read_at(OOM_ANON_RSS_OFFSET.load() as usize) }.unwrap_or(0);
    let victim = victim as u32;
    emit(
        kind::OOM_VICTIM,
        (u64::from(victim) << 32) | u64::from(victim),
        anon_kib,
    );
    0
}

/// True when the exiting thread is the process's last one.
fn group_dead(ctx: &RawTracePointContext, pid_tgid: u64) -> bool {
    if EXIT_HAS_GROUP_DEAD.load() == 0 {
        return pid_tgid as u32 == tgid_of(pid_tgid);
    }
    ctx.arg::<u64>(1) as u8 != 0
}
