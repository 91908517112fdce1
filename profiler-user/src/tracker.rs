//! Per-process heap state built from decoded events. Pure: no eBPF, no /proc.
//!
//! Live blocks are keyed by address within their process; each block points at
//! an interned allocation site. Figures follow valgrind's heap summary: realloc
//! counts one free and one alloc, a failed call counts nothing, a free of a
//! block never seen allocated is `unmatched` and never makes live bytes negative.

use std::collections::HashMap;

use crate::events::{HeapEvent, RawSite, Task};

/// Tracker options.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackerConfig {
    /// A forked child starts with a copy of its parent's heap (its memory is a copy).
    pub copy_on_fork: bool,
}

/// A live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    /// Requested bytes.
    pub size: u64,
    /// Allocation time, nanoseconds since boot.
    pub time_ns: u64,
    /// Index into the process's [`ProcessState::sites`].
    pub site: u32,
}

/// Counters of one process, as valgrind's heap summary names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful allocating calls.
    pub allocs: u64,
    /// Frees of blocks that were live.
    pub frees: u64,
    /// Bytes requested by successful allocating calls.
    pub bytes_allocated: u64,
    /// Bytes of the blocks freed.
    pub bytes_freed: u64,
    /// Frees of blocks never seen allocated (allocated before tracing began).
    pub unmatched_frees: u64,
    /// Allocations returned at an address already live: a free was missed.
    pub replaced_blocks: u64,
}

/// Figures of one allocation site in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// Where the allocations were made.
    pub site: RawSite,
    /// Bytes still allocated.
    pub live_bytes: u64,
    /// Blocks still allocated.
    pub live_blocks: u64,
    /// Allocations made here.
    pub allocs: u64,
    /// Bytes allocated here.
    pub bytes_allocated: u64,
}

/// Heap state of one process.
#[derive(Clone, Debug, Default)]
pub struct ProcessState {
    live: HashMap<u64, LiveBlock>,
    live_bytes: u64,
    counters: Counters,
    site_index: HashMap<RawSite, u32>,
    sites: Vec<SiteStats>,
    /// realloc's old block per thread, freed at entry, restored if the call fails.
    realloc_pending: HashMap<u32, (u64, LiveBlock)>,
}

impl ProcessState {
    /// Bytes in live blocks.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Number of live blocks.
    pub fn live_blocks(&self) -> u64 {
        self.live.len() as u64
    }

    /// The process's counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Every site that allocated in this process.
    pub fn sites(&self) -> &[SiteStats] {
        &self.sites
    }

    /// The live blocks, by address.
    pub fn live(&self) -> impl Iterator<Item = (u64, &LiveBlock)> {
        self.live.iter().map(|(ptr, block)| (*ptr, block))
    }

    fn alloc(&mut self, tid: u32, ptr: u64, size: u64, site: RawSite, time_ns: u64) {
        self.realloc_pending.remove(&tid);
        if let Some(old) = self.live.remove(&ptr) {
            self.counters.replaced_blocks += 1;
            self.unlink(&old);
        }
        let site = self.intern(site);
        let stats = &mut self.sites[site as usize];
        stats.live_bytes += size;
        stats.live_blocks += 1;
        stats.allocs += 1;
        stats.bytes_allocated += size;
        self.live.insert(
            ptr,
            LiveBlock {
                size,
                time_ns,
                site,
            },
        );
        self.live_bytes += size;
        self.counters.allocs += 1;
        self.counters.bytes_allocated += size;
    }

    /// Frees `ptr`; returns the block when it was live.
    fn free(&mut self, tid: u32, ptr: u64) -> Option<LiveBlock> {
        self.realloc_pending.remove(&tid);
        let Some(block) = self.live.remove(&ptr) else {
            self.counters.unmatched_frees += 1;
            return None;
        };
        self.unlink(&block);
        self.counters.frees += 1;
        self.counters.bytes_freed += block.size;
        Some(block)
    }

