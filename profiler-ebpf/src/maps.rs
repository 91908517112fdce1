//! Maps and load-time globals. Sizes here are defaults: userspace sets them at load.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use profiler_common::{
    Counter, KNOWN_STACK_SLOTS, THREAD_SLOTS_LEN, ThreadState, known_stack_slots,
};

/// The tracer's own tgid: never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: Global<u32> = Global::new(0);
/// One of `profiler_common::filter_mode`.
#[unsafe(no_mangle)]
pub static FILTER_MODE: Global<u32> = Global::new(0);
/// Non-zero: a traced process's new children are traced too.
#[unsafe(no_mangle)]
pub static FOLLOW_FORKS: Global<u32> = Global::new(0);
/// Non-zero: the allocator probes are attached to each traced process alone.
#[unsafe(no_mangle)]
pub static PROBES_SCOPED: Global<u32> = Global::new(0);
/// Non-zero: every process's exec and exit is reported, traced or not.
#[unsafe(no_mangle)]
pub static EVERY_LIFECYCLE: Global<u32> = Global::new(0);

/// Non-zero: a traced process that execs is stopped (SIGSTOP) once its exec
/// is reported, before its new image runs, and userspace continues it once
/// the new image's allocator is probed (`record`: a command that execs
/// another program in place, into a root with its own libc).
#[unsafe(no_mangle)]
pub static HOLD_AT_EXEC: Global<u32> = Global::new(0);
/// Pending bytes in the ring buffer past which a submit wakes the reader.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(64 * 1024);
/// Capture the full stack of one allocation in this many (1: every one).
#[unsafe(no_mangle)]
pub static STACK_SAMPLE_EVERY: Global<u32> = Global::new(1);
/// Slots of `THREAD_SLOTS` less one (their number is a power of two).
#[unsafe(no_mangle)]
pub static THREAD_SLOT_MASK: Global<u32> = Global::new(THREAD_SLOTS_LEN - 1);
/// 1 when sched_process_exit passes `group_dead` (its second argument); 0
/// when the kernel lacks it.
#[unsafe(no_mangle)]
pub static EXIT_HAS_GROUP_DEAD: Global<u32> = Global::new(0);
/// Offset of `pid` in task_newtask's record.
#[unsafe(no_mangle)]
pub static NEWTASK_PID_OFFSET: Global<u32> = Global::new(8);
/// Offset of `clone_flags` in task_newtask's record.
#[unsafe(no_mangle)]
pub static NEWTASK_FLAGS_OFFSET: Global<u32> = Global::new(32);
/// Offset of `pid` in oom/mark_victim's record.
#[unsafe(no_mangle)]
pub static OOM_PID_OFFSET: Global<u32> = Global::new(8);
/// Offset of `anon_rss` (KiB) in oom/mark_victim's record.
#[unsafe(no_mangle)]
pub static OOM_ANON_RSS_OFFSET: Global<u32> = Global::new(24);

/// Records for userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Each thread's allocator state, in the slot its key picks (see `thread`),
/// held by one live thread at a time: an array lookup the verifier inlines,
/// where a task-storage lookup is a helper call (three a malloc+free pair).
/// The slot keeps the thread's ids too: reading them there spares a helper
/// call in each probe.
#[map]
pub static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(THREAD_SLOTS_LEN, 0);

/// The state of a thread without a slot (another live thread held it when
/// the thread first needed one), freed with the thread.
#[btf_map]
pub static THREADS: TaskStorage<ThreadState> = TaskStorage::new();

/// Processes to trace when `FILTER_MODE` is `TARGETS` (key: tgid).
#[map]
pub static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Hashes of the user stacks sent to userspace, each in one of its two
/// slots (`profiler_common::known_stack_slots`); userspace clears those no
/// process uses any more. An array lookup is inlined by the verifier, where
/// a hash map's is a helper call. A stack pushed out by others sharing its
/// slots is only sent again.
#[map]
pub static KNOWN_STACKS: Array<u64> = Array::with_max_entries(KNOWN_STACK_SLOTS, 0);

