//! Per-process heap state built from decoded events. Pure: no eBPF, no /proc.
//!
//! Live blocks are keyed by address within their process; each block points at
//! an interned allocation site. Figures follow valgrind's heap summary: realloc
//! counts one free and one alloc, a failed call counts nothing, a free of a
//! block never seen allocated is `unmatched` and never makes live bytes negative.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use crate::{
    events::{HeapEvent, RawSite, Task},
    hashing::{FastMap, FastSet, table_bytes},
};

/// Tracker options.
#[derive(Clone, Copy, Debug)]
pub struct TrackerConfig {
    /// A forked child starts with a copy of its parent's heap (its memory is a copy).
    pub copy_on_fork: bool,
    /// Live blocks kept in all; past it new blocks are refused (and counted).
    pub max_live_total: u64,
    /// Live blocks kept per process; past it new blocks are refused (and counted).
    pub max_live_per_process: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            copy_on_fork: false,
            max_live_total: u64::MAX,
            max_live_per_process: u64::MAX,
        }
    }
}

/// Live blocks keep their allocation time to this grain (2^26 ns, 67 ms),
/// rounded up: 32 bits of it last 9 years of uptime.
pub const TIME_GRAIN_NS: u64 = 1 << TIME_GRAIN_SHIFT;
const TIME_GRAIN_SHIFT: u32 = 26;

/// A size too large for [`LiveBlock::size`]: the real one is in the
/// process's table of huge blocks.
const HUGE: u32 = u32::MAX;

/// A live block, in 12 bytes (a million of them are the tracker's memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    /// Requested bytes, or [`HUGE`].
    size: u32,
    /// Allocation time in [`TIME_GRAIN_NS`] since boot, rounded up.
    time: u32,
    /// Index into the process's [`ProcessState::sites`].
    site: u32,
}

impl LiveBlock {
    fn new(size: u64, time_ns: u64, site: u32) -> Self {
        let time = time_ns.div_ceil(TIME_GRAIN_NS);
        Self {
            size: u32::try_from(size).unwrap_or(HUGE),
            time: u32::try_from(time).unwrap_or(u32::MAX),
            site,
        }
    }

    /// Allocation time, nanoseconds since boot, to [`TIME_GRAIN_NS`] (rounded up).
    fn time_ns(&self) -> u64 {
        u64::from(self.time) << TIME_GRAIN_SHIFT
    }
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
    /// Of `unmatched_frees`, those of a process not traced from its start
    /// (running when tracing began, or a fork of one): blocks from before
    /// tracing, expected. In a process traced from its start, every
    /// unmatched free is a record missed.
    pub pretrace_frees: u64,
    /// Frees, by exiting threads, of blocks not live: glibc emptying its
    /// per-thread cache of blocks the program had freed already. Not a miss.
    pub thread_cache_frees: u64,
    /// Allocations returned at an address already live: a free was missed.
    pub replaced_blocks: u64,
    /// Live blocks not kept because a cap was reached (counted, not tracked).
    pub refused_blocks: u64,
    /// Records of this process the kernel could not write (ring buffer full).
    pub lost_records: u64,
    /// Its allocator was attached after it had started using it: blocks
    /// allocated before are unseen.
    pub attached_late: bool,
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

/// A site's live blocks older than some time (see [`ProcessState::aged_by_site`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aged {
    /// Their bytes.
    pub bytes: u64,
    /// How many.
    pub blocks: u64,
    /// Allocation time of the oldest, nanoseconds since boot.
    pub oldest_ns: u64,
}

/// A site holding live blocks (see [`ProcessState::sites_holding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSite {
    /// Its index in [`ProcessState::sites`].
    pub index: u32,
    /// Its figures, live ones counting only the blocks asked for.
    pub stats: SiteStats,
    /// Allocation time of its oldest such block, nanoseconds since boot.
    pub oldest_ns: u64,
}

/// A block's address as a table key: two 32-bit halves, so that a table
/// entry (key and [`LiveBlock`]) takes 20 bytes, not 24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockKey([u32; 2]);

impl BlockKey {
    fn new(ptr: u64) -> Self {
        Self([ptr as u32, (ptr >> 32) as u32])
    }

    fn ptr(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }
}

impl Hash for BlockKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.ptr());
    }
}

/// One shard of live blocks.
type BlockTable = FastMap<BlockKey, LiveBlock>;

/// Shards of a process's live blocks.
const SHARDS: usize = 16;

