//! The whole leak verdict: growth over the window, age, and lost records.
//! Pure: fed by the daemon every tick, tested with synthetic histories.
//!
//! A site is suspect when, over a full window, its live bytes grew by a robust
//! trend (the Theil–Sen slope, the median of all pairwise slopes, is positive,
//! and the last third of the window sits above the first third), and it holds
//! blocks older than `min_age`, in a process that lost no record within the
//! window (a lost free leaves a block that looks live). One spike does not
//! move the median; a cache that fills and then stays flat stops being
//! suspect once the window sees it flat; old but constant allocations never
//! grow.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::tracker::ProcessState;

/// Thresholds of the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakConfig {
    /// Time between samples.
    pub tick: Duration,
    /// How far back growth is judged.
    pub window: Duration,
    /// How old live blocks must be to count as leaked.
    pub min_age: Duration,
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(10),
            window: Duration::from_secs(600),
            min_age: Duration::from_secs(300),
        }
    }
}

impl LeakConfig {
    /// Samples in a full window (at least 3).
    pub fn samples(&self) -> usize {
        let ticks = self.window.as_nanos() / self.tick.as_nanos().max(1);
        (ticks as usize).max(3)
    }
}

/// Live bytes of one series, one sample per tick, the newest last.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: VecDeque<u64>,
}

impl History {
    /// Adds a sample, keeping at most `capacity`.
    pub fn push(&mut self, live_bytes: u64, capacity: usize) {
        if self.samples.len() == capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(live_bytes);
    }

    /// True when a full window of `capacity` samples shows robust growth.
    pub fn grows(&self, capacity: usize) -> bool {
        if self.samples.len() < capacity {
            return false;
        }
        let samples = self.to_vec();
        let third = samples.len() / 3;
        let early = median(&mut samples[..third].to_vec());
        let late = median(&mut samples[samples.len() - third..].to_vec());
        late > early && theil_sen_slope(&samples) > 0.0
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<u64> {
        self.to_vec()
    }

    /// Samples held (at most the capacity pushed with).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<u64> {
        self.samples.back().copied()
    }

    /// The sample `ticks` before the newest; 0 before the first (a site's
    /// history starts when it first holds live bytes).
    pub fn ago(&self, ticks: usize) -> u64 {
        self.samples
            .len()
            .checked_sub(ticks + 1)
            .map_or(0, |index| self.samples[index])
    }

    /// Growth in bytes per tick (Theil–Sen), 0 with fewer than 2 samples.
    pub fn slope_per_tick(&self) -> f64 {
        theil_sen_slope(&self.to_vec())
    }

    fn to_vec(&self) -> Vec<u64> {
        self.samples.iter().copied().collect()
    }
}

