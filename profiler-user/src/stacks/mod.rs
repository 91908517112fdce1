//! Allocation sites as stacks: captured addresses normalized to (file,
//! build id, offset) while their process lives, symbolized later with
//! blazesym, even after the process has gone.

mod maps;
mod service;
mod symbols;

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use aya::maps::{MapData, StackTraceMap};
use profiler_common::STACK_UNSAMPLED;
use serde::{Deserialize, Serialize};

pub use maps::{Location, Mapping, normalize, parse_maps};
pub use service::SymbolService;
pub use symbols::{DEFAULT_CACHE_FRAMES, SymFrame, Symbols};

use crate::events::RawSite;

/// One frame of an allocation stack, normalized while its process lived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address as the process saw it.
    pub address: u64,
    /// Where it lies in a mapped file, when known.
    pub location: Option<Location>,
}

/// How much of an allocation's stack is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackStatus {
    /// The immediate caller and the frame-pointer walk above it.
    #[default]
    Full,
    /// Only the immediate caller: the stack was not sampled (`--stack-sample`).
    Unsampled,
    /// Only the immediate caller: the kernel could not capture the stack
    /// (stack map full or a hash collision; counted in `stack_failed`).
    NotCaptured,
}

impl StackStatus {
    /// What a raw site's stack id says about its stack.
    pub fn of(stack_id: i32) -> Self {
        match stack_id {
            STACK_UNSAMPLED => Self::Unsampled,
            id if id < 0 => Self::NotCaptured,
            _ => Self::Full,
        }
    }
}

/// The normalized stack of one allocation site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Immediate caller first.
    pub frames: Vec<Frame>,
    /// How much of the stack is known.
    pub status: StackStatus,
}

/// The user stack of an allocation: the immediate caller first, then the
/// frame-pointer walk without its first entry (the allocator itself).
///
/// At the allocator's entry the walk starts from the caller's frame and so
/// misses the caller; the return address read at the stack pointer supplies
/// it. Kernels that fix this up themselves repeat it, which is dropped.
pub fn compose_stack(caller: u64, walked: &[u64]) -> Vec<u64> {
    let rest = walked.get(1..).unwrap_or_default();
    let rest = match rest.first() {
        Some(&first) if first == caller => &rest[1..],
        _ => rest,
    };
    std::iter::once(caller)
        .filter(|&a| a != 0)
        .chain(rest.iter().copied())
        .collect()
}

/// A file as a path and an inode: one version of it.
type FileVersion = (Arc<Path>, u64);

/// Normalizes each process's allocation sites once, while it lives.
#[derive(Default)]
pub struct SiteResolver {
    maps: HashMap<u32, Vec<Mapping>>,
    stacks: HashMap<(u32, RawSite), Arc<Stack>>,
    build_ids: HashMap<FileVersion, Option<Arc<[u8]>>>,
}

impl SiteResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// The normalized stack of `site` of process `tgid`, normalized now if it is new.
    pub fn observe(
        &mut self,
        tgid: u32,
        site: RawSite,
        stack_map: &StackTraceMap<MapData>,
    ) -> Arc<Stack> {
        if let Some(stack) = self.stacks.get(&(tgid, site)) {
            return Arc::clone(stack);
        }
        let mut status = StackStatus::of(site.stack_id);
        let walked: Vec<u64> = match u32::try_from(site.stack_id) {
            Ok(id) => match stack_map.get(&id, 0) {
                Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
                Err(_) => {
                    status = StackStatus::NotCaptured;
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        let frames = compose_stack(site.caller, &walked)
            .into_iter()
            .map(|address| self.frame(tgid, address))
            .collect();
        let stack = Arc::new(Stack { frames, status });
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

    /// Forgets a process's mappings (it exec'd a new image).
    pub fn forget_maps(&mut self, tgid: u32) {
        self.maps.remove(&tgid);
    }

    fn frame(&mut self, tgid: u32, address: u64) -> Frame {
        let mut location = self.maps.get(&tgid).and_then(|m| normalize(m, address));
        if location.is_none() {
            let mappings = self.read_maps(tgid);
            location = normalize(&mappings, address);
            self.maps.insert(tgid, mappings);
        }
        Frame { address, location }
    }

    /// The process's executable mappings with their files' build ids.
    fn read_maps(&mut self, tgid: u32) -> Vec<Mapping> {
        let mut mappings = fs::read_to_string(format!("/proc/{tgid}/maps"))
            .map(|text| parse_maps(&text))
            .unwrap_or_default();
        for mapping in &mut mappings {
            mapping.build_id = self
                .build_ids
                .entry((Arc::clone(&mapping.path), mapping.inode))
                .or_insert_with(|| read_build_id(&mapping.path))
                .clone();
        }
        mappings
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
    use super::compose_stack;

    #[test]
    fn caller_comes_first_and_the_allocator_frame_goes() {
        assert_eq!(
            compose_stack(0x10, &[0xa110c, 0x20, 0x30]),
            vec![0x10, 0x20, 0x30]
        );
    }

    #[test]
    fn a_caller_the_kernel_already_found_is_not_repeated() {
        assert_eq!(
            compose_stack(0x10, &[0xa110c, 0x10, 0x20]),
            vec![0x10, 0x20]
        );
    }

    #[test]
    fn missing_pieces_leave_what_is_known() {
        assert_eq!(compose_stack(0x10, &[]), vec![0x10]);
        assert_eq!(compose_stack(0, &[0xa110c, 0x20]), vec![0x20]);
    }
}