/// Where each shard's part of the 32-bit hash space ends. Shard `i` takes a
/// part in proportion to 2^(i/16), so the shards' sizes spread evenly over
/// one doubling: they outgrow their tables (which double) at different
/// counts, and the tables are on average 1/ln 2 ≈ 1.44 times as large as
/// they must be, at any count. Equal shards all double at the same counts:
/// just past one, as at 1,000,000 blocks, the tables were twice as large.
const SHARD_ENDS: [u64; SHARDS] = shard_ends();

const fn shard_ends() -> [u64; SHARDS] {
    /// 2^(1/16).
    const STEP: f64 = 1.044_273_782_427_413_8;
    // The weights 1, STEP, ..., STEP^15 add up to (STEP^16 - 1) / (STEP - 1).
    let total = 1.0 / (STEP - 1.0);
    let mut ends = [0; SHARDS];
    let (mut sum, mut weight, mut i) = (0.0, 1.0, 0);
    while i < SHARDS {
        sum += weight;
        weight *= STEP;
        ends[i] = (sum / total * (1u64 << 32) as f64) as u64;
        i += 1;
    }
    ends[SHARDS - 1] = 1 << 32;
    ends
}

/// A process's live blocks by address, split in [`SHARDS`] tables by a hash
/// of the address. A table of millions of blocks then grows one shard at a
/// time: each rehash moves at most 9 % of them, and the reader applying
/// records never stalls long enough for the ring buffer to overflow.
#[derive(Clone, Debug, Default)]
struct LiveBlocks {
    shards: Vec<BlockTable>,
    len: usize,
}

impl LiveBlocks {
    fn shard(ptr: u64) -> usize {
        // Fibonacci hashing of the address without its alignment bits.
        let hash = (ptr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        SHARD_ENDS.partition_point(|&end| end <= hash)
    }

    fn insert(&mut self, ptr: u64, block: LiveBlock) -> Option<LiveBlock> {
        if self.shards.is_empty() {
            self.shards.resize_with(SHARDS, BlockTable::default);
        }
        let old = self.shards[Self::shard(ptr)].insert(BlockKey::new(ptr), block);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, ptr: u64) -> Option<LiveBlock> {
        let shard = self.shards.get_mut(Self::shard(ptr))?;
        let block = shard.remove(&BlockKey::new(ptr))?;
        self.len -= 1;
        shrink_emptied(shard);
        Some(block)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn memory_bytes(&self) -> u64 {
        let entry = size_of::<(BlockKey, LiveBlock)>();
        self.shards
            .iter()
            .map(|shard| table_bytes(shard.capacity(), entry))
            .sum()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &LiveBlock)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(key, block)| (key.ptr(), block)))
    }
}

/// Tables below this capacity are shrunk only once empty: they cost little.
const SHRINK_FROM: usize = 64;

/// A table's smallest capacity but one (hashbrown's four buckets hold
/// three): an emptied table of it is kept, so that a process allocating
/// and freeing one block at a time does not free and remake it each time.
const SMALLEST_TABLE: usize = 3;

/// Gives back most of a table's memory once it is mostly empty (below an
/// eighth of its capacity), so that a burst of blocks, freed, does not keep
/// the tracker at its peak. Shrunk to twice what it holds: a table that
/// grows again soon does not rehash at once, and one rehash of `n` entries
/// follows at least `n * 3` removals. An empty table is given back whole.
fn shrink_emptied(table: &mut BlockTable) {
    let (len, capacity) = (table.len(), table.capacity());
    let emptied = len == 0 && capacity > SMALLEST_TABLE;
    if emptied || (capacity >= SHRINK_FROM && len < capacity / 8) {
        table.shrink_to(len * 2);
    }
}

/// Heap state of one process.
#[derive(Clone, Debug, Default)]
pub struct ProcessState {
    live: LiveBlocks,
    live_bytes: u64,
    counters: Counters,
    site_index: FastMap<RawSite, u32>,
    sites: Vec<SiteStats>,
    /// Sizes of the live blocks of 4 GiB and more, by address.
    huge: FastMap<u64, u64>,
    /// When records of this process were last found lost (0: never).
    last_loss_ns: u64,
    /// realloc's old block per thread (address, block, size), freed at
    /// entry, restored if the call fails.
    realloc_pending: FastMap<u32, (u64, LiveBlock, u64)>,
    /// Traced from its exec (or a copy of such a process's heap): every
    /// block it holds was seen allocated.
    traced_from_start: bool,
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

