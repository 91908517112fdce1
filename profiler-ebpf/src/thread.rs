//! The thread a uprobe runs in: its ids and its allocator state, found
//! without a helper call when the thread holds a slot.
//!
//! A thread is known in its slot by the address of its saved user
//! registers, which every uprobe and uretprobe program gets as its
//! context: they sit at the top of the thread's kernel stack, the same for
//! each of its probe hits and no other live thread's.

use core::ptr;

use aya_ebpf::{bindings::BPF_NOEXIST, bindings::pt_regs, helpers::bpf_get_current_pid_tgid};
use profiler_common::ThreadState;

use crate::{
    filter::probe_wanted,
    maps::{SLOT_CLAIMS, SLOT_HOLDERS, THREAD_SLOT_MASK, THREAD_SLOTS, THREADS, ThreadSlot},
    tgid_of,
};

/// The current thread of a process whose allocator calls are wanted.
pub struct Thread {
    /// Process id (high half) and thread id (low half), as the kernel's
    /// `bpf_get_current_pid_tgid` gives them.
    pub pid_tgid: u64,
    /// The thread's allocator state; `None` when it has none and none was
    /// asked for, or the kernel refused task storage.
    pub state: Option<*mut ThreadState>,
}

impl Thread {
    /// The current thread, from a uprobe's saved registers `regs`; `None`
    /// when its process is not wanted. Its state is zeroed first when
    /// `create` and it has none yet: in the slot it picks when that slot is
    /// free, else in task storage. A thread with state in task storage
    /// keeps it there, so that no call in progress is split between the two.
    #[inline(always)]
    pub fn current(regs: *const pt_regs, create: bool) -> Option<Self> {
        let key = thread_key(regs);
        let index = slot_index(key);
        let slot = THREAD_SLOTS.get_ptr_mut(index)?;
        // SAFETY: an array slot, valid while the map lives; only the thread
        // holding the slot's claim writes it.
        unsafe {
            if (*slot).owner == key {
                let pid_tgid = (*slot).pid_tgid;
                return probe_wanted(tgid_of(pid_tgid)).then(|| Self {
                    pid_tgid,
                    state: Some(&raw mut (*slot).state),
                });
            }
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        if !probe_wanted(tgid_of(pid_tgid)) {
            return None;
        }
        let state = if create && claim(slot, index, key, pid_tgid) {
            // SAFETY: as above; this thread now holds the slot.
            Some(unsafe { &raw mut (*slot).state })
        } else {
            THREADS.current(create)
        };
        Some(Self { pid_tgid, state })
    }
}

/// Takes the free `slot` (`THREAD_SLOTS`' slot `index`) for the current
/// thread, known by `key`, unless it has state in task storage already.
#[inline(always)]
fn claim(slot: *mut ThreadSlot, index: u32, key: u64, pid_tgid: u64) -> bool {
    let tid = pid_tgid as u32;
    // SAFETY: `slot` is an array slot, valid while the map lives; the
    // claim gives this thread alone the right to write it.
    unsafe {
        if (*slot).owner != 0
            || THREADS.current(false).is_some()
            || SLOT_CLAIMS.insert(index, 1, BPF_NOEXIST.into()).is_err()
        {
            return false;
        }
        if SLOT_HOLDERS.insert(tid, index, 0).is_err() {
            let _ = SLOT_CLAIMS.remove(index);
            return false;
        }
        (*slot).state = ThreadState::default();
        (*slot).pid_tgid = pid_tgid;
        (*slot).owner = key;
    }
    true
}

/// At exec, in the thread that execs (`old_tid` before, `pid_tgid` now):
/// its state belonged to the old image, and a thread other than the first
/// takes over the process's id.
pub fn reset_for_exec(old_tid: u32, pid_tgid: u64) {
    let tid = pid_tgid as u32;
    // SAFETY: a lookup; the value is copied.
    if let Some(&index) = unsafe { SLOT_HOLDERS.get(old_tid) } {
        if let Some(slot) = THREAD_SLOTS.get_ptr_mut(index) {
            // SAFETY: as in `claim`; this thread holds the slot.
            unsafe {
                (*slot).state = ThreadState::default();
                (*slot).pid_tgid = pid_tgid;
            }
        }
        if old_tid != tid {
            let _ = SLOT_HOLDERS.remove(old_tid);
            let _ = SLOT_HOLDERS.insert(tid, index, 0);
        }
    }
    if let Some(state) = THREADS.current(false) {
        // SAFETY: the thread's own storage, valid for this run.
        unsafe { *state = ThreadState::default() };
    }
}

/// At thread `tid`'s exit: frees its slot, if it holds one.
pub fn release_slot(tid: u32) {
    // SAFETY: a lookup; the value is copied.
    let Some(&index) = (unsafe { SLOT_HOLDERS.get(tid) }) else {
        return;
    };
    if let Some(slot) = THREAD_SLOTS.get_ptr_mut(index) {
        // SAFETY: as in `claim`; this thread holds the claim, and no other
        // can take it before it is removed.
        unsafe { (*slot).owner = 0 };
    }
    let _ = SLOT_CLAIMS.remove(index);
    let _ = SLOT_HOLDERS.remove(tid);
}

/// The current thread's key: where its saved registers lie, as an offset
/// from a fixed address (the verifier lets a program subtract pointers,
/// not read one as a number).
#[inline(always)]
fn thread_key(regs: *const pt_regs) -> u64 {
    (regs as u64).wrapping_sub(ptr::addr_of!(THREAD_SLOT_MASK) as u64)
}

/// The slot of the thread known by `key`, hashed (kernel stacks lie 16 KiB
/// or more apart).
#[inline(always)]
fn slot_index(key: u64) -> u32 {
    ((key >> 14).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 & THREAD_SLOT_MASK.load()
}
