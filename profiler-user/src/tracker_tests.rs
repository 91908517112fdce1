//! Unit and property tests of the tracker against a reference model.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::hashing::FoldHasher;

const TGID: u32 = 100;

fn task(tid: u32) -> Task {
    Task { tgid: TGID, tid }
}

fn site(stack: u64) -> RawSite {
    RawSite { stack }
}

fn alloc(tid: u32, ptr: u64, size: u64) -> HeapEvent {
    HeapEvent::Alloc {
        task: task(tid),
        ptr,
        size,
        site: site(0x400),
        time_ns: 0,
    }
}

fn free(tid: u32, ptr: u64) -> HeapEvent {
    HeapEvent::Free {
        task: task(tid),
        ptr,
    }
}

fn run(events: &[HeapEvent]) -> Tracker {
    let mut tracker = Tracker::new(TrackerConfig::default());
    for event in events {
        tracker.apply(event);
    }
    tracker
}

#[test]
fn malloc_and_free_balance() {
    let t = run(&[alloc(1, 0x10, 100), alloc(1, 0x20, 50), free(1, 0x10)]);
    let p = t.process(TGID).expect("process tracked");
    assert_eq!((p.live_bytes(), p.live_blocks()), (50, 1));
    let c = p.counters();
    assert_eq!(
        (c.allocs, c.frees, c.bytes_allocated, c.bytes_freed),
        (2, 1, 150, 100)
    );
}

#[test]
fn frees_of_blocks_from_before_tracing_are_told_apart_from_misses() {
    let mut t = Tracker::new(TrackerConfig {
        copy_on_fork: true,
        ..TrackerConfig::default()
    });
    let free_in = |tgid: u32, ptr: u64| HeapEvent::Free {
        task: Task { tgid, tid: tgid },
        ptr,
    };
    // 1 ran before tracing began; 2 is its fork, a copy of a partial heap.
    t.apply(&free_in(1, 0x10));
    t.apply(&HeapEvent::Fork {
        child: 2,
        parent: 1,
        shares_memory: false,
    });
    t.apply(&free_in(2, 0x20));
    // 3 is traced from its exec, and so is its fork 4.
    t.apply(&HeapEvent::Exec { tgid: 3 });
    t.apply(&HeapEvent::Fork {
        child: 4,
        parent: 3,
        shares_memory: false,
    });
    t.apply(&free_in(3, 0x30));
    t.apply(&free_in(4, 0x40));
    // 5 was seen exec'ing, then attached late (tiers' escalation).
    t.apply(&HeapEvent::Exec { tgid: 5 });
    t.note_attached_late(5);
    t.apply(&free_in(5, 0x50));
    // (unmatched, of them before tracing); a copy does not take its parent's misses.
    for (tgid, frees) in [
        (1, (1, 1)),
        (2, (1, 1)),
        (3, (1, 0)),
        (4, (1, 0)),
        (5, (1, 1)),
    ] {
        let c = t.process(tgid).expect("tracked").counters();
        assert_eq!(
            (c.unmatched_frees, c.pretrace_frees),
            frees,
            "process {tgid}"
        );
    }
    t.apply(&HeapEvent::Exit { tgid: 3 });
    t.apply(&HeapEvent::Exec { tgid: 6 });
    let mut known: Vec<u32> = t.known().collect();
    known.sort_unstable();
    assert_eq!(known, [1, 2, 4, 5, 6], "6 without state yet");
}