/// Records lost per process (key: tgid), since userspace last took them:
/// marks whose figures are inexact. `COUNTERS` has the exact total.
#[map]
pub static LOST: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// Per-CPU counters indexed by `profiler_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// A slot of `THREAD_SLOTS`: the state of the thread known by `owner` (0:
/// free; see `thread`), and that thread's ids. `owner` is written by
/// the thread that claimed the slot in `SLOT_CLAIMS`, and cleared before
/// the claim is removed.
#[repr(C)]
pub struct ThreadSlot {
    pub owner: u64,
    pub pid_tgid: u64,
    pub state: ThreadState,
}

/// Which slots of `THREAD_SLOTS` are held (key: slot index): inserting a
/// key that must not exist is the kernel's atomic claim, made once in a
/// thread's life (Rust's `core` gives the BPF target no compare-and-swap).
#[map]
pub static SLOT_CLAIMS: HashMap<u32, u8> = HashMap::with_max_entries(THREAD_SLOTS_LEN, 0);

/// The slot each thread holding one holds (key: thread id), for its exit
/// and exec, where no uprobe's registers name the thread.
#[map]
pub static SLOT_HOLDERS: HashMap<u32, u32> = HashMap::with_max_entries(THREAD_SLOTS_LEN, 0);

/// Counts a record of process `tgid` that could not be written.
pub fn count_lost(tgid: u32) {
    count(Counter::RingbufFull);
    mark_lost(tgid);
}

/// Counts an allocator call of process `tgid` that could not be followed.
pub fn mark_unseen(tgid: u32) {
    count(Counter::Unpaired);
    mark_lost(tgid);
}

/// Marks process `tgid`'s figures inexact: one of its events was lost.
fn mark_lost(tgid: u32) {
    match LOST.get_ptr_mut(tgid) {
        // SAFETY: the value stays valid for this program's run; a racing
        // increment may be missed, and only marks the process.
        Some(lost) => unsafe { *lost += 1 },
        None => {
            let _ = LOST.insert(tgid, 1, 0);
        }
    }
}

/// Adds one to a per-CPU counter.
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// A BTF-defined task-local storage map (aya-ebpf has none): the layout
/// the loader reads the map's type, key, value and flags from.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads as BTF, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    /// The definition; the kernel creates the map at load.
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The current thread's value, zeroed when `create` and it has none yet.
    /// `None` when it has none, or the kernel refuses (out of memory, or the
    /// storage busy on this CPU).
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<*mut T> {
        let flags = if create {
            u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: the map pointer is this definition's, which the loader
        // relocates; the task pointer comes from the helper.
        let value = unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast::<c_void>(),
                bpf_get_current_task_btf(),
                ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast::<T>())
    }
}

/// True when the stack hashed `hash` was sent and userspace still holds it.
/// (Empty slots hold 0: a stack hashing to 0, a 2^-64 chance, is always sent.)
#[inline(always)]
pub fn stack_known(hash: u64) -> bool {
    hash != 0
        && known_stack_slots(hash)
            .into_iter()
            .any(|slot| KNOWN_STACKS.get(slot) == Some(&hash))
}

/// Remembers the stack hashed `hash` as sent: in an empty one of its slots,
/// or else in the one its lowest bit picks (the stack there is sent again
/// when next seen).
pub fn remember_stack(hash: u64) {
    let [first, second] = known_stack_slots(hash);
    let slot = match (KNOWN_STACKS.get(first), KNOWN_STACKS.get(second)) {
        (Some(0), _) => first,
        (_, Some(0)) => second,
        _ if hash & 1 == 0 => first,
        _ => second,
    };
    if let Some(value) = KNOWN_STACKS.get_ptr_mut(slot) {
        // SAFETY: an array slot, valid while the map lives; an aligned
        // 8-byte store, so a racing reader sees either hash whole.
        unsafe { *value = hash };
    }
}
