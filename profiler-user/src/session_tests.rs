//! The session engine on synthetic records: what each retention keeps, the
//! counters, and stack records.

use super::*;
use crate::events::{RawSite, Task, stack_record_bytes};

fn alloc(tgid: u32, ptr: u64, size: u64, stack: u64) -> HeapEvent {
    HeapEvent::Alloc {
        task: Task { tgid, tid: tgid },
        ptr,
        size,
        site: RawSite { stack },
        time_ns: 0,
    }
}

fn free(tgid: u32, ptr: u64) -> HeapEvent {
    HeapEvent::Free {
        task: Task { tgid, tid: tgid },
        ptr,
    }
}

fn session(retention: Retention) -> Session {
    Session::new(TrackerConfig::default(), retention)
}

#[test]
fn a_recording_keeps_an_exited_process_and_drops_an_exec_d_image() {
    let mut s = session(Retention::KeepExited);
    s.apply(&alloc(10, 0x10, 100, 1));
    s.apply(&alloc(20, 0x10, 7, 1));
    let applied = s.apply(&HeapEvent::Exit { tgid: 10 });
    assert_eq!(applied.ended, Some(10));
    let (state, exited) = s.process(10).expect("kept after exit");
    assert_eq!((state.live_bytes(), exited), (100, true));

    assert_eq!(s.apply(&HeapEvent::Exec { tgid: 20 }).ended, Some(20));
    assert!(s.process(20).is_none(), "the image before exec is gone");
    s.apply(&alloc(20, 0x20, 3, 1));
    let (state, exited) = s.process(20).expect("the new image");
    assert_eq!((state.live_bytes(), exited), (3, false));

    let mut pids = s.pids();
    pids.sort_unstable();
    assert_eq!(pids, [10, 20]);
}

#[test]
fn the_daemon_drops_ended_processes_but_keeps_their_counts() {
    let mut s = session(Retention::LiveOnly);
    // 10 is traced from its exec: its free of a block never seen is a miss.
    s.apply(&HeapEvent::Exec { tgid: 10 });
    s.apply(&alloc(10, 0x10, 100, 1));
    s.apply(&free(10, 0x99));
    s.apply(&HeapEvent::Exit { tgid: 10 });
    assert!(s.process(10).is_none());
    // 20 ran before tracing began: its block is from before.
    s.apply(&free(20, 0x98));
    let figures = s.figures();
    assert_eq!(figures.unmatched_frees, 1, "the one gone");
    assert_eq!(figures.pretrace_frees, 1, "the one running");
    assert_eq!(figures.tracked_processes, 1);
    assert_eq!(
        figures.events[EventKind::Free as usize],
        2,
        "{:?}",
        figures.events
    );
    assert_eq!(figures.events[EventKind::Exit as usize], 1);
}

#[test]
fn forgetting_a_process_says_whether_there_was_one() {
    let mut s = session(Retention::LiveOnly);
    s.apply(&alloc(10, 0x10, 100, 1));
    assert!(s.forget_process(10));
    assert!(!s.forget_process(10));
    assert_eq!(s.live_blocks(), 0);
}

#[test]
fn records_are_decoded_counted_and_stacks_kept() {
    let mut s = session(Retention::LiveOnly);
    assert_eq!(
        s.apply_record(&stack_record_bytes(&[0x401000, 0x402000], 0), 1),
        None
    );
    assert_eq!(s.apply_record(&[1, 2, 3], 1), None);
    let hash = profiler_common::stack_hash(0, &[0x401000, 0x402000]);
    let stack = s.stacks().get(hash).expect("the stack is kept");
    assert_eq!(&*stack.frames, [0x401000, 0x402000]);
    let figures = s.figures();
    assert_eq!((figures.malformed_records, figures.stacks_held), (1, 1));
    assert_eq!(figures.events, [0; EventKind::ALL.len()], "no heap event");
}

#[test]
fn stacks_only_gone_processes_used_are_retired() {
    let mut s = session(Retention::LiveOnly);
    s.apply(&alloc(10, 0x10, 1, 7));
    s.apply(&alloc(20, 0x10, 1, 7));
    s.apply(&alloc(20, 0x20, 1, 8));
    s.apply(&HeapEvent::Exit { tgid: 20 });
    assert_eq!(s.retire_unused_stacks(), [8], "10 still uses 7");
    assert!(s.retire_unused_stacks().is_empty(), "retired once");
}

#[test]
fn a_process_let_go_is_ignored_until_traced_again_or_a_new_image() {
    let mut s = Session::new(TrackerConfig::default(), Retention::LiveOnly);
    let alloc = |ptr| HeapEvent::Alloc {
        task: Task { tgid: 10, tid: 10 },
        ptr,
        size: 100,
        site: RawSite { stack: 7 },
        time_ns: 0,
    };
    s.apply(&alloc(1));
    s.forget_process(10);
    s.apply(&alloc(2));
    assert!(s.process(10).is_none(), "a late record of a process let go");
    s.trace_again(10);
    s.apply(&alloc(3));
    assert_eq!(s.process(10).map(|(p, _)| p.live_blocks()), Some(1));
    s.forget_process(10);
    s.apply(&HeapEvent::Exec { tgid: 10 });
    s.apply(&alloc(4));
    assert_eq!(
        s.process(10).map(|(p, _)| p.live_blocks()),
        Some(1),
        "a new image"
    );
}