#[test]
fn a_vfork_childs_calls_before_its_exec_are_its_parents() {
    let mut t = Tracker::new(TrackerConfig {
        copy_on_fork: true,
        ..TrackerConfig::default()
    });
    let on = |tgid: u32| Task { tgid, tid: tgid };
    t.apply(&HeapEvent::Exec { tgid: 1 });
    t.apply(&HeapEvent::Fork {
        child: 2,
        parent: 1,
        shares_memory: true,
    });
    // The child allocates in the memory it shares, then execs; its parent
    // frees that block later.
    t.apply(&HeapEvent::Alloc {
        task: on(2),
        ptr: 0x10,
        size: 32,
        site: site(1),
        time_ns: 0,
    });
    t.apply(&HeapEvent::Exec { tgid: 2 });
    t.apply(&HeapEvent::Free {
        task: on(1),
        ptr: 0x10,
    });
    let parent = t.process(1).expect("the parent").counters();
    assert_eq!(
        (parent.allocs, parent.frees, parent.unmatched_frees),
        (1, 1, 0)
    );
    // After its exec the child's calls are its own.
    t.apply(&HeapEvent::Alloc {
        task: on(2),
        ptr: 0x20,
        size: 8,
        site: site(1),
        time_ns: 0,
    });
    assert_eq!(t.process(2).map(ProcessState::live_bytes), Some(8));
    assert_eq!(t.process(1).map(ProcessState::live_bytes), Some(0));
}

#[test]
fn unmatched_free_never_goes_negative() {
    let t = run(&[alloc(1, 0x10, 8), free(1, 0x99)]);
    let p = t.process(TGID).expect("process tracked");
    assert_eq!(p.live_bytes(), 8);
    assert_eq!(p.counters().frees, 0);
    assert_eq!(p.counters().unmatched_frees, 1);
}

#[test]
fn an_exiting_threads_frees_of_blocks_not_live_are_its_cache_not_unmatched() {
    let exiting_free = |ptr| HeapEvent::ExitingFree { task: task(2), ptr };
    let t = run(&[
        alloc(1, 0x10, 8),
        alloc(1, 0x20, 16),
        free(1, 0x20),
        exiting_free(0x10),
        exiting_free(0x20),
        exiting_free(0x30),
    ]);
    let p = t.process(TGID).expect("process tracked");
    assert_eq!((p.live_bytes(), p.live_blocks()), (0, 0));
    let c = p.counters();
    assert_eq!((c.frees, c.bytes_freed), (2, 24), "a live block is freed");
    assert_eq!((c.thread_cache_frees, c.unmatched_frees), (2, 0));
    assert!(!p.inexact());
    assert_eq!(t.live_blocks(), 0);
}

#[test]
fn failed_realloc_restores_the_old_block() {
    let t = run(&[
        alloc(1, 0x10, 8),
        HeapEvent::ReallocFree {
            task: task(1),
            ptr: 0x10,
        },
        HeapEvent::ReallocFail {
            task: task(1),
            ptr: 0x10,
        },
    ]);
    let p = t.process(TGID).expect("process tracked");
    assert_eq!((p.live_bytes(), p.live_blocks()), (8, 1));
    assert_eq!((p.counters().allocs, p.counters().frees), (1, 0));
    assert_eq!(p.sites()[0].live_bytes, 8);
}

#[test]
fn exit_and_exec_hand_back_the_state() {
    let mut t = Tracker::new(TrackerConfig::default());
    t.apply(&alloc(1, 0x10, 8));
    let finished = t
        .apply(&HeapEvent::Exec { tgid: TGID })
        .expect("state handed back");
    assert_eq!(finished.reason, EndReason::Exec);
    assert_eq!(finished.state.live_bytes(), 8);
    assert!(t.process(TGID).is_none());
    t.apply(&alloc(1, 0x10, 4));
    let finished = t
        .apply(&HeapEvent::Exit { tgid: TGID })
        .expect("state handed back");
    assert_eq!(
        (finished.reason, finished.state.live_bytes()),
        (EndReason::Exit, 4)
    );
    assert!(t.apply(&HeapEvent::Exit { tgid: TGID }).is_none());
}

