//! The daemon's tiers: every process is watched from the kernel for free
//! (tier 0: its anonymous resident memory, each tick), and traced exactly
//! (tier 1) only where that memory keeps growing, for a bounded time that
//! is extended while it still grows. Pure: samples in, decisions out.

use std::{collections::HashMap, time::Duration};

use crate::leaks::{History, theil_sen_slope};

/// How escalation behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierConfig {
    /// Samples in the growth window (the leak rule's window, in ticks).
    pub window_ticks: usize,
    /// Ticks an escalation lasts before it is judged again.
    pub trace_ticks: u64,
    /// Processes traced by escalation at once, at most: the largest
    /// growers first.
    pub max_escalated: usize,
    /// The slowdown an escalated process may be put to, as a fraction of its
    /// CPU time (0.05: 5 %); past it, it is let go and not escalated again.
    pub max_overhead: f64,
    /// What one traced call costs the process, in nanoseconds.
    pub event_cost_ns: u64,
}

/// What an escalated process has used since tracing began: calls traced
/// and CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocator calls traced (allocations and frees).
    pub events: u64,
    /// CPU time, user and system, in nanoseconds.
    pub cpu_ns: u64,
}

/// The least CPU time a slowdown is judged against. The kernel counts CPU
/// time in clock ticks (10 ms): a nearly idle process may show none in a
/// tick, and a handful of calls must not make it look slowed down.
const MIN_JUDGED_CPU_NS: u64 = 100_000_000;

/// What changes at a tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    /// Processes to trace exactly from now on.
    pub escalate: Vec<u32>,
    /// Processes whose escalation ends (no longer growing, or gone).
    pub release: Vec<u32>,
}

/// Why a process is not escalated on request.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The governor let it go for its cost.
    #[error(
        "tracing it was estimated to slow it down by {:.0}%, past the daemon's overhead budget (--max-overhead)",
        slowdown * 100.0
    )]
    OverBudget {
        /// Its estimated slowdown, a fraction.
        slowdown: f64,
    },
    /// As many processes as allowed are traced for growth already.
    #[error("{limit} processes are traced for growth already, the most at once")]
    AtLimit {
        /// The most at once.
        limit: usize,
    },
}

/// Tier 0's histories of every process, and the escalations in force.
pub struct Tiers {
    config: TierConfig,
    histories: HashMap<u32, History>,
    /// Escalated processes, each with the tick its escalation ends.
    escalated: HashMap<u32, u64>,
    /// The usage of each escalated process at the last tick.
    usage: HashMap<u32, Usage>,
    /// Processes let go for costing more than the budget: never escalated
    /// again (until they exec or exit).
    over_budget: HashMap<u32, f64>,
    tick: u64,
}

impl Tiers {
    /// No process watched yet.
    pub fn new(config: TierConfig) -> Self {
        Self {
            config,
            histories: HashMap::new(),
            escalated: HashMap::new(),
            usage: HashMap::new(),
            over_budget: HashMap::new(),
            tick: 0,
        }
    }

    /// Changes the settings (SIGHUP); histories longer than the new window
    /// are cut as samples arrive.
    pub fn set_config(&mut self, config: TierConfig) {
        self.config = config;
    }

    /// Takes one tick's samples — (pid, anonymous resident bytes) of every
    /// process; one absent has ended — and decides what changes.
    pub fn tick(&mut self, samples: &[(u32, u64)]) -> Decisions {
        self.tick += 1;
        let window = self.config.window_ticks;
        let mut seen = HashMap::with_capacity(samples.len());
        for &(pid, bytes) in samples {
            self.histories.entry(pid).or_default().push(bytes, window);
            seen.insert(pid, ());
        }
        self.histories.retain(|pid, _| seen.contains_key(pid));
        self.over_budget.retain(|pid, _| seen.contains_key(pid));
        self.usage.retain(|pid, _| seen.contains_key(pid));
        let mut decisions = Decisions::default();
        let tick = self.tick;
        let mut ended: Vec<u32> = self
            .escalated
            .iter()
            .filter(|&(pid, &until)| !seen.contains_key(pid) || until <= tick)
            .map(|(&pid, _)| pid)
            .collect();
        ended.sort_unstable();
        for pid in ended {
            if seen.contains_key(&pid) && self.grows(pid) {
                self.escalated.insert(pid, tick + self.config.trace_ticks);
            } else {
                self.escalated.remove(&pid);
                decisions.release.push(pid);
            }
        }
        let mut growers: Vec<(u32, f64)> = self
            .histories
            .keys()
            .filter(|pid| !self.escalated.contains_key(pid) && !self.over_budget.contains_key(pid))
            .filter(|&&pid| self.grows(pid))
            .map(|&pid| (pid, self.growth_per_tick(pid)))
            .collect();
        growers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let room = self
            .config
            .max_escalated
            .saturating_sub(self.escalated.len());
        for (pid, _) in growers.into_iter().take(room) {
            self.escalated.insert(pid, tick + self.config.trace_ticks);
            decisions.escalate.push(pid);
        }
        decisions
    }

