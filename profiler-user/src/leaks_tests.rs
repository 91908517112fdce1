//! The leak rule on synthetic histories: a leak, a plateauing cache, old
//! constant blocks, a freed burst, one spike.

use super::*;

const WINDOW: usize = 12;

fn config() -> LeakConfig {
    LeakConfig {
        tick: Duration::from_secs(1),
        window: Duration::from_secs(WINDOW as u64),
        min_age: Duration::from_secs(5),
    }
}

fn detector_fed(samples: &[u64]) -> LeakDetector {
    let mut d = LeakDetector::new(config());
    for &s in samples {
        d.sample_site(1, 0, s);
        d.sample_process(1, s);
    }
    d
}

#[test]
fn window_length_in_samples() {
    assert_eq!(config().samples(), WINDOW);
    assert_eq!(LeakConfig::default().samples(), 60);
}

#[test]
fn steady_growth_is_suspect() {
    let leak: Vec<u64> = (0..WINDOW as u64).map(|i| 1000 + 100 * i).collect();
    let d = detector_fed(&leak);
    assert!(d.site_grows(1, 0));
    assert!((d.process_growth_rate(1) - 100.0).abs() < 1e-9);
    assert!((d.site_growth_rate(1, 0) - 100.0).abs() < 1e-9);
    assert_eq!(d.site_growth_rate(1, 7), 0.0);
}

#[test]
fn growth_under_churn_is_suspect() {
    let noisy: Vec<u64> = (0..WINDOW as u64)
        .map(|i| 5000 + 100 * i + if i % 2 == 0 { 700 } else { 0 })
        .collect();
    assert!(detector_fed(&noisy).site_grows(1, 0));
}

#[test]
fn a_cache_that_plateaus_stops_being_suspect() {
    let filling: Vec<u64> = (1..=WINDOW as u64).map(|i| 100 * i).collect();
    let mut d = detector_fed(&filling);
    assert!(d.site_grows(1, 0), "suspect while filling");
    for _ in 0..WINDOW {
        d.sample_site(1, 0, 100 * WINDOW as u64);
    }
    assert!(!d.site_grows(1, 0), "flat for a whole window");
}

#[test]
fn constant_and_freed_bursts_are_not_suspect() {
    assert!(!detector_fed(&[4096; WINDOW]).site_grows(1, 0));
    let mut burst = vec![100u64; WINDOW];
    burst[4] = 1_000_000;
    burst[5] = 1_000_000;
    assert!(!detector_fed(&burst).site_grows(1, 0));
    let mut spike_at_end = vec![100u64; WINDOW];
    spike_at_end[WINDOW - 1] = 1_000_000;
    assert!(!detector_fed(&spike_at_end).site_grows(1, 0));
}

#[test]
fn a_partial_window_is_never_suspect() {
    let short: Vec<u64> = (0..WINDOW as u64 - 1).map(|i| 100 * i).collect();
    assert!(!detector_fed(&short).site_grows(1, 0));
}

#[test]
fn forgetting_a_process_drops_its_history() {
    let leak: Vec<u64> = (0..WINDOW as u64).map(|i| 100 * i).collect();
    let mut d = detector_fed(&leak);
    d.forget_process(1);
    assert!(!d.site_grows(1, 0));
    assert_eq!(d.tracked_sites(), 0);
    assert_eq!(d.process_growth_rate(1), 0.0);
}

#[test]
fn theil_sen_ignores_an_outlier() {
    assert_eq!(theil_sen_slope(&[0, 1, 2, 3, 1000, 5, 6]), 1.0);
    assert_eq!(theil_sen_slope(&[7]), 0.0);
    assert_eq!(theil_sen_slope(&[]), 0.0);
}

#[test]
fn empty_sites_keep_no_history() {
    let mut d = LeakDetector::new(config());
    d.sample_site(1, 0, 0);
    assert_eq!(d.tracked_sites(), 0);
    d.sample_site(1, 0, 10);
    for _ in 0..WINDOW {
        d.sample_site(1, 0, 0);
    }
    assert_eq!(d.tracked_sites(), 0, "a window of zeros is forgotten");
}

mod verdict {
    //! The verdict's rules taken together: the process's suspect bytes are
    //! exactly the old bytes of the sites it calls suspect, on any history.

    use proptest::prelude::*;

    use super::*;
    use crate::{
        events::{HeapEvent, RawSite, Task},
        tracker::{Tracker, TrackerConfig},
    };

    const SECOND: u64 = 1_000_000_000;
    const TGID: u32 = 7;

    /// One tick of a process's life: blocks allocated at a site, blocks freed.
    #[derive(Clone, Debug)]
    struct Tick {
        allocs: Vec<(u64, u64)>,
        frees: usize,
    }