#[test]
fn fork_copies_the_parent_only_when_asked() {
    for copy_on_fork in [false, true] {
        let mut t = Tracker::new(TrackerConfig {
            copy_on_fork,
            ..TrackerConfig::default()
        });
        t.apply(&alloc(1, 0x10, 8));
        t.apply(&HeapEvent::Fork {
            child: 200,
            parent: TGID,
            shares_memory: false,
        });
        let child = t.process(200).map(|p| p.live_bytes());
        assert_eq!(child, copy_on_fork.then_some(8));
    }
}

#[test]
fn sites_are_kept_apart() {
    let mut t = Tracker::new(TrackerConfig::default());
    for (ptr, caller) in [(0x10, 1), (0x20, 2), (0x30, 2)] {
        t.apply(&HeapEvent::Alloc {
            task: task(1),
            ptr,
            size: 10,
            site: site(caller),
            time_ns: 0,
        });
    }
    let p = t.process(TGID).expect("process tracked");
    let mut live: Vec<_> = p
        .sites()
        .iter()
        .map(|s| (s.site.stack, s.live_bytes))
        .collect();
    live.sort_unstable();
    assert_eq!(live, vec![(1, 10), (2, 20)]);
}

#[test]
fn caps_refuse_blocks_and_count_them() {
    let mut t = Tracker::new(TrackerConfig {
        max_live_per_process: 2,
        max_live_total: 3,
        ..TrackerConfig::default()
    });
    for ptr in [0x10, 0x20, 0x30] {
        t.apply(&alloc(1, ptr, 8));
    }
    let p = t.process(TGID).expect("process tracked");
    assert_eq!((p.live_blocks(), p.counters().refused_blocks), (2, 1));
    assert_eq!(p.counters().allocs, 3);
    assert!(p.inexact());
    t.apply(&HeapEvent::Alloc {
        task: Task { tgid: 7, tid: 7 },
        ptr: 0x10,
        size: 8,
        site: site(1),
        time_ns: 0,
    });
    t.apply(&HeapEvent::Alloc {
        task: Task { tgid: 8, tid: 8 },
        ptr: 0x10,
        size: 8,
        site: site(1),
        time_ns: 0,
    });
    assert_eq!(t.live_blocks(), 3, "the total cap holds");
    assert_eq!(t.process(8).map(|p| p.counters().refused_blocks), Some(1));
    t.apply(&HeapEvent::Exit { tgid: TGID });
    assert_eq!(t.live_blocks(), 1);
}

#[test]
fn aged_blocks_are_summed_per_site() {
    let mut t = Tracker::new(TrackerConfig::default());
    const SECOND: u64 = 1_000_000_000;
    for (ptr, time_ns) in [(0x10, SECOND), (0x20, 2 * SECOND), (0x30, 3 * SECOND)] {
        t.apply(&HeapEvent::Alloc {
            task: task(1),
            ptr,
            size: 10,
            site: site(1),
            time_ns,
        });
    }
    let p = t.process(TGID).expect("process tracked");
    // Times are kept to the grain, rounded up: the oldest is 1 s, a little later.
    let oldest_ns = SECOND.div_ceil(TIME_GRAIN_NS) * TIME_GRAIN_NS;
    assert!((SECOND..SECOND + TIME_GRAIN_NS).contains(&oldest_ns));
    let aged = |bytes, blocks| Aged {
        bytes,
        blocks,
        oldest_ns,
    };
    assert_eq!(
        p.aged_by_site(2_500_000_000),
        HashMap::from([(0, aged(20, 2))])
    );
    assert_eq!(p.aged_by_site(u64::MAX), HashMap::from([(0, aged(30, 3))]));
    assert!(p.aged_by_site(SECOND).is_empty(), "not older than itself");
    assert!(p.memory_bytes() > 0);
    assert!(t.memory_bytes() >= p.memory_bytes());
}