    /// Escalates `pid` on request (`snapshot --duration` of a process not
    /// traced) for `ticks` ticks at least, or extends its escalation.
    pub fn request(&mut self, pid: u32, ticks: u64) -> Result<(), Refused> {
        if let Some(&slowdown) = self.over_budget.get(&pid) {
            return Err(Refused::OverBudget { slowdown });
        }
        let until = self.tick + ticks.max(1);
        if let Some(current) = self.escalated.get_mut(&pid) {
            *current = (*current).max(until);
            return Ok(());
        }
        if self.escalated.len() >= self.config.max_escalated {
            return Err(Refused::AtLimit {
                limit: self.config.max_escalated,
            });
        }
        self.escalated.insert(pid, until);
        Ok(())
    }

    /// The cost governor: from each escalated process's usage now, its
    /// slowdown since the last tick (calls traced × their cost, over the
    /// CPU time it would have used untraced); those past the budget are
    /// let go (returned) and not escalated again.
    pub fn govern(&mut self, usage: &[(u32, Usage)]) -> Vec<u32> {
        let mut over = Vec::new();
        for &(pid, now) in usage {
            if !self.escalated.contains_key(&pid) {
                continue;
            }
            let Some(before) = self.usage.insert(pid, now) else {
                continue;
            };
            let events = now.events.saturating_sub(before.events);
            let tracing_ns = events.saturating_mul(self.config.event_cost_ns);
            // Its CPU time includes the traps themselves.
            let untraced_ns = now
                .cpu_ns
                .saturating_sub(before.cpu_ns)
                .saturating_sub(tracing_ns)
                .max(MIN_JUDGED_CPU_NS);
            let slowdown = tracing_ns as f64 / untraced_ns as f64;
            if slowdown > self.config.max_overhead {
                self.escalated.remove(&pid);
                self.usage.remove(&pid);
                self.over_budget.insert(pid, slowdown);
                over.push(pid);
            }
        }
        over.sort_unstable();
        over
    }

    /// Processes let go for costing more than the budget, with the
    /// slowdown they were estimated at.
    pub fn over_budget(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.over_budget
            .iter()
            .map(|(&pid, &slowdown)| (pid, slowdown))
    }

    /// Forgets `pid`'s escalation and budget (it exec'd a new image).
    pub fn forget(&mut self, pid: u32) {
        self.escalated.remove(&pid);
        self.usage.remove(&pid);
        self.over_budget.remove(&pid);
    }

    /// True while `pid` is escalated.
    pub fn is_escalated(&self, pid: u32) -> bool {
        self.escalated.contains_key(&pid)
    }

    /// Processes escalated now.
    pub fn escalated(&self) -> impl Iterator<Item = u32> + '_ {
        self.escalated.keys().copied()
    }

    /// Every process watched, with its last sample of anonymous resident bytes.
    pub fn watched(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.histories
            .iter()
            .filter_map(|(&pid, history)| Some((pid, history.last()?)))
    }

    /// `pid`'s last sample of anonymous resident bytes.
    pub fn anon_bytes(&self, pid: u32) -> Option<u64> {
        self.histories.get(&pid)?.last()
    }

    /// `pid`'s growth over the window, bytes per tick (Theil–Sen).
    pub fn growth_per_tick(&self, pid: u32) -> f64 {
        self.histories
            .get(&pid)
            .map_or(0.0, History::slope_per_tick)
    }

    /// Allocator retention, not a leak: the process's anonymous memory
    /// grows (tier 0's rule) while its live heap, traced for a whole window,
    /// does not — memory freed but kept by the allocator, or fragmented.
    pub fn retains(&self, pid: u32, heap: &History) -> bool {
        let window = self.config.window_ticks;
        heap.len() >= window && !heap.grows(window) && self.grows(pid)
    }

    /// Tier 0's rule: a full window of robust growth (the leak rule's) that
    /// is still rising in its last third — a cache that filled and stays
    /// flat, or one step up (an arena reserved), is not growing.
    pub fn grows(&self, pid: u32) -> bool {
        let window = self.config.window_ticks;
        self.histories.get(&pid).is_some_and(|history| {
            let samples = history.samples();
            history.grows(window) && theil_sen_slope(&samples[samples.len() - window / 3..]) > 0.0
        })
    }
}

