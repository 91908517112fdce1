//! Which processes are traced.

use profiler_common::filter_mode;

use crate::maps::{FILTER_MODE, SELF_TGID, TARGETS};

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