/// A user-level allocator call, as a program makes it.
#[derive(Clone, Debug)]
enum Call {
    Malloc {
        tid: u32,
        size: u64,
    },
    Free {
        tid: u32,
        pick: usize,
    },
    FreeUnknown {
        tid: u32,
    },
    Realloc {
        tid: u32,
        pick: Option<usize>,
        size: u64,
        fails: bool,
    },
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (1..4u32, 0..5000u64).prop_map(|(tid, size)| Call::Malloc { tid, size }),
        (1..4u32, any::<usize>()).prop_map(|(tid, pick)| Call::Free { tid, pick }),
        (1..4u32).prop_map(|tid| Call::FreeUnknown { tid }),
        (
            1..4u32,
            proptest::option::of(any::<usize>()),
            0..5000u64,
            any::<bool>()
        )
            .prop_map(|(tid, pick, size, fails)| Call::Realloc {
                tid,
                pick,
                size,
                fails,
            }),
    ]
}

/// The reference: valgrind's rules applied directly to a map of live blocks,
/// with an allocator that reuses the lowest freed address.
#[derive(Default)]
struct Model {
    live: BTreeMap<u64, u64>,
    free_addrs: Vec<u64>,
    next_addr: u64,
    allocs: u64,
    frees: u64,
    bytes: u64,
    unmatched: u64,
}

impl Model {
    fn address(&mut self) -> u64 {
        self.free_addrs.sort_unstable_by(|a, b| b.cmp(a));
        self.free_addrs.pop().unwrap_or_else(|| {
            self.next_addr += 16;
            self.next_addr
        })
    }

    fn pick(&self, pick: usize) -> Option<u64> {
        let n = self.live.len();
        (n > 0).then(|| *self.live.keys().nth(pick % n).expect("index in range"))
    }

    fn release(&mut self, ptr: u64) {
        self.live.remove(&ptr);
        self.free_addrs.push(ptr);
        self.frees += 1;
    }

    /// Applies a call and returns the events the kernel side would emit for it.
    fn call(&mut self, call: &Call) -> Vec<HeapEvent> {
        match *call {
            Call::Malloc { tid, size } => {
                let ptr = self.address();
                self.live.insert(ptr, size);
                self.allocs += 1;
                self.bytes += size;
                vec![alloc(tid, ptr, size)]
            }
            Call::Free { tid, pick } => match self.pick(pick) {
                Some(ptr) => {
                    self.release(ptr);
                    vec![free(tid, ptr)]
                }
                None => vec![],
            },
            Call::FreeUnknown { tid } => {
                self.unmatched += 1;
                vec![free(tid, u64::MAX - 15)]
            }
            Call::Realloc {
                tid,
                pick,
                size,
                fails,
            } => self.realloc(tid, pick.and_then(|p| self.pick(p)), size, fails),
        }
    }

    fn realloc(&mut self, tid: u32, old: Option<u64>, size: u64, fails: bool) -> Vec<HeapEvent> {
        let mut events = Vec::new();
        if let Some(ptr) = old {
            events.push(HeapEvent::ReallocFree {
                task: task(tid),
                ptr,
            });
        }
        match old {
            Some(ptr) if fails && size > 0 => {
                events.push(HeapEvent::ReallocFail {
                    task: task(tid),
                    ptr,
                });
            }
            None if fails && size > 0 => {}
            Some(ptr) if size == 0 => self.release(ptr),
            _ => {
                if let Some(ptr) = old {
                    self.release(ptr);
                }
                let ptr = self.address();
                self.live.insert(ptr, size);
                self.allocs += 1;
                self.bytes += size;
                events.push(alloc(tid, ptr, size));
            }
        }
        events
    }
}

#[test]
fn a_live_block_entry_takes_20_bytes() {
    assert_eq!(size_of::<(BlockKey, LiveBlock)>(), 20);
}

#[test]
fn aligned_addresses_spread_over_the_low_bits_of_their_hashes() {
    let hash = |ptr: u64| {
        let mut hasher = FoldHasher::default();
        BlockKey::new(ptr).hash(&mut hasher);
        hasher.finish()
    };
    let buckets: std::collections::HashSet<u64> = (0..4096u64)
        .map(|i| hash(0x5555_0000_0000 + i * 16) & 4095)
        .collect();
    assert!(
        buckets.len() > 2048,
        "{} of 4096 buckets used",
        buckets.len()
    );
}

