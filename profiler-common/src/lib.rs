//! Wire types shared by heapwatch's eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding and a size assertion:
//! the kernel side writes these bytes, the userspace side decodes them.
#![no_std]

use core::mem::size_of;

/// Kind codes of [`Event::kind`]. Integers cross the boundary, not enums.
pub mod kind {
    /// A block was allocated: `ptr` is its address, `size` the requested bytes.
    pub const ALLOC: u32 = 1;
    /// A block was freed: `ptr` is its address.
    pub const FREE: u32 = 2;
    /// realloc's entry: the old block `ptr` is freed before the memory can be reused.
    pub const REALLOC_FREE: u32 = 3;
    /// realloc failed: the old block `ptr`, freed at entry, is live again.
    pub const REALLOC_FAIL: u32 = 4;
    /// The process `tgid` replaced its image (execve): its old heap is gone.
    pub const EXEC: u32 = 5;
    /// The process `tgid` exited (its last thread is gone).
    pub const EXIT: u32 = 6;
    /// The process `tgid` was forked from the process whose tgid is in `ptr`.
    pub const FORK: u32 = 7;
}

/// One ring-buffer record: an allocator call or a process lifecycle change.
///
/// Fixed size, so the kernel reserves it in one step and userspace decodes it
/// without allocating.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// One of the [`kind`] codes.
    pub kind: u32,
    /// Process id (thread-group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// User stack id in the stack-trace map, or a negative errno when the
    /// stack could not be captured (allocations only).
    pub stack_id: i32,
    /// Address of the block (or the parent tgid for [`kind::FORK`]).
    pub ptr: u64,
    /// Requested size in bytes (allocations only).
    pub size: u64,
    /// Return address of the allocator call: the immediate caller (allocations only).
    pub caller: u64,
    /// `bpf_ktime_get_ns()` at the event, nanoseconds since boot.
    pub ktime_ns: u64,
}
const _: () = assert!(size_of::<Event>() == 48);

/// Allocator functions, the codes kept in [`Pending::func`] between entry and return.
pub mod func {
    /// malloc, calloc, aligned_alloc, memalign, valloc, pvalloc: the return value is the block.
    pub const RETURNS_POINTER: u32 = 1;
    /// realloc, reallocarray: the return value is the new block; the old one was freed at entry.
    pub const REALLOC: u32 = 2;
    /// posix_memalign: returns 0 on success, the block is stored at `*memptr`.
    pub const POSIX_MEMALIGN: u32 = 3;
}

/// State of one thread's outermost allocator call, between its entry and return probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Requested size in bytes.
    pub size: u64,
    /// Return address of the call (the immediate caller).
    pub caller: u64,
    /// realloc: the old block; posix_memalign: the `memptr` address.
    pub aux: u64,
    /// User stack id, or a negative errno.
    pub stack_id: i32,
    /// One of the [`func`] codes.
    pub func: u32,
    /// Allocator calls nested inside this one (glibc calling itself), still to return.
    pub depth: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<Pending>() == 40);

/// Where a C++ `operator new` was called from, kept until the malloc it makes
/// (libstdc++ has no frame pointers, so malloc's own stack walk skips this caller).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OuterCall {
    /// Return address of the `operator new` call.
    pub caller: u64,
    /// Stack pointer at `operator new`'s entry.
    pub sp: u64,
    /// User stack id at `operator new`'s entry, or a negative errno.
    pub stack_id: i32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<OuterCall>() == 24);

/// How far below `operator new`'s stack pointer its malloc call may start.
pub const OUTER_CALL_MAX_FRAME: u64 = 512;

/// Kernel-side counters of records and entries that could not be kept,
/// indexes of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be reserved in the ring buffer: an event was lost.
    RingbufFull = 0,
    /// The in-flight map was full: an allocation's entry could not be paired with its return.
    InflightFull = 1,
    /// `bpf_get_stackid` failed (stack map full, or no user stack).
    StackFailed = 2,
    /// A process could not be added to the target map on fork.
    TargetsFull = 3,
}

impl Counter {
    /// Number of counters (length of the `COUNTERS` array).
    pub const COUNT: u32 = 4;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::RingbufFull,
        Counter::InflightFull,
        Counter::StackFailed,
        Counter::TargetsFull,
    ];
}

/// Values of the `FILTER_MODE` global.
pub mod filter_mode {
    /// Trace every process except the tracer itself.
    pub const ALL: u32 = 0;
    /// Trace only processes whose tgid is in the `TARGETS` map.
    pub const TARGETS: u32 = 1;
}

/// `stack_id` of an allocation whose stack was not sampled (only its
/// immediate caller is known). Never a negative errno.
pub const STACK_UNSAMPLED: i32 = i32::MIN;

/// Maximum frames kept per stack in the stack-trace map.
pub const MAX_STACK_DEPTH: usize = 127;

/// `a * b`, or `u64::MAX` on overflow (calloc's and reallocarray's size).
///
/// Computed in 32-bit halves: LLVM turns `u64::saturating_mul` and the usual overflow checks into a
/// 128-bit multiply, which BPF programs cannot call.
pub const fn saturating_product(a: u64, b: u64) -> u64 {
    let (big, small) = if a >> 32 != 0 { (a, b) } else { (b, a) };
    if small >> 32 != 0 {
        return u64::MAX;
    }
    let high = (big >> 32) * small;
    if high >> 32 != 0 {
        return u64::MAX;
    }
    let low = (big & 0xffff_ffff) * small;
    let sum = (high << 32).wrapping_add(low);
    if sum < low { u64::MAX } else { sum }
}

#[cfg(test)]
mod tests {
    use super::saturating_product;

    #[test]
    fn saturating_product_matches_saturating_mul() {
        let values = [
            0,
            1,
            2,
            3,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x7fff_ffff_ffff_ffff,
            u64::MAX / 3,
            u64::MAX,
        ];
        for a in values {
            for b in values {
                let expected = a.saturating_mul(b);
                assert_eq!(saturating_product(a, b), expected, "{a} * {b}");
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), made of integers only, with explicit padding.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
}
