//! Writing records to the ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use profiler_common::{Counter, Event};

use crate::{
    maps::{EVENTS, WAKEUP_BYTES, count},
    tgid_of,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Reserves and submits one record; a full ring buffer is counted, never silent.
pub fn emit(kind: u32, pid_tgid: u64, ptr: u64, size: u64, caller: u64, stack_id: i32) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(Event {
        kind,
        tgid: tgid_of(pid_tgid),
        tid: pid_tgid as u32,
        stack_id,
        ptr,
        size,
        caller,
        // SAFETY: helper without preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    });
    entry.submit(wakeup_flag());
}

/// Wake the reader only once enough data waits: a wakeup per record costs microseconds.
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
