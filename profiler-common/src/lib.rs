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
    /// The process `tgid` was forked from the process whose tgid is in
    /// `ptr`'s low half; `ptr`'s bit [`FORK_SHARES_MEMORY`] is set when it
    /// runs in its parent's memory until it execs (vfork, `CLONE_VM`).
    pub const FORK: u32 = 7;
    /// The bit of a [`FORK`] record's `ptr` that says the child shares its
    /// parent's memory.
    pub const FORK_SHARES_MEMORY: u64 = 1 << 32;
    /// A user stack seen for the first time: a [`StackEvent`].
    pub const STACK: u32 = 8;
    /// A block was freed by a thread that has begun to exit (glibc's
    /// `__call_tls_dtors` ran): a block not live is then one glibc's
    /// per-thread cache held, freed again, not one allocated unseen.
    pub const EXITING_FREE: u32 = 9;
    /// The OOM killer chose process `tgid` (oom/mark_victim, any process);
    /// `ptr` is its anonymous resident memory then, in KiB.
    pub const OOM_VICTIM: u32 = 10;
}

/// A ring-buffer record about a block freed or a process: every kind but
/// [`kind::ALLOC`] and [`kind::STACK`].
///
/// Fixed size, so the kernel reserves it in one step and userspace decodes it
/// without allocating. It is the common prefix of [`AllocEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// One of the [`kind`] codes.
    pub kind: u32,
    /// Process id (thread-group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Address of the block (or the parent tgid for [`kind::FORK`], the
    /// victim's anonymous KiB for [`kind::OOM_VICTIM`]).
    pub ptr: u64,
}
const _: () = assert!(size_of::<Event>() == 24);

/// A ring-buffer record of one allocation ([`kind::ALLOC`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocEvent {
    /// [`kind::ALLOC`].
    pub kind: u32,
    /// Process id (thread-group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Address of the block.
    pub ptr: u64,
    /// Requested size in bytes.
    pub size: u64,
    /// Hash of the allocation's user stack (its site), sent once as a [`StackEvent`].
    /// (No time: `bpf_ktime_get_ns` is a helper call in every allocation;
    /// the reader stamps records as it reads them, far finer than a block's
    /// age needs.)
    pub stack: u64,
}
const _: () = assert!(size_of::<AllocEvent>() == 40);

/// Maximum frames of a user stack.
pub const MAX_STACK_DEPTH: usize = 127;

/// [`StackEvent::flags`]: only the immediate caller was read (`--stack-sample`).
pub const STACK_UNSAMPLED: u16 = 1;

/// A ring-buffer record of a user stack seen for the first time ([`kind::STACK`]):
/// allocations refer to it by its hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackEvent {
    /// [`kind::STACK`].
    pub kind: u32,
    /// Frames used in `frames`.
    pub depth: u16,
    /// [`STACK_UNSAMPLED`] or 0.
    pub flags: u16,
    /// [`stack_hash`] of the frames used.
    pub hash: u64,
    /// Return addresses, immediate caller first.
    pub frames: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(size_of::<StackEvent>() == 16 + 8 * MAX_STACK_DEPTH);

/// The hash a stack starts from: `flags` keeps an unsampled one-frame stack
/// apart from a full stack of one frame.
pub const fn stack_hash_seed(flags: u16) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ flags as u64
}

/// Adds one frame to a stack hash (the kernel hashes frame by frame as it walks).
pub const fn stack_hash_step(hash: u64, frame: u64) -> u64 {
    (hash.rotate_left(5) ^ frame).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// The hash of a whole stack: what [`AllocEvent::stack`] and [`StackEvent::hash`] hold.
pub fn stack_hash(flags: u16, frames: &[u64]) -> u64 {
    frames.iter().fold(stack_hash_seed(flags), |hash, &frame| {
        stack_hash_step(hash, frame)
    })
}

/// Slots of the kernel's array of stacks sent (`KNOWN_STACKS`): a power of two.
pub const KNOWN_STACK_SLOTS: u32 = 1 << 16;

/// The two slots of `KNOWN_STACKS` where the stack hashed `hash` may be
/// remembered as sent: from its two top 16-bit words, the best mixed.
pub const fn known_stack_slots(hash: u64) -> [u32; 2] {
    let mask = KNOWN_STACK_SLOTS as u64 - 1;
    [((hash >> 48) & mask) as u32, ((hash >> 32) & mask) as u32]
}

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
    /// realloc: the old block; posix_memalign: the `memptr` address.
    pub aux: u64,
    /// Hash of the call's user stack when known at entry (the site of the
    /// C++ `operator new` it serves); 0 when its return finds it.
    pub stack: u64,
    /// The stack pointer at the call's entry: where the calls it makes
    /// itself start (just below) and its return ends (just above), and
    /// what a signal handler's call starts far below.
    pub sp: u64,
    /// One of the [`func`] codes.
    pub func: u32,
    /// Allocator calls nested inside this one (glibc calling itself), still to return.
    pub depth: u32,
}
const _: () = assert!(size_of::<Pending>() == 40);

/// Where a C++ `operator new` was called from, kept until the malloc it makes
/// (libstdc++ has no frame pointers, so malloc's own stack walk skips this caller).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OuterCall {
    /// Hash of the user stack at `operator new`'s entry.
    pub stack: u64,
    /// Stack pointer at `operator new`'s entry.
    pub sp: u64,
}
const _: () = assert!(size_of::<OuterCall>() == 16);

