//! Which processes are traced.

use profiler_common::filter_mode;

use crate::maps::{FILTER_MODE, PROBES_SCOPED, SELF_TGID, TARGETS};

/// True when an allocator probe hit in process `tgid` is wanted: always
/// when the probes are attached to the traced processes alone (the kernel
/// runs them in no other).
pub fn probe_wanted(tgid: u32) -> bool {
    PROBES_SCOPED.load() != 0 || traced(tgid)
}

/// True when events of process `tgid` are wanted.
pub fn traced(tgid: u32) -> bool {
    if tgid == SELF_TGID.load() {
        return false;
    }
    if FILTER_MODE.load() == filter_mode::ALL {
        return true;
    }
    // SAFETY: a lookup only; the value is not dereferenced.
    unsafe { TARGETS.get(tgid) }.is_some()
}
