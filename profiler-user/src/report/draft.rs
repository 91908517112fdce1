//! Building a [`ProcessReport`] from a [`Session`]: one way for every caller.
//! A draft is taken from the session (the daemon holds its lock only that
//! long), then finished: stacks normalized where that is still to do, and
//! all symbolized in one batch.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use super::{ProcessReport, SampledStacks, SiteReport};
use crate::{
    events::RawSite,
    leaks::Verdict,
    session::{Retention, Session},
    stacks::{RawStack, SiteResolver, Stack, StackStatus, SymFrame},
    tracker::{HeldSite, ProcessState},
};

/// Which sites a process report shows, and as of when.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteSelection {
    /// At most this many sites, largest first.
    pub top: usize,
    /// The time the report is of, nanoseconds since boot: sites get their
    /// oldest block's age at it. `None`: no ages (a finished recording).
    pub now_ns: Option<u64>,
    /// Count only blocks at least this many nanoseconds old at `now_ns` (0: all).
    pub min_age_ns: u64,
    /// Show the sites whose live bytes grew over this last span, by growth
    /// (judged by the leak rule's history: a daemon's snapshot).
    pub since: Option<Duration>,
}

impl SiteSelection {
    /// Every site holding live blocks, without ages.
    pub const ALL: Self = Self {
        top: usize::MAX,
        now_ns: None,
        min_age_ns: 0,
        since: None,
    };

    /// Only blocks allocated before this time count.
    fn before_ns(&self) -> u64 {
        match (self.now_ns, self.min_age_ns) {
            (Some(now), age) if age > 0 => now.saturating_sub(age),
            _ => u64::MAX,
        }
    }
}

/// A site's stack as the session holds it.
#[derive(Clone, Debug)]
enum PendingStack {
    /// Normalized while its process lived.
    Normalized(Arc<Stack>),
    /// As the kernel sent it: normalized when the draft is finished (its
    /// process still runs).
    Raw(RawSite, Arc<RawStack>),
    /// Its record never arrived.
    Missing,
}

/// A process report whose stacks are not yet symbolized.
#[derive(Debug)]
pub struct ReportDraft {
    report: ProcessReport,
    /// Per site of `report`: its stack, and for an unsampled one the full
    /// stack sampled most often at its call site.
    stacks: Vec<(PendingStack, Option<PendingStack>)>,
}

/// Drafts the report of process `pid`: its summary and the sites `selection`
/// picks, judged by `verdict` when the leak rule runs on this session.
/// `None` when the session holds no state of the process.
pub fn draft(
    session: &Session,
    pid: u32,
    selection: &SiteSelection,
    verdict: Option<&Verdict<'_>>,
) -> Option<ReportDraft> {
    let (state, exited) = session.process(pid)?;
    Some(draft_of(session, pid, state, exited, selection, verdict))
}

/// Drafts the report of process `pid` from `state`, which need not be held
/// by the session (a process that made no allocation has an empty one).
pub fn draft_of(
    session: &Session,
    pid: u32,
    state: &ProcessState,
    exited: bool,
    selection: &SiteSelection,
    verdict: Option<&Verdict<'_>>,
) -> ReportDraft {
    let mut report = ProcessReport::summary(pid, state, exited);
    report.comm = session.comm(pid);
    report.only_older_than_secs =
        (selection.min_age_ns > 0).then(|| selection.min_age_ns as f64 / 1e9);
    let mut held = state.sites_holding(selection.before_ns());
    let growth = match (selection.since, verdict) {
        (Some(since), Some(verdict)) => {
            let ticks = verdict.ticks_of(since);
            report.since_secs = Some(verdict.span_of(ticks).as_secs_f64());
            Some(grown_most(&mut held, |index| {
                verdict.site_growth_over(index, ticks)
            }))
        }
        _ => None,
    };
    held.truncate(selection.top);
    report.sites = held
        .iter()
        .enumerate()
        .map(|(rank, held)| SiteReport {
            grown_bytes: growth.as_ref().map(|grown| grown[rank]),
            ..site_figures(held, selection, verdict)
        })
        .collect();
    let sampled = sampled_stacks(session, pid, state, &held);
    let stacks = held
        .iter()
        .zip(sampled)
        .map(|(held, sampled)| (pending(session, pid, held.stats.site), sampled))
        .collect();
    ReportDraft { report, stacks }
}

