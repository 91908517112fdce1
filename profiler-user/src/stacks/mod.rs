//! Allocation sites as stacks: captured addresses normalized to (file,
//! build id, offset) while their process lives, symbolized later with
//! blazesym, even after the process has gone.

mod files;
mod maps;
mod service;
mod symbols;

use std::{
    collections::{HashMap, HashSet},
    fs,
    ops::Range,
    path::Path,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use files::{FileId, MappedFile, OpenFiles, file_id, open_mapped};
pub use maps::{Location, MappedRange, Mapping, code_ranges, normalize, parse_maps};
pub use service::SymbolService;
pub use symbols::{DEFAULT_CACHE_FRAMES, InlinedCall, SymFrame, Symbols};

use crate::{
    events::{RawSite, StackRecord},
    hashing::FastMap,
};

/// One frame of an allocation stack, normalized while its process lived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address as the process saw it.
    pub address: u64,
    /// Where it lies in a mapped file, when known.
    pub location: Option<Location>,
}

/// How much of an allocation's stack is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackStatus {
    /// The immediate caller and the frame-pointer walk above it.
    #[default]
    Full,
    /// Only the immediate caller: the stack was not sampled (`--stack-sample`).
    Unsampled,
    /// Nothing: the record of its stack was lost (ring buffer full, counted
    /// in `heapwatch_events_dropped_total{reason="ring_full"}`).
    NotCaptured,
}

/// The normalized stack of one allocation site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Immediate caller first.
    pub frames: Vec<Frame>,
    /// How much of the stack is known.
    pub status: StackStatus,
}

/// A user stack as the kernel walked it: return addresses, immediate caller first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// Return addresses, immediate caller first.
    pub frames: Box<[u64]>,
    /// [`StackStatus::Full`] or [`StackStatus::Unsampled`].
    pub status: StackStatus,
}

/// The stacks the kernel has sent, by hash. The kernel sends each once, and
/// again only once its hash is taken out of its set of stacks sent.
#[derive(Default)]
pub struct StackTable {
    stacks: HashMap<u64, Arc<RawStack>>,
    /// Forgotten by the kernel at the last [`StackTable::retire`]; dropped at
    /// the next unless used again. An allocation record already in the ring
    /// buffer when the kernel forgot its stack still finds it.
    retiring: HashSet<u64>,
}

impl StackTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a stack the kernel sent; one already known is left as it is
    /// (and is no longer retiring: the kernel knows it again).
    pub fn insert(&mut self, record: &StackRecord<'_>) {
        self.retiring.remove(&record.hash);
        self.stacks.entry(record.hash).or_insert_with(|| {
            Arc::new(RawStack {
                frames: record.frames().collect(),
                status: if record.sampled {
                    StackStatus::Full
                } else {
                    StackStatus::Unsampled
                },
            })
        });
    }

    /// The stack with this hash, if its record arrived.
    pub fn get(&self, hash: u64) -> Option<&Arc<RawStack>> {
        self.stacks.get(&hash)
    }

    /// Drops the stacks retired at the last call that `in_use` does not
    /// hold, and retires `unused`: returns them, for the kernel to forget.
    pub fn retire(&mut self, unused: HashSet<u64>, in_use: &HashSet<u64>) -> Vec<u64> {
        for hash in self.retiring.difference(in_use) {
            self.stacks.remove(hash);
        }
        self.retiring = unused;
        self.retiring.iter().copied().collect()
    }

    /// Stacks held.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    /// True when no stack is held.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

/// What a process maps, as far as its stacks need.
#[derive(Clone, Default)]
struct ProcessMaps {
    /// Its executable file mappings, with their files.
    files: Vec<Mapping>,
    /// Every executable range, files' or not.
    code: Vec<Range<u64>>,
}

impl ProcessMaps {
    /// True when `address` is known to lie outside the process's code (its
    /// maps were read, and no executable mapping holds it).
    fn outside_code(&self, address: u64) -> bool {
        !self.code.is_empty() && !self.code.iter().any(|range| range.contains(&address))
    }
}

/// Normalizes each process's allocation sites once, while it lives.
#[derive(Default)]
pub struct SiteResolver {
    maps: HashMap<u32, ProcessMaps>,
    stacks: FastMap<(u32, RawSite), Arc<Stack>>,
    files: OpenFiles,
    build_ids: HashMap<FileId, Option<Arc<[u8]>>>,
}

