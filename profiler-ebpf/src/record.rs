//! Writing records to the ring buffer.

use profiler_common::{AllocEvent, Event, kind};

use crate::{
    maps::{EVENTS, WAKEUP_BYTES, count_lost},
    tgid_of,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Reserves and submits a record of a block freed or a process; a full ring
/// buffer is counted, never silent.
pub fn emit(kind: u32, pid_tgid: u64, ptr: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_lost(tgid_of(pid_tgid));
        return false;
    };
    entry.write(Event {
        kind,
        tgid: tgid_of(pid_tgid),
        tid: pid_tgid as u32,
        _pad: 0,
        ptr,
    });
    entry.submit(wakeup_flag(matches!(
        kind,
        kind::EXEC | kind::FORK | kind::OOM_VICTIM
    )));
    true
}

/// Reserves and submits the record of an allocation at site `stack`;
/// `urgent` wakes the reader at once.
pub fn emit_alloc(pid_tgid: u64, ptr: u64, size: u64, stack: u64, urgent: bool) {
    let Some(mut entry) = EVENTS.reserve::<AllocEvent>(0) else {
        count_lost(tgid_of(pid_tgid));
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
    });
    entry.submit(wakeup_flag(urgent));
}

/// Wake the reader only once enough data waits (a wakeup per record costs
/// microseconds), or at once for what it must see while a process lives: a
/// new image or process, and the first allocation of each thread in it.
fn wakeup_flag(urgent: bool) -> u64 {
    if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