proptest! {
    #[test]
    fn a_block_key_keeps_its_address(ptr in any::<u64>()) {
        prop_assert_eq!(BlockKey::new(ptr).ptr(), ptr);
    }

    #[test]
    fn tracker_matches_the_reference_model(calls in proptest::collection::vec(call(), 0..300)) {
        let mut model = Model::default();
        let mut tracker = Tracker::new(TrackerConfig::default());
        for c in &calls {
            for event in model.call(c) {
                tracker.apply(&event);
            }
        }
        let (live_bytes, live_blocks, counters) = match tracker.process(TGID) {
            Some(p) => (p.live_bytes(), p.live_blocks(), p.counters()),
            None => (0, 0, Counters::default()),
        };
        prop_assert_eq!(live_bytes, model.live.values().sum::<u64>());
        prop_assert_eq!(live_blocks, model.live.len() as u64);
        prop_assert_eq!(counters.allocs, model.allocs);
        prop_assert_eq!(counters.frees, model.frees);
        prop_assert_eq!(counters.bytes_allocated, model.bytes);
        prop_assert_eq!(counters.unmatched_frees, model.unmatched);
        prop_assert_eq!(tracker.live_blocks(), model.live.len() as u64);
        let site_live: u64 = tracker.process(TGID).map_or(0, |p| p.sites().iter().map(|s| s.live_bytes).sum());
        prop_assert_eq!(site_live, live_bytes);
    }
}

#[test]
fn shard_ends_split_the_hash_space_by_weights_doubling_over_the_shards() {
    let parts: Vec<u64> = SHARD_ENDS
        .iter()
        .scan(0, |start, &end| Some(end - std::mem::replace(start, end)))
        .collect();
    assert_eq!(SHARD_ENDS[SHARDS - 1], 1 << 32);
    for pair in parts.windows(2) {
        let ratio = pair[1] as f64 / pair[0] as f64;
        assert!((ratio - 2f64.powf(1.0 / 16.0)).abs() < 1e-6, "{ratio}");
    }
}

#[test]
fn live_block_tables_stay_near_their_mean_size_at_any_count() {
    let mut live = LiveBlocks::default();
    let block = LiveBlock::new(32, 0, 0);
    let entry = size_of::<(BlockKey, LiveBlock)>() as f64;
    let mut inserted = 0u64;
    // Equal shards took 44 bytes a block at 1,000,000 and 24 at 1,800,000.
    for count in [300_000u64, 600_000, 1_000_000, 1_400_000, 1_800_000] {
        while inserted < count {
            live.insert(0x7f00_0000_0000 + inserted * 48, block);
            inserted += 1;
        }
        let per_block = live.memory_bytes() as f64 / count as f64;
        assert!(
            per_block < (entry + 1.0) * 1.75 && per_block > (entry + 1.0) * 1.3,
            "{per_block:.1} bytes a block at {count}"
        );
    }
}

#[test]
fn live_blocks_spread_over_every_shard_and_stay_counted() {
    let mut live = LiveBlocks::default();
    let block = LiveBlock::new(16, 0, 0);
    // Consecutive 16-byte-aligned addresses, as a bump of small blocks gives.
    for i in 0..16_000u64 {
        assert_eq!(live.insert(0x5555_0000_0000 + i * 16, block), None);
    }
    assert_eq!(live.insert(0x5555_0000_0000, block), Some(block));
    assert_eq!(live.len(), 16_000);
    // Shard i holds a part in proportion to 2^(i/16): from 708 to 1,352.
    for (i, shard) in live.shards.iter().enumerate() {
        let expected = 16_000.0 * 2f64.powf(i as f64 / 16.0) / 22.59;
        assert!(
            (shard.len() as f64 - expected).abs() < expected * 0.2,
            "{} in shard {i}, not about {expected:.0}",
            shard.len()
        );
    }
    assert_eq!(live.remove(0x5555_0000_0010), Some(block));
    assert_eq!(live.remove(0x5555_0000_0010), None);
    assert_eq!((live.len(), live.iter().count()), (15_999, 15_999));
    let entry = size_of::<(BlockKey, LiveBlock)>() as u64;
    assert!(
        live.memory_bytes() > entry * 15_999,
        "{}",
        live.memory_bytes()
    );
}

