//! `heapwatch daemon --scope`: selected processes get probes of their own,
//! found when they start; every other process runs without a breakpoint.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{thread, time::Duration};

use support::{
    BpfBaseline, config_file,
    daemon::Daemon,
    process::{Gated, INT3, eventually, first_byte_of_malloc, snapshot_json, workload_named},
    tempfile_path,
};

#[test]
#[ignore = "needs root"]
fn only_selected_processes_get_breakpoints_and_they_are_traced_exactly() {
    let baseline = BpfBaseline::take();
    let chosen = workload_named("hw_chosen");
    let other = workload_named("hw_other");
    let running_before = Gated::spawn(&chosen, "gated");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(
        &config_file(""),
        &["--scope", "comm:hw_chosen", "--socket", socket_arg],
    );
    let started_after = Gated::spawn(&chosen, "gated");
    let mut unselected = Gated::spawn(&other, "gated");
    for (gated, when) in [(&running_before, "before"), (&started_after, "after")] {
        assert!(
            eventually(|| first_byte_of_malloc(gated.pid()) == Some(INT3)),
            "the selected process started {when} the daemon has no breakpoint at malloc"
        );
    }
    let mut selected = [running_before, started_after];
    for gated in &mut selected {
        gated.allocate();
    }
    unselected.allocate();
    // It has allocated: the C library is mapped.
    assert_ne!(
        first_byte_of_malloc(unselected.pid()).expect("the C library is mapped"),
        INT3,
        "the kernel put a breakpoint into a process no selector picks"
    );
    // 100 blocks of 10,000 bytes each, and nothing else (the fixture uses no stdio).
    for gated in &selected {
        let json = snapshot_json(&socket, gated.pid()).expect("a snapshot of a selected process");
        assert_eq!(json["in_use_bytes"], 1_000_000, "{json}");
        assert_eq!(json["in_use_blocks"], 100, "{json}");
    }
    let refused = snapshot_json(&socket, unselected.pid()).expect_err("an unselected process");
    assert!(
        refused.contains("made no allocation heapwatch saw"),
        "{refused}"
    );
    for gated in selected {
        gated.finish();
    }
    unselected.finish();
    // Processes ending, selected or not, are let go without a complaint.
    thread::sleep(Duration::from_millis(500));
    assert!(
        !daemon.log().contains("WARN"),
        "the daemon warned:\n{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
    baseline.assert_nothing_left();
}
