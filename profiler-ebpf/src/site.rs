//! Allocation sites: the user stack, walked by frame pointers and hashed.
//! An allocation carries only the hash; a stack is sent to userspace the
//! first time it is seen. Cheaper than `bpf_get_stackid` (about 1.2 µs a
//! call here) and free of its map's bucket collisions.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user},
};
use profiler_common::{
    MAX_STACK_DEPTH, STACK_UNSAMPLED, StackEvent, kind, stack_hash_seed, stack_hash_step,
};

use crate::{
    maps::{EVENTS, STACK_SAMPLE_EVERY, count_lost, remember_stack, stack_known},
    tgid_of,
};

/// Where a call was made from: its immediate caller (a return address) and
/// the caller's frame pointer, where the frame-pointer chain starts.
#[derive(Clone, Copy)]
pub struct CallSite {
    caller: u64,
    fp: u64,
}

impl CallSite {
    /// At a function's entry: the return address is at the stack pointer
    /// (one user read, which costs 90 to 150 ns here).
    #[inline(always)]
    pub fn at_entry(regs: *const pt_regs) -> Self {
        // SAFETY: `regs` points at the probe's saved registers for this run.
        let (sp, fp) = unsafe { ((*regs).rsp, (*regs).rbp) };
        // SAFETY: reads user memory through the helper, which fails safely.
        let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
        Self { caller, fp }
    }

    /// At a function's return (a uretprobe): the kernel has put the return
    /// address back in the instruction pointer before running the program,
    /// and the callee has restored the caller's frame pointer.
    #[inline(always)]
    pub fn at_return(regs: *const pt_regs) -> Self {
        // SAFETY: `regs` points at the probe's saved registers for this run.
        let (caller, fp) = unsafe { ((*regs).rip, (*regs).rbp) };
        Self { caller, fp }
    }
}

/// The site of an allocator call: the hash of its stack (only the immediate
/// caller's for an unsampled call). The stack is sent as a STACK record
/// unless it was sent before.
#[inline(always)]
pub fn site(call: CallSite) -> u64 {
    let (limit, flags) = if sampled() {
        (MAX_STACK_DEPTH, 0)
    } else {
        (1, STACK_UNSAMPLED)
    };
    let (hash, _) = walk(call, limit, flags, |_, _| {});
    if !stack_known(hash) {
        send(call, limit, flags);
    }
    hash
}

/// True for the one allocation in `STACK_SAMPLE_EVERY` whose whole stack is walked.
fn sampled() -> bool {
    let every = STACK_SAMPLE_EVERY.load();
    // SAFETY: the helper has no preconditions.
    every <= 1 || unsafe { bpf_get_prandom_u32() } % every == 0
}

/// Writes the stack into a STACK record and marks it sent. The walk is done
/// again into the record itself: no per-CPU scratch that another task on
/// this CPU could overwrite, and a new stack is rare.
fn send(call: CallSite, limit: usize, flags: u16) {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        count_lost(tgid_of(bpf_get_current_pid_tgid()));
        return;
    };
    let record = entry.as_mut_ptr();
    let (hash, depth) = walk(call, limit, flags, |index, frame| {
        // SAFETY: the record is reserved for this program.
        if let Some(slot) = unsafe { (*record).frames.get_mut(index) } {
            *slot = frame;
        }
    });
    // SAFETY: as above.
    unsafe {
        (*record).kind = kind::STACK;
        (*record).depth = depth as u16;
        (*record).flags = flags;
        (*record).hash = hash;
    }
    entry.submit(0);
    remember_stack(hash);
}

/// Walks the user stack of `call`, at most `limit` frames: the immediate
/// caller (an allocator starts no frame of its own: glibc's are built
/// without frame pointers), then the frame-pointer chain from the caller's
/// frame. Hands each frame to `keep`; returns the hash and depth.
#[inline(always)]
fn walk(
    call: CallSite,
    limit: usize,
    flags: u16,
    mut keep: impl FnMut(usize, u64),
) -> (u64, usize) {
    let CallSite { caller, mut fp } = call;
    keep(0, caller);
    let mut hash = stack_hash_step(stack_hash_seed(flags), caller);
    let mut depth = 1;
    while depth < limit && depth < MAX_STACK_DEPTH && fp != 0 {
        // SAFETY: as above; a frame is (saved frame pointer, return address).
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if ret == 0 {
            break;
        }
        keep(depth, ret);
        hash = stack_hash_step(hash, ret);
        depth += 1;
        // Frames lie at rising addresses; anything else is not a frame chain.
        if next <= fp {
            break;
        }
        fp = next;
    }
    (hash, depth)
}