/// Keeps the sites of `held` whose live bytes grew (by `growth` of a site's
/// index), most first; returns their growth, in the same order.
fn grown_most(held: &mut Vec<HeldSite>, growth: impl Fn(u32) -> i64) -> Vec<i64> {
    let mut grown: Vec<(i64, HeldSite)> = held
        .drain(..)
        .map(|site| (growth(site.index), site))
        .filter(|&(bytes, _)| bytes > 0)
        .collect();
    grown.sort_by_key(|&(bytes, ref site)| (std::cmp::Reverse(bytes), site.stats.site));
    let (bytes, sites): (Vec<i64>, Vec<HeldSite>) = grown.into_iter().unzip();
    *held = sites;
    bytes
}

/// A site's figures, age and verdict, without its stack.
fn site_figures(
    held: &HeldSite,
    selection: &SiteSelection,
    verdict: Option<&Verdict<'_>>,
) -> SiteReport {
    SiteReport {
        oldest_age_secs: selection
            .now_ns
            .map(|now| now.saturating_sub(held.oldest_ns) as f64 / 1e9),
        growth_bytes_per_sec: verdict.map(|v| v.site_growth_rate(held.index)),
        leak_suspect: verdict.is_some_and(|v| v.site_is_suspect(held.index, held.oldest_ns)),
        ..SiteReport::new(&held.stats, Vec::new(), StackStatus::NotCaptured)
    }
}

/// For each site whose callers were not sampled, the full stack sampled most
/// often at its call site, when one was.
fn sampled_stacks(
    session: &Session,
    pid: u32,
    state: &ProcessState,
    held: &[HeldSite],
) -> Vec<Option<PendingStack>> {
    let stacks = session.stacks();
    let unsampled_caller = |site: RawSite| {
        stacks
            .get(site.stack)
            .filter(|raw| raw.status == StackStatus::Unsampled)
            .and_then(|raw| raw.frames.first().copied())
    };
    if !held
        .iter()
        .any(|h| unsampled_caller(h.stats.site).is_some())
    {
        return vec![None; held.len()];
    }
    let sampled = SampledStacks::new(state.sites(), |site| {
        let raw = stacks.get(site.stack)?;
        Some((raw.status, *raw.frames.first()?))
    });
    held.iter()
        .map(|h| {
            let full = sampled.for_caller(unsampled_caller(h.stats.site)?)?;
            Some(pending(session, pid, full))
        })
        .collect()
}

/// A site's stack as the session holds it: normalized already if the
/// session normalizes sites while processes live, else as the kernel sent it.
fn pending(session: &Session, pid: u32, site: RawSite) -> PendingStack {
    let found = match session.retention() {
        Retention::KeepExited => session
            .sites()
            .stack(pid, site)
            .map(PendingStack::Normalized),
        Retention::LiveOnly => session
            .stacks()
            .get(site.stack)
            .map(|raw| PendingStack::Raw(site, Arc::clone(raw))),
    };
    found.unwrap_or(PendingStack::Missing)
}

impl ReportDraft {
    /// The report's figures, before its stacks are symbolized.
    pub fn report(&self) -> &ProcessReport {
        &self.report
    }

    /// The draft with its stacks normalized now, by `resolver` (which may
    /// know the mappings of a process already gone).
    pub fn normalize_with(self, resolver: &mut SiteResolver) -> Self {
        let pid = self.report.pid;
        let mut normalize = |stack: PendingStack| match stack {
            PendingStack::Raw(site, raw) => {
                PendingStack::Normalized(resolver.observe(pid, site, || Some(&*raw)))
            }
            other => other,
        };
        let stacks = self
            .stacks
            .into_iter()
            .map(|(stack, sampled)| (normalize(stack), sampled.map(&mut normalize)))
            .collect();
        Self {
            report: self.report,
            stacks,
        }
    }