    fn tick() -> impl Strategy<Value = Tick> {
        (prop::collection::vec((0..4u64, 1..500u64), 0..4), 0..3usize)
            .prop_map(|(allocs, frees)| Tick { allocs, frees })
    }

    /// Runs the ticks through a tracker and a detector; records are lost at
    /// tick `lost_at`, if any. Returns both and the last tick's time.
    fn run(ticks: &[Tick], lost_at: Option<usize>) -> (Tracker, LeakDetector, u64) {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut detector = LeakDetector::new(config());
        let mut live = Vec::new();
        let mut next_ptr = 0x1000;
        let mut now = 0;
        for (index, tick) in ticks.iter().enumerate() {
            now = index as u64 * SECOND;
            let task = Task {
                tgid: TGID,
                tid: TGID,
            };
            for &(stack, size) in &tick.allocs {
                tracker.apply(&HeapEvent::Alloc {
                    task,
                    ptr: next_ptr,
                    size,
                    site: RawSite { stack },
                    time_ns: now,
                });
                live.push(next_ptr);
                next_ptr += 0x1000;
            }
            for _ in 0..tick.frees.min(live.len()) {
                let ptr = live.remove(0);
                tracker.apply(&HeapEvent::Free { task, ptr });
            }
            if lost_at == Some(index) {
                tracker.note_lost(TGID, 1, now);
            }
            if let Some(state) = tracker.process(TGID) {
                detector.sample(TGID, state);
            }
        }
        (tracker, detector, now)
    }

    proptest! {
        #[test]
        fn suspect_bytes_are_the_old_bytes_of_the_suspect_sites(
            ticks in prop::collection::vec(tick(), 1..40),
            lost_at in proptest::option::of(0..40usize),
        ) {
            let (tracker, detector, now) = run(&ticks, lost_at);
            let Some(state) = tracker.process(TGID) else {
                return Ok(());
            };
            let verdict = detector.verdict(TGID, state, now);
            let min_age = config().min_age.as_nanos() as u64;
            let old: u64 = state
                .sites_holding(now.saturating_sub(min_age))
                .iter()
                .filter(|held| verdict.site_is_suspect(held.index, held.oldest_ns))
                .map(|held| held.stats.live_bytes)
                .sum();
            prop_assert_eq!(verdict.suspect_bytes(state), old);
            prop_assert!(old <= state.live_bytes());
            let window = config().window.as_nanos() as u64;
            let lost_within_window =
                lost_at.is_some_and(|at| at < ticks.len() && at as u64 * SECOND + window > now);
            if lost_within_window {
                prop_assert_eq!(verdict.suspect_bytes(state), 0, "records lost within the window");
            }
        }
    }

    #[test]
    fn a_young_block_at_a_growing_site_is_not_suspect() {
        let leak: Vec<Tick> = (0..WINDOW)
            .map(|_| Tick {
                allocs: vec![(1, 100)],
                frees: 0,
            })
            .collect();
        let (tracker, detector, now) = run(&leak, None);
        let state = tracker.process(TGID).expect("tracked");
        let verdict = detector.verdict(TGID, state, now);
        assert!(detector.site_grows(TGID, 0));
        assert!(verdict.site_is_suspect(0, 0), "its first block is old");
        assert!(!verdict.site_is_suspect(0, now), "a block of now is young");
        let old_blocks = (now - config().min_age.as_nanos() as u64) / SECOND;
        assert_eq!(verdict.suspect_bytes(state), 100 * old_blocks);
    }
}

#[test]
fn growth_since_a_time_is_the_newest_sample_less_the_one_then() {
    let mut d = LeakDetector::new(config());
    for (tick, live) in [0u64, 0, 100, 300, 300, 700].into_iter().enumerate() {
        d.sample_process(1, 1000 + tick as u64);
        d.sample_site(1, 0, live);
        d.sample_site(1, 1, 500);
    }
    let verdict = d.verdict(1, &ProcessState::default(), 0);
    assert_eq!(
        verdict.ticks_of(Duration::from_millis(2500)),
        3,
        "rounded up"
    );
    assert_eq!(
        verdict.ticks_of(Duration::from_secs(60)),
        5,
        "what is known"
    );
    assert_eq!(verdict.span_of(3), Duration::from_secs(3));
    assert_eq!(verdict.site_growth_over(0, 1), 400);
    assert_eq!(verdict.site_growth_over(0, 3), 600);
    assert_eq!(
        verdict.site_growth_over(0, 5),
        700,
        "before its first live byte a site held none"
    );
    assert_eq!(verdict.site_growth_over(1, 5), 0, "steady");
    assert_eq!(verdict.site_growth_over(9, 5), 0, "unknown");
}
