//! Maps and load-time globals. Sizes here are defaults: userspace sets them at load.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use profiler_common::{Counter, OuterCall, Pending};

/// The tracer's own tgid: never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: Global<u32> = Global::new(0);
/// One of `profiler_common::filter_mode`.
#[unsafe(no_mangle)]
pub static FILTER_MODE: Global<u32> = Global::new(0);
/// Non-zero: a traced process's new children are traced too.
#[unsafe(no_mangle)]
pub static FOLLOW_FORKS: Global<u32> = Global::new(0);
/// Pending bytes in the ring buffer past which a submit wakes the reader.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(64 * 1024);
/// Capture the full stack of one allocation in this many (1: every one).
#[unsafe(no_mangle)]
pub static STACK_SAMPLE_EVERY: Global<u32> = Global::new(1);
/// Offset of `group_dead` in sched_process_exit's record; 0 when the kernel lacks it.
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(0);
/// Offset of `pid` in task_newtask's record.
#[unsafe(no_mangle)]
pub static NEWTASK_PID_OFFSET: Global<u32> = Global::new(8);
/// Offset of `clone_flags` in task_newtask's record.
#[unsafe(no_mangle)]
pub static NEWTASK_FLAGS_OFFSET: Global<u32> = Global::new(32);

/// Records for userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Outermost allocator call of each thread (key: pid_tgid), between entry and return.
#[map]
pub static INFLIGHT: HashMap<u64, Pending> = HashMap::with_max_entries(65536, 0);

/// A thread's pending C++ `operator new` call site (key: pid_tgid).
#[map]
pub static OUTER: LruHashMap<u64, OuterCall> = LruHashMap::with_max_entries(65536, 0);

/// Processes to trace when `FILTER_MODE` is `TARGETS` (key: tgid).
#[map]
pub static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Processes (tgid) whose image has already allocated: the first allocation
/// of each new image wakes the reader at once, so that it reads the process's
/// mappings while the process lives.
#[map]
pub static ALLOCATED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Hashes of the user stacks sent to userspace (it removes those no process uses any more).
#[map]
pub static KNOWN_STACKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU counters indexed by `profiler_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Adds one to a per-CPU counter.
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