/// One thread's allocator state, kept in the kernel between its allocator
/// calls' entries and returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// The outermost allocator call in progress; `func` 0 when none is.
    pub call: Pending,
    /// An allocator call a signal handler makes while `call` is in
    /// progress (it interrupted it); `func` 0 when none is.
    pub handler: Pending,
    /// The thread's pending C++ `operator new`; `sp` 0 when none is.
    pub outer: OuterCall,
    /// Non-zero once an allocation of this thread woke the reader in this image.
    pub woke: u32,
    /// Non-zero once the thread has begun to exit (see [`kind::EXITING_FREE`]).
    pub exiting: u32,
    /// Allocations of this thread still to come before the next one whose
    /// full stack is walked (when only some are).
    pub until_sample: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ThreadState>() == 112);

/// Slots of the kernel's array of thread states, indexed by thread id
/// modulo this power of two. A thread whose slot another live thread holds
/// keeps its state in task storage, exact but slower.
pub const THREAD_SLOTS_LEN: u32 = 1 << 14;

/// How far below `operator new`'s stack pointer its malloc call may start.
pub const OUTER_CALL_MAX_FRAME: u64 = 512;

/// How far below an allocator call's stack pointer a call it makes itself
/// may start (glibc's realloc calling malloc, an interposer calling the C
/// library's). A signal handler's call starts farther: below the signal
/// frame the kernel pushes, larger than this alone on x86_64 (the saved
/// registers, the FPU state and the red zone).
pub const NESTED_CALL_MAX_FRAME: u64 = 1024;

/// How far above an allocator call in progress a new call may start on the
/// same stack (the call was left by `longjmp`, or its return lost); farther
/// is another stack (a signal handler's on `sigaltstack`).
pub const SAME_STACK_SPAN: u64 = 8 << 20;

/// Where a call starting at stack pointer `sp` stands to an allocator call
/// `pending` in progress on the same thread, whose entry's was `pending_sp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Made by the call in progress itself (or jumped to from it): not
    /// counted.
    Nested,
    /// Made by a signal handler that interrupted it: counted on its own.
    Handler,
    /// The call in progress was left: it ends unfinished.
    Left,
}

/// Where a call starting at `sp` stands to a call in progress that started
/// at `pending_sp` (see [`Placement`]).
pub const fn placement(pending_sp: u64, sp: u64) -> Placement {
    // At the same stack pointer: a tail call (glibc's realloc of NULL
    // jumping to malloc), nested.
    if sp <= pending_sp {
        if pending_sp - sp <= NESTED_CALL_MAX_FRAME {
            Placement::Nested
        } else {
            Placement::Handler
        }
    } else if sp - pending_sp <= SAME_STACK_SPAN {
        Placement::Left
    } else {
        Placement::Handler
    }
}

/// True when a return with stack pointer `sp` ends the call that started
/// at `pending_sp` or one nested in it: a return pops the return address,
/// one word above the entry's stack pointer.
pub const fn returns_within(pending_sp: u64, sp: u64) -> bool {
    let top = pending_sp.wrapping_add(8);
    sp <= top && top - sp <= NESTED_CALL_MAX_FRAME
}

/// Kernel-side counters of records and entries that could not be kept,
/// indexes of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be reserved in the ring buffer: an event was lost.
    RingbufFull = 0,
    /// A thread's state could not be kept (task storage refused it): an
    /// allocation's entry could not be paired with its return.
    Unpaired = 1,
    /// A process could not be added to the target map on fork.
    TargetsFull = 2,
}

impl Counter {
    /// Number of counters (length of the `COUNTERS` array).
    pub const COUNT: u32 = 3;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::RingbufFull,
        Counter::Unpaired,
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
    use super::{
        KNOWN_STACK_SLOTS, NESTED_CALL_MAX_FRAME, Placement, known_stack_slots, placement,
        returns_within, saturating_product, stack_hash,
    };

    #[test]
    fn a_call_is_placed_by_its_stack_pointer_against_the_call_in_progress() {
        let sp = 0x7ffc_0000_8000;
        // realloc calling malloc: a frame or two below.
        assert_eq!(placement(sp, sp - 72), Placement::Nested);
        assert_eq!(placement(sp, sp - NESTED_CALL_MAX_FRAME), Placement::Nested);
        // A handler, below the signal frame.
        assert_eq!(placement(sp, sp - 2_000), Placement::Handler);
        // A tail call (realloc of NULL jumping to malloc).
        assert_eq!(placement(sp, sp), Placement::Nested);
        // Back above it on its stack: the call was left (longjmp).
        assert_eq!(placement(sp, sp + 8), Placement::Left);
        assert_eq!(placement(sp, sp + 4_096), Placement::Left);
        // On another stack (sigaltstack, mapped elsewhere).
        assert_eq!(placement(sp, sp + (1 << 30)), Placement::Handler);
        assert_eq!(placement(sp, 0x7f12_0000_0000), Placement::Handler);
    }

    #[test]
    fn a_return_ends_its_call_or_one_nested_in_it() {
        let sp = 0x7ffc_0000_8000;
        assert!(returns_within(sp, sp + 8), "its own return");
        assert!(returns_within(sp, sp - 64), "a nested call's");
        assert!(!returns_within(sp, sp - 2_000), "a handler's");
        assert!(!returns_within(sp, sp + 16), "an outer call's");
    }

    #[test]
    fn a_stacks_two_slots_are_in_the_array_and_spread_over_it() {
        let mut used = [false; KNOWN_STACK_SLOTS as usize];
        let mut same = 0;
        for caller in 0..4096u64 {
            let [first, second] = known_stack_slots(stack_hash(0, &[0x40_1000 + 5 * caller]));
            assert!(first < KNOWN_STACK_SLOTS && second < KNOWN_STACK_SLOTS);
            same += usize::from(first == second);
            used[first as usize] = true;
            used[second as usize] = true;
        }
        assert!(same < 4, "{same} stacks with one slot only");
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct > 7_500, "8,192 slots picked, {distinct} distinct");
    }

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
    unsafe impl aya::Pod for super::AllocEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
}