impl SiteResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// The normalized stack of `site` of process `tgid`, normalized now if
    /// it is new (`raw` finds its stack as the kernel sent it, if it
    /// arrived). A site whose stack has not arrived is not kept: a later
    /// call may bring it.
    pub fn observe<'a>(
        &mut self,
        tgid: u32,
        site: RawSite,
        raw: impl FnOnce() -> Option<&'a RawStack>,
    ) -> Arc<Stack> {
        if let Some(stack) = self.stacks.get(&(tgid, site)) {
            return Arc::clone(stack);
        }
        let Some(raw) = raw() else {
            return Arc::new(Stack {
                frames: Vec::new(),
                status: StackStatus::NotCaptured,
            });
        };
        let frames = self.frames(tgid, &raw.frames);
        let stack = Arc::new(Stack {
            frames,
            status: raw.status,
        });
        self.stacks.insert((tgid, site), Arc::clone(&stack));
        stack
    }

    /// The normalized stack of a site seen by [`Self::observe`].
    pub fn stack(&self, tgid: u32, site: RawSite) -> Option<Arc<Stack>> {
        self.stacks.get(&(tgid, site)).cloned()
    }

    /// Gives a forked child its parent's mappings: the child has the same,
    /// and may exit before its own can be read.
    pub fn inherit_maps(&mut self, child: u32, parent: u32) {
        let mappings = match self.maps.get(&parent) {
            Some(mappings) => mappings.clone(),
            None => self.read_maps(parent),
        };
        self.maps.insert(child, mappings);
    }

    /// Takes the mappings of a process's new image (it exec'd): read now,
    /// while `record` holds it at its exec, so its program's own code is
    /// known however soon it exits.
    pub fn exec_maps(&mut self, tgid: u32) {
        let mappings = self.read_maps(tgid);
        self.maps.insert(tgid, mappings);
    }

    /// Forgets a process's mappings and sites (it exited or exec'd).
    pub fn forget(&mut self, tgid: u32) {
        self.maps.remove(&tgid);
        self.stacks.retain(|&(owner, _), _| owner != tgid);
    }

    /// The frames of a walked stack, up to the first that lies in no code
    /// of the process: a frame pointer left by code built without frame
    /// pointers (the C library, a program at -O2) leads the walk into junk,
    /// and on past it. The immediate caller, read where the call put its
    /// return address, is always kept.
    fn frames(&mut self, tgid: u32, addresses: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(addresses.len());
        for (depth, &address) in addresses.iter().enumerate() {
            let frame = self.frame(tgid, address);
            if depth > 0
                && self
                    .maps
                    .get(&tgid)
                    .is_some_and(|maps| maps.outside_code(address))
            {
                break;
            }
            frames.push(frame);
        }
        frames
    }

    fn frame(&mut self, tgid: u32, address: u64) -> Frame {
        let mut location = self
            .maps
            .get(&tgid)
            .and_then(|m| normalize(&m.files, address));
        if location.is_none() {
            let maps = self.read_maps(tgid);
            location = normalize(&maps.files, address);
            // A process gone has no maps left to read: keep those known.
            if !maps.code.is_empty() {
                self.maps.insert(tgid, maps);
            }
        }
        Frame { address, location }
    }

    /// The process's mappings, each executable file's opened as the process
    /// maps it, with that file's build id.
    fn read_maps(&mut self, tgid: u32) -> ProcessMaps {
        let text = fs::read_to_string(format!("/proc/{tgid}/maps")).unwrap_or_default();
        let mut mappings = parse_maps(&text);
        for mapping in &mut mappings {
            let Some(file) = open_mapped(tgid, mapping) else {
                continue;
            };
            let file = self.files.share(file);
            mapping.build_id = self
                .build_ids
                .entry(file.id)
                .or_insert_with(|| read_build_id(&file.path()))
                .clone();
            mapping.file = Some(file);
        }
        self.build_ids.retain(|id, _| self.files.holds(id));
        ProcessMaps {
            files: mappings,
            code: code_ranges(&text),
        }
    }
}

/// The GNU build id of an ELF file, if it has one and can be read.
pub fn read_build_id(path: &Path) -> Option<Arc<[u8]>> {
    blazesym::helper::read_elf_build_id(path)
        .ok()
        .flatten()
        .map(|id| Arc::from(&*id))
}

#[cfg(test)]
mod tests {
    use profiler_common::{STACK_UNSAMPLED, stack_hash};

    use super::*;
    use crate::events::{Record, decode, stack_record_bytes};

