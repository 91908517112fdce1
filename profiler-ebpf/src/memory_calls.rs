//! Tier 0's memory calls: brk, mmap, munmap and mremap of every process,
//! from their syscall tracepoints, counted per process for userspace to
//! read each tick. These calls are rare beside malloc's (an allocator makes
//! them to get memory in large pieces), so every process's are counted.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::tracepoint,
    programs::TracePointContext,
};
use profiler_common::{MemoryCalls, memory_call};

use crate::{maps::MEMORY_CALLS, tgid_of};

/// mmap's flag of a mapping backed by no file (x86_64 Linux).
const MAP_ANONYMOUS: u64 = 0x20;

/// Argument `index` of a sys_enter record: the syscall's number, then its
/// six arguments, each a long (the kernel's `syscall_trace_enter`).
fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: every sys_enter record holds the six arguments.
    unsafe { ctx.read_at::<u64>(16 + 8 * index) }.unwrap_or(0)
}

/// brk(addr).
#[tracepoint]
pub fn brk_call(_ctx: TracePointContext) -> u32 {
    note(memory_call::BRK, 0, 0);
    0
}

/// mmap(addr, len, prot, flags, fd, off): bytes of anonymous ones.
#[tracepoint]
pub fn mmap_call(ctx: TracePointContext) -> u32 {
    let anonymous = arg(&ctx, 3) & MAP_ANONYMOUS != 0;
    note(
        memory_call::MMAP,
        if anonymous { arg(&ctx, 1) } else { 0 },
        0,
    );
    0
}

/// munmap(addr, len).
#[tracepoint]
pub fn munmap_call(ctx: TracePointContext) -> u32 {
    note(memory_call::MUNMAP, 0, arg(&ctx, 1));
    0
}

/// mremap(addr, old_len, new_len, flags, new_addr): the change of size.
#[tracepoint]
pub fn mremap_call(ctx: TracePointContext) -> u32 {
    let (old_len, new_len) = (arg(&ctx, 1), arg(&ctx, 2));
    note(
        memory_call::MREMAP,
        new_len.saturating_sub(old_len),
        old_len.saturating_sub(new_len),
    );
    0
}

/// Adds one `call` and its bytes to the calling process's counts.
fn note(call: usize, mapped: u64, unmapped: u64) {
    let tgid = tgid_of(bpf_get_current_pid_tgid());
    if MEMORY_CALLS.get_ptr_mut(tgid).is_none() {
        // Another thread may have made it meanwhile: then this one fails.
        let _ = MEMORY_CALLS.insert(tgid, MemoryCalls::default(), u64::from(BPF_NOEXIST));
    }
    let Some(counts) = MEMORY_CALLS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: this CPU's value of the map, valid while this program runs,
    // which nothing else on this CPU writes meanwhile.
    unsafe {
        (*counts).calls[call] += 1;
        (*counts).mapped_bytes += mapped;
        (*counts).unmapped_bytes += unmapped;
    }
}