/// The median of all pairwise slopes (i < j): robust to outliers.
pub fn theil_sen_slope(samples: &[u64]) -> f64 {
    let mut slopes = Vec::with_capacity(samples.len() * samples.len().saturating_sub(1) / 2);
    for (i, &a) in samples.iter().enumerate() {
        for (j, &b) in samples.iter().enumerate().skip(i + 1) {
            slopes.push((b as f64 - a as f64) / (j - i) as f64);
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_unstable_by(f64::total_cmp);
    let mid = slopes.len() / 2;
    if !slopes.len().is_multiple_of(2) {
        slopes[mid]
    } else {
        (slopes[mid - 1] + slopes[mid]) / 2.0
    }
}

fn median(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

/// Histories of every site (by index) of every process (by tgid).
#[derive(Debug, Default)]
pub struct LeakDetector {
    config: LeakConfig,
    sites: HashMap<u32, HashMap<u32, History>>,
    processes: HashMap<u32, History>,
}

impl LeakDetector {
    /// A detector with no history.
    pub fn new(config: LeakConfig) -> Self {
        Self {
            config,
            sites: HashMap::new(),
            processes: HashMap::new(),
        }
    }

    /// The thresholds in force.
    pub fn config(&self) -> LeakConfig {
        self.config
    }

    /// Replaces the thresholds; histories are kept (trimmed on the next samples).
    pub fn set_config(&mut self, config: LeakConfig) {
        self.config = config;
    }

    /// Records this tick's live bytes of one site. A site without live bytes
    /// gets no history, and loses it once a whole window was empty.
    pub fn sample_site(&mut self, tgid: u32, site: u32, live_bytes: u64) {
        let capacity = self.config.samples();
        let sites = self.sites.entry(tgid).or_default();
        if live_bytes == 0 && !sites.contains_key(&site) {
            return;
        }
        let history = sites.entry(site).or_default();
        history.push(live_bytes, capacity);
        if history.samples.len() == capacity && history.samples.iter().all(|&s| s == 0) {
            sites.remove(&site);
        }
    }

    /// Records this tick's live bytes of one process.
    pub fn sample_process(&mut self, tgid: u32, live_bytes: u64) {
        let capacity = self.config.samples();
        self.processes
            .entry(tgid)
            .or_default()
            .push(live_bytes, capacity);
    }

    /// Records this tick's live bytes of a process and of each of its sites.
    pub fn sample(&mut self, tgid: u32, state: &ProcessState) {
        self.sample_process(tgid, state.live_bytes());
        for (index, site) in state.sites().iter().enumerate() {
            self.sample_site(tgid, index as u32, site.live_bytes);
        }
    }

    /// The verdict on process `tgid`, whose state is `state`, at `now_ns`.
    pub fn verdict(&self, tgid: u32, state: &ProcessState, now_ns: u64) -> Verdict<'_> {
        Verdict {
            detector: self,
            tgid,
            old_before_ns: now_ns.saturating_sub(nanos(self.config.min_age)),
            trusted: !state.lost_since(now_ns.saturating_sub(nanos(self.config.window))),
        }
    }

    /// True when the site's live bytes grow robustly over a full window.
    pub fn site_grows(&self, tgid: u32, site: u32) -> bool {
        self.sites
            .get(&tgid)
            .and_then(|sites| sites.get(&site))
            .is_some_and(|h| h.grows(self.config.samples()))
    }

    /// The site's live-bytes growth in bytes per second over the window.
    pub fn site_growth_rate(&self, tgid: u32, site: u32) -> f64 {
        let per_tick = self
            .sites
            .get(&tgid)
            .and_then(|sites| sites.get(&site))
            .map_or(0.0, History::slope_per_tick);
        per_tick / self.config.tick.as_secs_f64()
    }

    /// The history of the process's live bytes, one sample a tick.
    pub fn process_history(&self, tgid: u32) -> Option<&History> {
        self.processes.get(&tgid)
    }

    /// The process's live-bytes growth in bytes per second over the window.
    pub fn process_growth_rate(&self, tgid: u32) -> f64 {
        let per_tick = self
            .processes
            .get(&tgid)
            .map_or(0.0, History::slope_per_tick);
        per_tick / self.config.tick.as_secs_f64()
    }

    /// Drops everything about a process (it exited or exec'd).
    pub fn forget_process(&mut self, tgid: u32) {
        self.sites.remove(&tgid);
        self.processes.remove(&tgid);
    }

    /// The growth of a site's live bytes over the last `ticks` ticks: its
    /// newest sample less the one `ticks` before.
    pub fn site_growth_over(&self, tgid: u32, site: u32, ticks: usize) -> i64 {
        let Some(history) = self.sites.get(&tgid).and_then(|sites| sites.get(&site)) else {
            return 0;
        };
        let now = history.last().unwrap_or(0);
        now as i64 - history.ago(ticks) as i64
    }

    /// How many ticks back the process's history reaches.
    pub fn ticks_known(&self, tgid: u32) -> usize {
        self.processes
            .get(&tgid)
            .map_or(0, |history| history.len().saturating_sub(1))
    }

    /// Number of site histories kept.
    pub fn tracked_sites(&self) -> usize {
        self.sites.values().map(HashMap::len).sum()
    }
}

/// The leak verdict on one process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Verdict<'a> {
    detector: &'a LeakDetector,
    tgid: u32,
    /// Blocks allocated before this are old enough to count as leaked.
    old_before_ns: u64,
    /// False when the process lost records within the window.
    trusted: bool,
}

impl Verdict<'_> {
    /// True when site `index`, whose oldest live block was allocated at
    /// `oldest_ns`, is a leak suspect.
    pub fn site_is_suspect(&self, index: u32, oldest_ns: u64) -> bool {
        self.trusted && oldest_ns < self.old_before_ns && self.detector.site_grows(self.tgid, index)
    }

    /// The live bytes older than `min_age` at the process's suspect sites.
    pub fn suspect_bytes(&self, state: &ProcessState) -> u64 {
        if !self.trusted {
            return 0;
        }
        let any_grows =
            (0..state.sites().len() as u32).any(|index| self.detector.site_grows(self.tgid, index));
        if !any_grows {
            return 0;
        }
        state
            .aged_by_site(self.old_before_ns)
            .into_iter()
            .filter(|&(index, aged)| self.site_is_suspect(index, aged.oldest_ns))
            .map(|(_, aged)| aged.bytes)
            .sum()
    }

    /// Growth of site `index`'s live bytes over the window, bytes per second.
    pub fn site_growth_rate(&self, index: u32) -> f64 {
        self.detector.site_growth_rate(self.tgid, index)
    }

    /// Growth of the process's live bytes over the window, bytes per second.
    pub fn process_growth_rate(&self) -> f64 {
        self.detector.process_growth_rate(self.tgid)
    }

    /// The ticks of a span of `span` the process's history covers: at most
    /// a tick more than asked (the span rounded up), at most what is known.
    pub fn ticks_of(&self, span: Duration) -> usize {
        let tick = nanos(self.detector.config.tick).max(1);
        let asked = nanos(span).div_ceil(tick) as usize;
        asked.min(self.detector.ticks_known(self.tgid))
    }

    /// The time `ticks` ticks span.
    pub fn span_of(&self, ticks: usize) -> Duration {
        self.detector.config.tick * ticks as u32
    }

    /// Growth of site `index`'s live bytes over the last `ticks` ticks.
    pub fn site_growth_over(&self, index: u32, ticks: usize) -> i64 {
        self.detector.site_growth_over(self.tgid, index, ticks)
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "leaks_tests.rs"]
mod tests;