#[test]
fn a_burst_freed_gives_its_tables_memory_back() {
    let mut t = Tracker::new(TrackerConfig::default());
    let blocks = 300_000u64;
    let address = |i: u64| 0x7f00_0000_0000 + i * 32;
    t.apply(&alloc(1, address(0), 8));
    let before = t.memory_bytes();
    for i in 1..=blocks {
        t.apply(&alloc(1, address(i), 8));
    }
    let peak = t.memory_bytes();
    assert!(peak > before + blocks * 20, "{peak} bytes at the peak");
    for i in 1..=blocks {
        t.apply(&free(1, address(i)));
    }
    let after = t.memory_bytes();
    // Shards emptied at their smallest capacity are kept (see SMALLEST_TABLE).
    let smallest = table_bytes(SMALLEST_TABLE, size_of::<(BlockKey, LiveBlock)>());
    assert!(
        after <= before + SHARDS as u64 * smallest,
        "{before} bytes before the burst, {peak} at its peak, {after} after"
    );
    assert_eq!(t.process(TGID).map(ProcessState::live_blocks), Some(1));
}

#[test]
fn a_shrunk_table_keeps_every_block() {
    let mut live = LiveBlocks::default();
    let block = LiveBlock::new(16, 0, 0);
    for i in 0..100_000u64 {
        live.insert(0x5555_0000_0000 + i * 16, block);
    }
    // Free all but every hundredth: the tables shrink on the way.
    for i in (0..100_000u64).filter(|i| i % 100 != 0) {
        assert_eq!(live.remove(0x5555_0000_0000 + i * 16), Some(block));
    }
    assert_eq!(live.len(), 1_000);
    for i in (0..100_000u64).step_by(100) {
        assert_eq!(
            live.remove(0x5555_0000_0000 + i * 16),
            Some(block),
            "block {i}"
        );
    }
    assert_eq!(live.len(), 0);
}

#[test]
fn blocks_of_4_gib_and_more_keep_their_exact_size() {
    let mut t = Tracker::new(TrackerConfig::default());
    let huge = 5 << 30;
    for (ptr, size) in [(0x10, huge), (0x20, u64::from(u32::MAX)), (0x30, 7)] {
        t.apply(&HeapEvent::Alloc {
            task: task(1),
            ptr,
            size,
            site: site(1),
            time_ns: 0,
        });
    }
    let total = huge + u64::from(u32::MAX) + 7;
    let p = t.process(TGID).expect("process tracked");
    assert_eq!(p.live_bytes(), total);
    assert_eq!(p.aged_by_site(u64::MAX)[&0].bytes, total);
    t.apply(&HeapEvent::ReallocFree {
        task: task(1),
        ptr: 0x10,
    });
    t.apply(&HeapEvent::ReallocFail {
        task: task(1),
        ptr: 0x10,
    });
    t.apply(&free(1, 0x20));
    let p = t.process(TGID).expect("process tracked");
    assert_eq!(
        p.live_bytes(),
        huge + 7,
        "the failed realloc's block is back whole"
    );
    assert_eq!(p.counters().bytes_freed, u64::from(u32::MAX));
    t.apply(&free(1, 0x10));
    let p = t.process(TGID).expect("process tracked");
    assert_eq!((p.live_bytes(), p.live_blocks()), (7, 1));
    assert_eq!(p.sites()[0].live_bytes, 7);
}