    /// The report with every stack normalized and symbolized; `symbolize`
    /// takes every stack at once, and gives their frames in the same order.
    pub fn finish<E>(
        self,
        symbolize: impl FnOnce(Vec<Arc<Stack>>) -> Result<Vec<Vec<SymFrame>>, E>,
    ) -> Result<ProcessReport, E> {
        let Self { mut report, stacks } = self;
        let mut resolver = SiteResolver::new();
        let mut normalize = |stack: PendingStack| match stack {
            PendingStack::Normalized(stack) => stack,
            PendingStack::Raw(site, raw) => resolver.observe(report.pid, site, || Some(&*raw)),
            PendingStack::Missing => Arc::new(Stack {
                frames: Vec::new(),
                status: StackStatus::NotCaptured,
            }),
        };
        let sites = report
            .sites
            .drain(..)
            .zip(stacks)
            .map(|(report, (stack, sampled))| Site {
                report,
                stack: normalize(stack),
                sampled: sampled.map(&mut normalize),
            });
        let sites = merge_same_stacks(sites.collect());
        let mut batch: Vec<Arc<Stack>> = sites.iter().map(|site| Arc::clone(&site.stack)).collect();
        batch.extend(sites.iter().filter_map(|site| site.sampled.clone()));
        let mut frames = symbolize(batch)?.into_iter();
        let site_frames: Vec<Vec<SymFrame>> = frames.by_ref().take(sites.len()).collect();
        for (site, stack_frames) in sites.into_iter().zip(site_frames) {
            let mut shown = site.report;
            shown.stack = stack_frames;
            shown.stack_status = site.stack.status;
            if site.sampled.is_some() {
                shown.sampled_stack = frames.next().unwrap_or_default();
            }
            report.sites.push(shown);
        }
        Ok(report)
    }
}

/// A site of a draft being finished, with its normalized stacks.
struct Site {
    report: SiteReport,
    stack: Arc<Stack>,
    /// For an unsampled site, the full stack sampled most often at its call site.
    sampled: Option<Arc<Stack>>,
}

/// Merges the sites whose normalized stacks are the same (walks that
/// differed only past the code, where normalizing cut them) into the first
/// of them; returns the sites largest first.
fn merge_same_stacks(sites: Vec<Site>) -> Vec<Site> {
    let mut merged: Vec<Site> = Vec::with_capacity(sites.len());
    let mut first_with: HashMap<(StackStatus, Vec<u64>), usize> = HashMap::new();
    for site in sites {
        if site.stack.status == StackStatus::NotCaptured {
            merged.push(site);
            continue;
        }
        let addresses = site.stack.frames.iter().map(|f| f.address).collect();
        match first_with.entry((site.stack.status, addresses)) {
            Entry::Occupied(first) => merged[*first.get()].report.absorb(&site.report),
            Entry::Vacant(first) => {
                first.insert(merged.len());
                merged.push(site);
            }
        }
    }
    merged.sort_by_key(|site| std::cmp::Reverse(site.report.live_bytes));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::Frame;

    fn site(live_bytes: u64, status: StackStatus, addresses: &[u64], suspect: bool) -> Site {
        let frames = addresses
            .iter()
            .map(|&address| Frame {
                address,
                location: None,
            })
            .collect();
        Site {
            report: SiteReport {
                live_bytes,
                live_blocks: 1,
                allocs: 2,
                bytes_allocated: live_bytes * 2,
                stack: Vec::new(),
                stack_status: status,
                sampled_stack: Vec::new(),
                oldest_age_secs: Some(live_bytes as f64),
                growth_bytes_per_sec: Some(1.0),
                leak_suspect: suspect,
                grown_bytes: None,
            },
            stack: Arc::new(Stack { frames, status }),
            sampled: None,
        }
    }

    #[test]
    fn sites_with_one_stack_become_one_largest_first() {
        let full = StackStatus::Full;
        let merged = merge_same_stacks(vec![
            site(50, full, &[1, 2], false),
            site(40, full, &[3], false),
            site(30, full, &[1, 2], true),
            site(20, StackStatus::Unsampled, &[1, 2], false),
            site(10, StackStatus::NotCaptured, &[], false),
            site(5, StackStatus::NotCaptured, &[], false),
        ]);
        let shown: Vec<(u64, u64, bool)> = merged
            .iter()
            .map(|s| {
                (
                    s.report.live_bytes,
                    s.report.live_blocks,
                    s.report.leak_suspect,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (80, 2, true),
                (40, 1, false),
                (20, 1, false),
                (10, 1, false),
                (5, 1, false)
            ],
            "sites whose stacks are unknown are never taken for one"
        );
        let first = &merged[0].report;
        assert_eq!((first.allocs, first.bytes_allocated), (4, 160));
        assert_eq!(first.oldest_age_secs, Some(50.0), "the older block's age");
        assert_eq!(first.growth_bytes_per_sec, Some(2.0));
    }
}