    /// True when figures are not exact: blocks refused, or frees or blocks missed.
    pub fn inexact(&self) -> bool {
        let c = &self.counters;
        c.refused_blocks > 0
            || c.replaced_blocks > 0
            || c.unmatched_frees > 0
            || c.lost_records > 0
            || c.attached_late
    }

    /// True when records of this process were found lost after `since_ns`:
    /// a lost free leaves a block live that is not, so growth then proves nothing.
    pub fn lost_since(&self, since_ns: u64) -> bool {
        self.last_loss_ns > since_ns
    }

    /// Approximate bytes of memory this state takes.
    pub fn memory_bytes(&self) -> u64 {
        let sites = (self.sites.capacity() * size_of::<SiteStats>()) as u64;
        let site_index = table_bytes(self.site_index.capacity(), size_of::<(RawSite, u32)>());
        self.live.memory_bytes() + sites + site_index
    }

    /// Per site (by index), the live blocks allocated before `before_ns`:
    /// their bytes, their number and the oldest one's time. `u64::MAX` takes
    /// every live block.
    pub fn aged_by_site(&self, before_ns: u64) -> HashMap<u32, Aged> {
        let mut aged: HashMap<u32, Aged> = HashMap::new();
        for (ptr, block) in self.live.iter().filter(|(_, b)| b.time_ns() < before_ns) {
            let site = aged.entry(block.site).or_insert(Aged {
                bytes: 0,
                blocks: 0,
                oldest_ns: block.time_ns(),
            });
            site.bytes += self.size_of(ptr, block);
            site.blocks += 1;
            site.oldest_ns = site.oldest_ns.min(block.time_ns());
        }
        aged
    }

    /// The sites holding live blocks allocated before `before_ns`, largest
    /// first; their live figures count only those blocks.
    pub fn sites_holding(&self, before_ns: u64) -> Vec<HeldSite> {
        let mut held: Vec<HeldSite> = self
            .aged_by_site(before_ns)
            .into_iter()
            .map(|(index, aged)| HeldSite {
                index,
                stats: SiteStats {
                    live_bytes: aged.bytes,
                    live_blocks: aged.blocks,
                    ..self.sites[index as usize]
                },
                oldest_ns: aged.oldest_ns,
            })
            .collect();
        held.sort_by(|a, b| {
            (b.stats.live_bytes, a.stats.site).cmp(&(a.stats.live_bytes, b.stats.site))
        });
        held
    }

    /// Counts the allocation; keeps the block only when `keep` (else counts it refused).
    fn alloc(&mut self, tid: u32, ptr: u64, size: u64, site: RawSite, time_ns: u64, keep: bool) {
        self.forget_realloc(tid);
        if let Some((old, old_size)) = self.take(ptr) {
            self.counters.replaced_blocks += 1;
            self.unlink(&old, old_size);
        }
        self.counters.allocs += 1;
        self.counters.bytes_allocated += size;
        if !keep {
            self.counters.refused_blocks += 1;
            return;
        }
        let site = self.intern(site);
        let stats = &mut self.sites[site as usize];
        stats.live_bytes += size;
        stats.live_blocks += 1;
        stats.allocs += 1;
        stats.bytes_allocated += size;
        self.keep(ptr, LiveBlock::new(size, time_ns, site), size);
        self.live_bytes += size;
    }

    /// Frees `ptr`; returns the block and its size when it was live, else
    /// counts the free unmatched.
    fn free(&mut self, tid: u32, ptr: u64) -> Option<(LiveBlock, u64)> {
        let freed = self.free_live(tid, ptr);
        if freed.is_none() {
            self.counters.unmatched_frees += 1;
            if !self.traced_from_start {
                self.counters.pretrace_frees += 1;
            }
        }
        freed
    }

    /// Frees `ptr` for a thread that has begun to exit: a block not live is
    /// glibc emptying the thread's cache. Returns true when it was live.
    fn exiting_free(&mut self, tid: u32, ptr: u64) -> bool {
        let freed = self.free_live(tid, ptr).is_some();
        if !freed {
            self.counters.thread_cache_frees += 1;
        }
        freed
    }