/// Ticks of `tick` that cover `duration`: at least one.
pub fn ticks_covering(duration: Duration, tick: Duration) -> u64 {
    let ticks = duration.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// The anonymous resident bytes in a /proc/PID/statm text, with pages of
/// `page_size` bytes: its resident pages less its shared ones (file-backed
/// and shmem), which is `RssAnon`. `None` for a kernel thread (no memory of
/// its own) or a text not of statm. statm, not status: the same figure for
/// half the kernel's work, read for every process at every tick.
pub fn anon_bytes_of(statm: &str, page_size: u64) -> Option<u64> {
    let mut pages = statm
        .split_whitespace()
        .map(|field| field.parse::<u64>().ok());
    let size = pages.next()??;
    let resident = pages.next()??;
    let shared = pages.next()??;
    (size > 0).then(|| resident.saturating_sub(shared) * page_size)
}

/// The CPU time, user and system, of a /proc/PID/stat text, in clock ticks
/// (`utime` and `stime`, the 14th and 15th fields).
pub fn cpu_ticks_of(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: TierConfig = TierConfig {
        window_ticks: 6,
        trace_ticks: 4,
        max_escalated: 2,
        max_overhead: 0.05,
        event_cost_ns: 1_000,
    };

    /// Runs `ticks` ticks of processes whose memory at tick t is `bytes(pid, t)`.
    fn run(
        tiers: &mut Tiers,
        pids: &[u32],
        ticks: u64,
        bytes: impl Fn(u32, u64) -> u64,
    ) -> Vec<Decisions> {
        (0..ticks)
            .map(|t| {
                let samples: Vec<(u32, u64)> =
                    pids.iter().map(|&pid| (pid, bytes(pid, t))).collect();
                tiers.tick(&samples)
            })
            .collect()
    }

    #[test]
    fn memory_growing_over_a_flat_heap_is_retention_once_the_heap_has_a_window() {
        let mut tiers = Tiers::new(CONFIG);
        run(&mut tiers, &[1], 12, |_, t| 1_000_000 + t * 100_000);
        let heap_of = |samples: &[u64]| {
            let mut heap = History::default();
            for &bytes in samples {
                heap.push(bytes, CONFIG.window_ticks);
            }
            heap
        };
        let flat = heap_of(&[4_000; 6]);
        assert!(tiers.retains(1, &flat), "grows, its heap does not");
        let leaking = heap_of(&[4_000, 5_000, 6_000, 7_000, 8_000, 9_000]);
        assert!(!tiers.retains(1, &leaking), "its heap grows too: a leak");
        let short = heap_of(&[4_000; 5]);
        assert!(!tiers.retains(1, &short), "traced for less than a window");
        run(&mut tiers, &[1, 2], 12, |_, _| 2_000_000);
        assert!(!tiers.retains(1, &flat), "memory flat: nothing retained");
    }

    #[test]
    fn a_leaker_is_escalated_and_a_plateau_a_step_and_a_flat_process_are_not() {
        let mut tiers = Tiers::new(CONFIG);
        let bytes = |pid, t: u64| match pid {
            1 => 1_000_000 + t * 100_000,        // grows steadily
            2 => 1_000_000 + t.min(3) * 100_000, // fills, then flat
            3 => {
                if t < 4 {
                    1_000_000
                } else {
                    65_000_000
                }
            } // one step up
            _ => 1_000_000,                      // flat
        };
        let decisions = run(&mut tiers, &[1, 2, 3, 4], 9, bytes);
        let escalated: Vec<u32> = decisions.iter().flat_map(|d| d.escalate.clone()).collect();
        assert_eq!(escalated, [1]);
        assert!(tiers.is_escalated(1));
    }

    #[test]
    fn an_escalation_ends_unless_the_process_still_grows() {
        let mut tiers = Tiers::new(CONFIG);
        // Grows for 8 ticks, then flat for good.
        let bytes = |_, t: u64| 1_000_000 + t.min(8) * 100_000;
        let decisions = run(&mut tiers, &[7], 30, bytes);
        let escalated_at = decisions
            .iter()
            .position(|d| d.escalate == [7])
            .expect("escalated");
        let released_at = decisions
            .iter()
            .position(|d| d.release == [7])
            .expect("released");
        assert!(released_at > escalated_at + CONFIG.trace_ticks as usize - 1);
        assert!(!tiers.is_escalated(7));
        assert_eq!(decisions.iter().filter(|d| d.escalate == [7]).count(), 1);
    }

    #[test]
    fn the_largest_growers_go_first_and_an_ended_process_is_released() {
        let mut tiers = Tiers::new(CONFIG);
        let bytes = |pid: u32, t: u64| 1_000_000 + t * 1_000 * u64::from(pid);
        let decisions = run(&mut tiers, &[1, 2, 3], 6, bytes);
        let escalated: Vec<u32> = decisions.iter().flat_map(|d| d.escalate.clone()).collect();
        assert_eq!(escalated, [3, 2], "the limit is two, the fastest first");
        let after_exit = tiers.tick(&[(2, 10_000_000)]);
        assert_eq!(after_exit.release, [3]);
    }

    #[test]
    fn a_request_escalates_within_the_limit() {
        let mut tiers = Tiers::new(CONFIG);
        assert_eq!(tiers.request(5, 4), Ok(()));
        assert_eq!(tiers.request(6, 1), Ok(()));
        assert_eq!(tiers.request(8, 4), Err(Refused::AtLimit { limit: 2 }));
        assert_eq!(tiers.request(6, 4), Ok(()), "again: extended");
        let decisions = run(&mut tiers, &[5, 6], 4, |_, _| 1_000);
        assert_eq!(
            decisions.last().map(|d| d.release.clone()),
            Some(vec![5, 6])
        );
    }

    #[test]
    fn a_process_costing_more_than_the_budget_is_let_go_for_good() {
        let mut tiers = Tiers::new(CONFIG);
        assert!(tiers.request(1, 4).is_ok() && tiers.request(2, 4).is_ok());
        let usage = |events, cpu_ns| Usage { events, cpu_ns };
        // The first sight only sets the baseline.
        assert!(
            tiers
                .govern(&[(1, usage(0, 0)), (2, usage(0, 0))])
                .is_empty()
        );
        // 1: 1,000 calls in 1 s of CPU (0.1 %); 2: a million (100 %).
        let over = tiers.govern(&[
            (1, usage(1_000, 1_000_000_000)),
            (2, usage(1_000_000, 1_000_000_000)),
        ]);
        assert_eq!(over, [2]);
        assert!(tiers.is_escalated(1) && !tiers.is_escalated(2));
        assert_eq!(
            tiers.over_budget().map(|(pid, _)| pid).collect::<Vec<_>>(),
            [2]
        );
        // 3: a nearly idle process, its CPU time under a clock tick: a few
        // calls are no slowdown; a flood in that time is.
        assert!(tiers.request(3, 4).is_ok());
        assert!(tiers.govern(&[(3, usage(0, 0))]).is_empty());
        assert!(tiers.govern(&[(3, usage(20, 0))]).is_empty());
        assert_eq!(tiers.govern(&[(3, usage(100_000, 0))]), [3]);
        // Growing or not, it is not escalated again, nor on request.
        assert!(matches!(
            tiers.request(2, 4),
            Err(Refused::OverBudget { slowdown }) if slowdown > 0.05
        ));
        let decisions = run(&mut tiers, &[2], 8, |_, t| 1_000_000 + t * 100_000);
        assert!(decisions.iter().all(|d| !d.escalate.contains(&2)));
        tiers.forget(2);
        let decisions = run(&mut tiers, &[2], 1, |_, t| 2_000_000 + t * 100_000);
        assert_eq!(decisions[0].escalate, [2], "a new image starts afresh");
    }

    #[test]
    fn a_duration_is_the_ticks_that_cover_it_and_at_least_one() {
        let tick = Duration::from_secs(10);
        assert_eq!(ticks_covering(Duration::from_secs(600), tick), 60);
        assert_eq!(ticks_covering(Duration::from_secs(15), tick), 2);
        assert_eq!(ticks_covering(Duration::ZERO, tick), 1);
        assert_eq!(
            ticks_covering(Duration::MAX, Duration::from_nanos(1)),
            u64::MAX
        );
    }

    #[test]
    fn reads_cpu_time_past_a_hostile_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 9";
        assert_eq!(cpu_ticks_of(stat), Some(300));
        assert_eq!(cpu_ticks_of("42 (x"), None);
    }

    #[test]
    fn reads_anonymous_resident_memory() {
        assert_eq!(
            anon_bytes_of("5000 1300 300 20 0 900 0\n", 4096),
            Some(1000 * 4096)
        );
        assert_eq!(
            anon_bytes_of("0 0 0 0 0 0 0\n", 4096),
            None,
            "a kernel thread"
        );
        assert_eq!(anon_bytes_of("5000 x 300 20 0 900 0\n", 4096), None);
        assert_eq!(anon_bytes_of("", 4096), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn anonymous_memory_from_statm_is_rss_anon_from_status() {
        // SAFETY: sysconf reads a constant of the system.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page");
        // Hold still while reading both: no allocation between the reads.
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let rss_anon_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("RssAnon");
        let from_statm = anon_bytes_of(&statm, page_size).expect("a process");
        // The two reads are a few pages apart at most (the string read allocates).
        assert!(
            from_statm.abs_diff(rss_anon_kib * 1024) <= 64 * page_size,
            "statm {from_statm}, status {} B",
            rss_anon_kib * 1024
        );
    }
}