    fn realloc_free(&mut self, tid: u32, ptr: u64) {
        if let Some(block) = self.free(tid, ptr) {
            self.realloc_pending.insert(tid, (ptr, block));
        }
    }

    fn realloc_fail(&mut self, tid: u32, ptr: u64) {
        let Some((old_ptr, block)) = self.realloc_pending.remove(&tid) else {
            return;
        };
        if old_ptr != ptr {
            return;
        }
        let stats = &mut self.sites[block.site as usize];
        stats.live_bytes += block.size;
        stats.live_blocks += 1;
        self.live_bytes += block.size;
        self.counters.frees -= 1;
        self.counters.bytes_freed -= block.size;
        self.live.insert(ptr, block);
    }

    fn unlink(&mut self, block: &LiveBlock) {
        let stats = &mut self.sites[block.site as usize];
        stats.live_bytes -= block.size;
        stats.live_blocks -= 1;
        self.live_bytes -= block.size;
    }

    fn intern(&mut self, site: RawSite) -> u32 {
        if let Some(index) = self.site_index.get(&site) {
            return *index;
        }
        let index = self.sites.len() as u32;
        self.sites.push(SiteStats {
            site,
            live_bytes: 0,
            live_blocks: 0,
            allocs: 0,
            bytes_allocated: 0,
        });
        self.site_index.insert(site, index);
        index
    }
}

/// Why a process's state was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The process exited.
    Exit,
    /// The process exec'd: this state belongs to its previous image.
    Exec,
}

/// A process state handed back when it ends, for summaries.
#[derive(Debug)]
pub struct Finished {
    /// The process.
    pub tgid: u32,
    /// Exit or exec.
    pub reason: EndReason,
    /// Its state at that moment.
    pub state: ProcessState,
}

/// Heap state of every traced process.
#[derive(Debug, Default)]
pub struct Tracker {
    config: TrackerConfig,
    processes: HashMap<u32, ProcessState>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            processes: HashMap::new(),
        }
    }

    /// Applies one event; returns a process's final state when it exits or execs.
    pub fn apply(&mut self, event: &HeapEvent) -> Option<Finished> {
        match *event {
            HeapEvent::Alloc {
                task,
                ptr,
                size,
                site,
                time_ns,
            } => self.state(task).alloc(task.tid, ptr, size, site, time_ns),
            HeapEvent::Free { task, ptr } => {
                self.state(task).free(task.tid, ptr);
            }
            HeapEvent::ReallocFree { task, ptr } => self.state(task).realloc_free(task.tid, ptr),
            HeapEvent::ReallocFail { task, ptr } => self.state(task).realloc_fail(task.tid, ptr),
            HeapEvent::Exec { tgid } => return self.finish(tgid, EndReason::Exec),
            HeapEvent::Exit { tgid } => return self.finish(tgid, EndReason::Exit),
            HeapEvent::Fork { child, parent } => self.fork(child, parent),
        }
        None
    }

    /// The state of process `tgid`, if it is tracked.
    pub fn process(&self, tgid: u32) -> Option<&ProcessState> {
        self.processes.get(&tgid)
    }

    /// Every tracked process.
    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessState)> {
        self.processes.iter().map(|(tgid, state)| (*tgid, state))
    }

    /// Removes and returns every process still tracked (at the end of a recording).
    pub fn drain(&mut self) -> Vec<(u32, ProcessState)> {
        self.processes.drain().collect()
    }

    fn state(&mut self, task: Task) -> &mut ProcessState {
        self.processes.entry(task.tgid).or_default()
    }

    fn finish(&mut self, tgid: u32, reason: EndReason) -> Option<Finished> {
        let state = self.processes.remove(&tgid)?;
        Some(Finished {
            tgid,
            reason,
            state,
        })
    }

    fn fork(&mut self, child: u32, parent: u32) {
        if !self.config.copy_on_fork {
            return;
        }
        if let Some(state) = self.processes.get(&parent) {
            let mut copy = state.clone();
            copy.realloc_pending.clear();
            self.processes.insert(child, copy);
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