    /// Frees `ptr` if it is live; returns the block and its size.
    fn free_live(&mut self, tid: u32, ptr: u64) -> Option<(LiveBlock, u64)> {
        self.forget_realloc(tid);
        let (block, size) = self.take(ptr)?;
        self.unlink(&block, size);
        self.counters.frees += 1;
        self.counters.bytes_freed += size;
        Some((block, size))
    }

    fn realloc_free(&mut self, tid: u32, ptr: u64) {
        if let Some((block, size)) = self.free(tid, ptr) {
            self.realloc_pending.insert(tid, (ptr, block, size));
        }
    }

    fn realloc_fail(&mut self, tid: u32, ptr: u64) {
        let Some((old_ptr, block, size)) = self.realloc_pending.remove(&tid) else {
            return;
        };
        if old_ptr != ptr {
            return;
        }
        let stats = &mut self.sites[block.site as usize];
        stats.live_bytes += size;
        stats.live_blocks += 1;
        self.live_bytes += size;
        self.counters.frees -= 1;
        self.counters.bytes_freed -= size;
        self.keep(ptr, block, size);
    }

    /// Forgets thread `tid`'s pending realloc: its call has ended. (Most
    /// records find none: the empty check spares them a hash.)
    fn forget_realloc(&mut self, tid: u32) {
        if !self.realloc_pending.is_empty() {
            self.realloc_pending.remove(&tid);
        }
    }

    /// Stores a live block (a huge one's size aside).
    fn keep(&mut self, ptr: u64, block: LiveBlock, size: u64) {
        if block.size == HUGE {
            self.huge.insert(ptr, size);
        }
        self.live.insert(ptr, block);
    }

    /// Removes the live block at `ptr`, with its size.
    fn take(&mut self, ptr: u64) -> Option<(LiveBlock, u64)> {
        let block = self.live.remove(ptr)?;
        let size = match block.size {
            HUGE => self.huge.remove(&ptr).unwrap_or(u64::from(HUGE)),
            size => u64::from(size),
        };
        Some((block, size))
    }

    /// The size of the live block at `ptr`.
    fn size_of(&self, ptr: u64, block: &LiveBlock) -> u64 {
        match block.size {
            HUGE => self.huge.get(&ptr).copied().unwrap_or(u64::from(HUGE)),
            size => u64::from(size),
        }
    }

