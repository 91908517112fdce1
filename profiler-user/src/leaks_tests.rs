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
