//! One tracing session's state, shared by `record` and `snapshot
//! --duration`: the tracker fed from the ring buffer, each site normalized
//! while its process lives, and the processes that ended.

use std::{collections::HashMap, io, time::Duration};

use crate::{
    events::{HeapEvent, Record, decode},
    probes::EventReader,
    report::{ProcessReport, SampledStacks, SiteReport},
    stacks::{SiteResolver, StackStatus, StackTable, Symbols},
    tracker::{EndReason, HeldSite, ProcessState, Tracker, TrackerConfig},
};

/// How long the reader waits for a wakeup before draining anyway.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Which sites a process report shows.
pub struct SiteSelection {
    /// Only blocks allocated before this time count (`u64::MAX`: all).
    pub before_ns: u64,
    /// At most this many sites, largest first.
    pub top: usize,
    /// Give each site its oldest block's age at this time.
    pub ages_at_ns: Option<u64>,
}

impl SiteSelection {
    /// Every site holding live blocks, without ages.
    pub const ALL: Self = Self {
        before_ns: u64::MAX,
        top: usize::MAX,
        ages_at_ns: None,
    };
}

/// The state of one tracing session.
pub struct Recording {
    /// Heap state of the processes still running.
    pub tracker: Tracker,
    /// The processes that exited, by pid.
    pub exited: HashMap<u32, ProcessState>,
    /// Records that could not be decoded.
    pub malformed: u64,
    stacks: StackTable,
    sites: SiteResolver,
}

impl Recording {
    /// An empty session; `follow_forks` gives children a copy of their parent's heap.
    pub fn new(follow_forks: bool) -> Self {
        Self {
            tracker: Tracker::new(TrackerConfig {
                copy_on_fork: follow_forks,
                ..TrackerConfig::default()
            }),
            exited: HashMap::new(),
            malformed: 0,
            stacks: StackTable::new(),
            sites: SiteResolver::new(),
        }
    }

    /// Waits for the kernel's wakeup (or the poll interval) and applies every record.
    pub fn pump(&mut self, reader: &mut EventReader) -> io::Result<()> {
        reader.wait(POLL_INTERVAL, None)?;
        self.drain(reader);
        Ok(())
    }

    /// Applies every record waiting in the ring buffer.
    pub fn drain(&mut self, reader: &mut EventReader) {
        reader.drain(|bytes, read_ns| self.apply(bytes, read_ns));
    }

    fn apply(&mut self, bytes: &[u8], read_ns: u64) {
        let event = match decode(bytes, read_ns) {
            Ok(Record::Heap(event)) => event,
            Ok(Record::Stack(stack)) => {
                self.stacks.insert(&stack);
                return;
            }
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        match event {
            HeapEvent::Alloc { task, site, .. } => {
                let stacks = &self.stacks;
                self.sites
                    .observe(task.tgid, site, || stacks.get(site.stack).map(|raw| &**raw));
            }
            HeapEvent::Exec { tgid } => self.sites.forget_maps(tgid),
            HeapEvent::Fork { child, parent } => self.sites.inherit_maps(child, parent),
            _ => {}
        }
        if let Some(finished) = self.tracker.apply(&event)
            && finished.reason == EndReason::Exit
        {
            self.exited.insert(finished.tgid, finished.state);
        }
    }

    /// The report of one process: its summary and the sites `selection` picks.
    pub fn process_report(
        &self,
        pid: u32,
        state: &ProcessState,
        exited: bool,
        selection: &SiteSelection,
        symbols: &mut Symbols,
    ) -> ProcessReport {
        let mut report = ProcessReport::summary(pid, state, exited);
        let mut held = state.sites_holding(selection.before_ns);
        held.truncate(selection.top);
        report.sites = held
            .iter()
            .map(|held| SiteReport {
                oldest_age_secs: selection
                    .ages_at_ns
                    .map(|now| now.saturating_sub(held.oldest_ns) as f64 / 1e9),
                ..self.site_report(pid, held, symbols)
            })
            .collect();
        self.add_sampled_stacks(pid, state, &held, &mut report.sites, symbols);
        report
    }

    /// Gives each site whose callers were not sampled (`sites`, the reports
    /// of `held`) the full stack sampled most often at its call site.
    fn add_sampled_stacks(
        &self,
        pid: u32,
        state: &ProcessState,
        held: &[HeldSite],
        sites: &mut [SiteReport],
        symbols: &mut Symbols,
    ) {
        let unsampled = |site: &SiteReport| site.stack_status == StackStatus::Unsampled;
        if !sites.iter().any(unsampled) {
            return;
        }
        let caller_of = |site| {
            let stack = self.sites.stack(pid, site)?;
            Some((stack.status, stack.frames.first()?.address))
        };
        let sampled = SampledStacks::new(state.sites(), caller_of);
        for (report, held) in sites.iter_mut().zip(held).filter(|(r, _)| unsampled(r)) {
            let full = caller_of(held.stats.site)
                .and_then(|(_, caller)| sampled.for_caller(caller))
                .and_then(|full| self.sites.stack(pid, full));
            if let Some(stack) = full {
                report.sampled_stack = symbols.symbolize(&stack);
            }
        }
    }

    /// A site's report with its symbolized stack.
    fn site_report(&self, pid: u32, held: &HeldSite, symbols: &mut Symbols) -> SiteReport {
        let site = held.stats.site;
        match self.sites.stack(pid, site) {
            Some(stack) => SiteReport::new(&held.stats, symbols.symbolize(&stack), stack.status),
            None => SiteReport::new(&held.stats, Vec::new(), StackStatus::NotCaptured),
        }
    }
}
