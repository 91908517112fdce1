//! Saved snapshots (`snapshot --from`/`--base`): any bytes read as a JSON
//! report or a pprof profile, or refused; a report read renders as a pprof
//! profile that reads back with the same sites' figures.
#![no_main]

use std::time::SystemTime;

use heapwatch::report::{ProfileTime, parse_saved, render_pprof};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(report) = parse_saved(bytes) else {
        return;
    };
    let time = ProfileTime {
        taken: SystemTime::UNIX_EPOCH,
        duration: None,
    };
    let profile = render_pprof(std::slice::from_ref(&report), time).expect("renders");
    let again = parse_saved(&profile).expect("a profile heapwatch wrote reads back");
    let figures = |r: &heapwatch::report::ProcessReport| -> Vec<(u64, u64)> {
        let mut sites: Vec<(u64, u64)> = r
            .sites
            .iter()
            .filter(|s| s.live_bytes > 0)
            .map(|s| (s.live_bytes, s.live_blocks))
            .collect();
        sites.sort_unstable();
        sites
    };
    assert_eq!(figures(&again), figures(&report));
});
