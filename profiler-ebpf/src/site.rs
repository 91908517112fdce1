//! Allocation sites: the user stack, walked by frame pointers and hashed.
//! An allocation carries only the hash; a stack is sent to userspace the
//! first time it is seen. Cheaper than `bpf_get_stackid` (about 1.2 µs a
//! call here) and free of its map's bucket collisions.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user},
    programs::ProbeContext,
};
use profiler_common::{
    MAX_STACK_DEPTH, STACK_UNSAMPLED, StackEvent, kind, stack_hash_seed, stack_hash_step,
};

use crate::{
    maps::{EVENTS, KNOWN_STACKS, STACK_SAMPLE_EVERY, count_lost},
    tgid_of,
};

/// The site of the allocator call this entry probe sits in: the hash of its
/// stack (only the immediate caller's for an unsampled call). The stack is
/// sent as a STACK record unless it was sent before.
pub fn site(ctx: &ProbeContext) -> u64 {
    let (limit, flags) = if sampled() {
        (MAX_STACK_DEPTH, 0)
    } else {
        (1, STACK_UNSAMPLED)
    };
    let (hash, _) = walk(ctx, limit, flags, |_, _| {});
    // SAFETY: a lookup only; the value is not dereferenced.
    if unsafe { KNOWN_STACKS.get(&hash) }.is_none() {
        send(ctx, limit, flags);
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
fn send(ctx: &ProbeContext, limit: usize, flags: u16) {
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        count_lost(tgid_of(bpf_get_current_pid_tgid()));
        return;
    };
    let record = entry.as_mut_ptr();
    let (hash, depth) = walk(ctx, limit, flags, |index, frame| {
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
    let _ = KNOWN_STACKS.insert(&hash, &1, 0);
}

/// Walks the user stack at an allocator's entry, at most `limit` frames:
/// the return address at the stack pointer (the immediate caller, which
/// starts no frame of its callee's), then the frame-pointer chain from the
/// caller's frame. Hands each frame to `keep`; returns the hash and depth.
#[inline(always)]
fn walk(
    ctx: &ProbeContext,
    limit: usize,
    flags: u16,
    mut keep: impl FnMut(usize, u64),
) -> (u64, usize) {
    // SAFETY: `regs` points at the probe's saved registers for this run.
    let (sp, mut fp) = unsafe { ((*ctx.regs).rsp, (*ctx.regs).rbp) };
    // SAFETY: reads user memory through the helper, which fails safely.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
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