    /// A stack record as the kernel writes it, decoded.
    fn with_record(frames: &[u64], flags: u16, use_it: impl FnOnce(&StackRecord<'_>)) {
        let bytes = stack_record_bytes(frames, flags);
        let Ok(Record::Stack(record)) = decode(&bytes, 0) else {
            panic!("not a stack record");
        };
        use_it(&record);
    }

    #[test]
    fn keeps_each_stack_once_with_its_status() {
        let mut table = StackTable::new();
        with_record(&[0x10, 0x20], 0, |r| table.insert(r));
        with_record(&[0x10, 0x20], 0, |r| table.insert(r));
        with_record(&[0x10], STACK_UNSAMPLED, |r| table.insert(r));
        assert_eq!(table.len(), 2);
        let full = table.get(stack_hash(0, &[0x10, 0x20])).expect("kept");
        assert_eq!(
            (&*full.frames, full.status),
            (&[0x10, 0x20][..], StackStatus::Full)
        );
        let caller = table
            .get(stack_hash(STACK_UNSAMPLED, &[0x10]))
            .expect("kept");
        assert_eq!(caller.status, StackStatus::Unsampled);
        assert!(table.get(1).is_none());
    }

    #[test]
    fn a_retired_stack_lasts_one_more_round_and_comes_back_when_resent() {
        let mut table = StackTable::new();
        let (a, b) = (stack_hash(0, &[0xa]), stack_hash(0, &[0xb]));
        with_record(&[0xa], 0, |r| table.insert(r));
        with_record(&[0xb], 0, |r| table.insert(r));
        let nothing_used = HashSet::new();
        let mut forgotten = table.retire(HashSet::from([a, b]), &nothing_used);
        forgotten.sort_unstable();
        let mut both = vec![a, b];
        both.sort_unstable();
        assert_eq!(forgotten, both, "the kernel forgets both");
        assert_eq!(table.len(), 2, "records in flight still find them");
        with_record(&[0xb], 0, |r| table.insert(r));
        assert!(table.retire(HashSet::new(), &nothing_used).is_empty());
        assert!(table.get(a).is_none(), "dropped a round later");
        assert!(table.get(b).is_some(), "sent again, so the kernel knows it");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_site_whose_stack_has_not_arrived_is_resolved_when_it_does() {
        let mut resolver = SiteResolver::new();
        let pid = std::process::id();
        let site = RawSite { stack: 7 };
        assert_eq!(
            resolver.observe(pid, site, || None).status,
            StackStatus::NotCaptured
        );
        assert!(resolver.stack(pid, site).is_none(), "not kept");
        let this_test: fn() = a_site_whose_stack_has_not_arrived_is_resolved_when_it_does;
        let address = this_test as *const () as u64;
        let raw = RawStack {
            frames: Box::new([address]),
            status: StackStatus::Full,
        };
        let stack = resolver.observe(pid, site, || Some(&raw));
        assert_eq!(stack.status, StackStatus::Full);
        assert_eq!(stack.frames[0].address, address);
        assert!(
            stack.frames[0].location.is_some(),
            "in this test's own binary"
        );
        assert_eq!(resolver.stack(pid, site), Some(stack));
    }

    #[test]
    fn a_programs_maps_read_at_its_exec_outlive_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        // spawn returns once the exec has begun; its image is mapped a little later.
        while !fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("sleep")) {
            std::thread::yield_now();
        }
        let mut resolver = SiteResolver::new();
        resolver.exec_maps(pid);
        let program = resolver.maps[&pid]
            .files
            .iter()
            .find(|m| m.path.ends_with("sleep"))
            .map(|m| m.start)
            .expect("sleep's own code is mapped at its exec");
        child.kill().expect("sleep is killed");
        child.wait().expect("sleep is reaped");
        let stack_of = |frames: &[u64]| RawStack {
            frames: frames.into(),
            status: StackStatus::Full,
        };
        let unknown = stack_of(&[0x10]);
        let nowhere = resolver.observe(pid, RawSite { stack: 1 }, || Some(&unknown));
        assert!(nowhere.frames[0].location.is_none());
        let in_program = stack_of(&[program]);
        let stack = resolver.observe(pid, RawSite { stack: 2 }, || Some(&in_program));
        let location = stack.frames[0].location.as_ref();
        assert!(
            location.is_some_and(|l| l.path.ends_with("sleep")),
            "found in the maps read at its exec, though it is gone: {location:?}"
        );
    }

    #[test]
    fn a_walk_that_leaves_the_code_is_cut_there() {
        let mut resolver = SiteResolver::new();
        let pid = std::process::id();
        let this_test: fn() = a_walk_that_leaves_the_code_is_cut_there;
        let code = this_test as *const () as u64;
        let heap = Box::new(0u64);
        let junk = &raw const *heap as u64;
        let raw = RawStack {
            frames: Box::new([junk, code, code + 1, junk, code, 0x10]),
            status: StackStatus::Full,
        };
        let stack = resolver.observe(pid, RawSite { stack: 1 }, || Some(&raw));
        let kept: Vec<u64> = stack.frames.iter().map(|f| f.address).collect();
        assert_eq!(
            kept,
            [junk, code, code + 1],
            "the immediate caller stays; the walk ends at its first frame outside the code"
        );
    }

    #[test]
    fn a_gone_process_whose_maps_were_never_read_keeps_its_frames() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id();
        child.wait().expect("true is reaped");
        let raw = RawStack {
            frames: Box::new([0x1000, 0x10, 0x2000]),
            status: StackStatus::Full,
        };
        let stack = SiteResolver::new().observe(pid, RawSite { stack: 1 }, || Some(&raw));
        assert_eq!(stack.frames.len(), 3, "nothing known to cut by");
    }

    #[test]
    fn a_retired_stack_used_again_stays() {
        let mut table = StackTable::new();
        let a = stack_hash(0, &[0xa]);
        with_record(&[0xa], 0, |r| table.insert(r));
        table.retire(HashSet::from([a]), &HashSet::new());
        table.retire(HashSet::new(), &HashSet::from([a]));
        assert!(table.get(a).is_some());
    }
}
