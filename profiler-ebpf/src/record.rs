//! Writing records to the ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use profiler_common::{AllocEvent, Counter, Event, kind};

use crate::{
    maps::{ALLOCATED, EVENTS, WAKEUP_BYTES, count},
    tgid_of,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Reserves and submits a record of a block freed or a process; a full ring
/// buffer is counted, never silent.
pub fn emit(kind: u32, pid_tgid: u64, ptr: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(Event {
        kind,
        tgid: tgid_of(pid_tgid),
        tid: pid_tgid as u32,
        _pad: 0,
        ptr,
    });
    entry.submit(wakeup_flag(kind, tgid_of(pid_tgid)));
}

/// Reserves and submits the record of an allocation at site `stack`.
pub fn emit_alloc(pid_tgid: u64, ptr: u64, size: u64, stack: u64) {
    let Some(mut entry) = EVENTS.reserve::<AllocEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(AllocEvent {
        kind: kind::ALLOC,
        tgid: tgid_of(pid_tgid),
        tid: pid_tgid as u32,
        _pad: 0,
        ptr,
        size,
        stack,
        // SAFETY: helper without preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    });
    entry.submit(wakeup_flag(kind::ALLOC, tgid_of(pid_tgid)));
}

/// Wake the reader only once enough data waits (a wakeup per record costs
/// microseconds), or when a process image appears, allocates first, or goes.
fn wakeup_flag(kind: u32, tgid: u32) -> u64 {
    let urgent = match kind {
        kind::ALLOC => first_allocation(tgid),
        kind::EXEC | kind::FORK => {
            let _ = ALLOCATED.remove(tgid);
            true
        }
        kind::EXIT => {
            let _ = ALLOCATED.remove(tgid);
            false
        }
        _ => false,
    };
    if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// True for the first allocation of a process image.
fn first_allocation(tgid: u32) -> bool {
    // SAFETY: a lookup only; the value is not dereferenced.
    if unsafe { ALLOCATED.get(tgid) }.is_some() {
        return false;
    }
    let _ = ALLOCATED.insert(tgid, 1u8, 0);
    true
}