    fn unlink(&mut self, block: &LiveBlock, size: u64) {
        let stats = &mut self.sites[block.site as usize];
        stats.live_bytes -= size;
        stats.live_blocks -= 1;
        self.live_bytes -= size;
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
    processes: FastMap<u32, ProcessState>,
    live_total: u64,
    /// Processes traced from their exec, state or not (see
    /// [`Counters::pretrace_frees`]).
    from_start: FastSet<u32>,
    /// Processes running in another's memory (vfork children until they
    /// exec or exit), with that process: their calls are its.
    borrowers: FastMap<u32, u32>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            processes: FastMap::default(),
            live_total: 0,
            from_start: FastSet::default(),
            borrowers: FastMap::default(),
        }
    }

    /// Changes the caps (they apply to blocks allocated from now on).
    pub fn set_config(&mut self, config: TrackerConfig) {
        self.config = config;
    }

    /// Live blocks kept, in all processes.
    pub fn live_blocks(&self) -> u64 {
        self.live_total
    }

    /// Approximate bytes of memory the tracker takes.
    pub fn memory_bytes(&self) -> u64 {
        let per_process = size_of::<u32>() + size_of::<ProcessState>();
        let states: u64 = self
            .processes
            .values()
            .map(ProcessState::memory_bytes)
            .sum();
        states
            + table_bytes(self.processes.capacity(), per_process)
            + table_bytes(self.from_start.capacity(), size_of::<u32>())
            + table_bytes(self.borrowers.capacity(), size_of::<(u32, u32)>())
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
            } => {
                let total_room = self.live_total < self.config.max_live_total;
                let per_process = self.config.max_live_per_process;
                let state = self.state(task);
                let keep = total_room && state.live_blocks() < per_process;
                let before = state.live_blocks();
                state.alloc(task.tid, ptr, size, site, time_ns, keep);
                let after = state.live_blocks();
                self.live_total = self.live_total + after - before;
            }
            HeapEvent::Free { task, ptr } => {
                if self.state(task).free(task.tid, ptr).is_some() {
                    self.live_total -= 1;
                }
            }
            HeapEvent::ExitingFree { task, ptr } => {
                if self.state(task).exiting_free(task.tid, ptr) {
                    self.live_total -= 1;
                }
            }
            HeapEvent::ReallocFree { task, ptr } => {
                let state = self.state(task);
                let before = state.live_blocks();
                state.realloc_free(task.tid, ptr);
                self.live_total -= before - state.live_blocks();
            }
            HeapEvent::ReallocFail { task, ptr } => {
                let state = self.state(task);
                let before = state.live_blocks();
                state.realloc_fail(task.tid, ptr);
                self.live_total += state.live_blocks() - before;
            }
            HeapEvent::Exec { tgid } => {
                self.borrowers.remove(&tgid);
                self.from_start.insert(tgid);
                return self.finish(tgid, EndReason::Exec);
            }
            HeapEvent::Exit { tgid } => {
                self.borrowers.remove(&tgid);
                self.from_start.remove(&tgid);
                return self.finish(tgid, EndReason::Exit);
            }
            HeapEvent::Fork {
                child,
                parent,
                shares_memory: true,
            } => {
                let lender = self.owner(parent);
                self.borrowers.insert(child, lender);
            }
            HeapEvent::Fork {
                child,
                parent,
                shares_memory: false,
            } => self.fork(child, self.owner(parent)),
            // Its state stays until its exit, which follows.
            HeapEvent::OomVictim { .. } => {}
        }
        None
    }

    /// The state of process `tgid`, if it is tracked.
    pub fn process(&self, tgid: u32) -> Option<&ProcessState> {
        self.processes.get(&tgid)
    }

    /// Notes that `count` records of process `tgid` were lost, found at `now_ns`.
    pub fn note_lost(&mut self, tgid: u32, count: u64, now_ns: u64) {
        if let Some(process) = self.processes.get_mut(&tgid) {
            process.counters.lost_records += count;
            // 0 means never: a loss found at time 0 is kept as 1 ns.
            process.last_loss_ns = now_ns.max(1);
        }
    }

    /// Notes that process `tgid`'s allocator was attached after it had
    /// started using it: its figures miss what it allocated before.
    pub fn note_attached_late(&mut self, tgid: u32) {
        self.from_start.remove(&tgid);
        let state = self.processes.entry(tgid).or_default();
        state.counters.attached_late = true;
        state.traced_from_start = false;
    }

    /// Every tracked process.
    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessState)> {
        self.processes.iter().map(|(tgid, state)| (*tgid, state))
    }

    /// Removes and returns every process still tracked (at the end of a recording).
    pub fn drain(&mut self) -> Vec<(u32, ProcessState)> {
        self.live_total = 0;
        self.processes.drain().collect()
    }

    /// Every process known: those with state and those traced from their
    /// exec that have none yet.
    pub fn known(&self) -> impl Iterator<Item = u32> + '_ {
        let stateless = self
            .from_start
            .iter()
            .filter(|tgid| !self.processes.contains_key(tgid));
        self.processes.keys().chain(stateless).copied()
    }

    /// The process whose heap process `tgid`'s calls work on: its own, or
    /// the one whose memory it runs in.
    fn owner(&self, tgid: u32) -> u32 {
        // Almost always none: no hash for each record then.
        if self.borrowers.is_empty() {
            return tgid;
        }
        self.borrowers.get(&tgid).copied().unwrap_or(tgid)
    }

    /// The state of the process whose heap `task`'s calls work on.
    fn state(&mut self, task: Task) -> &mut ProcessState {
        let tgid = self.owner(task.tgid);
        let Self {
            processes,
            from_start,
            ..
        } = self;
        processes.entry(tgid).or_insert_with(|| ProcessState {
            traced_from_start: from_start.contains(&tgid),
            ..ProcessState::default()
        })
    }

    fn finish(&mut self, tgid: u32, reason: EndReason) -> Option<Finished> {
        let state = self.processes.remove(&tgid)?;
        self.live_total -= state.live_blocks();
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
        // Its heap is a copy of one whose every block was seen.
        if self.from_start.contains(&parent) {
            self.from_start.insert(child);
        }
        if let Some(state) = self.processes.get(&parent) {
            let mut copy = state.clone();
            copy.realloc_pending.clear();
            // Its parent's misses stay its parent's: counted once.
            copy.counters.unmatched_frees = 0;
            copy.counters.pretrace_frees = 0;
            self.live_total += copy.live_blocks();
            if let Some(replaced) = self.processes.insert(child, copy) {
                self.live_total -= replaced.live_blocks();
            }
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
