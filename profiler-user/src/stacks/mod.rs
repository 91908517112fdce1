//! Allocation sites as stacks: captured addresses normalized to (file,
//! offset) while their process lives, symbolized later with blazesym.

mod maps;
mod symbols;

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use aya::maps::{MapData, StackTraceMap};

pub use maps::{Mapping, normalize, parse_maps};
pub use symbols::{SymFrame, Symbols};

use crate::events::RawSite;

/// One frame of an allocation stack, normalized while its process lived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address as the process saw it.
    pub address: u64,
    /// The mapped file holding it and the offset in that file, when known.
    pub location: Option<(Arc<Path>, u64)>,
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

/// Normalizes each process's allocation sites once, while it lives.
#[derive(Default)]
pub struct SiteResolver {
    maps: HashMap<u32, Vec<Mapping>>,
    stacks: HashMap<(u32, RawSite), Arc<[Frame]>>,
}

impl SiteResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Normalizes `site` of process `tgid` if it is new.
    pub fn observe(&mut self, tgid: u32, site: RawSite, stack_map: &StackTraceMap<MapData>) {
        if self.stacks.contains_key(&(tgid, site)) {
            return;
        }
        let walked: Vec<u64> = u32::try_from(site.stack_id)
            .ok()
            .and_then(|id| stack_map.get(&id, 0).ok())
            .map(|trace| trace.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default();
        let frames: Arc<[Frame]> = compose_stack(site.caller, &walked)
            .into_iter()
            .map(|address| self.frame(tgid, address))
            .collect();
        self.stacks.insert((tgid, site), frames);
    }

    /// The normalized stack of a site seen by [`Self::observe`].
    pub fn frames(&self, tgid: u32, site: RawSite) -> Option<Arc<[Frame]>> {
        self.stacks.get(&(tgid, site)).cloned()
    }

    /// Gives a forked child its parent's mappings: the child has the same,
    /// and may exit before its own can be read.
    pub fn inherit_maps(&mut self, child: u32, parent: u32) {
        let mappings = match self.maps.get(&parent) {
            Some(mappings) => mappings.clone(),
            None => read_maps(parent),
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
            let mappings = read_maps(tgid);
            location = normalize(&mappings, address);
            self.maps.insert(tgid, mappings);
        }
        Frame { address, location }
    }
}

fn read_maps(tgid: u32) -> Vec<Mapping> {
    fs::read_to_string(format!("/proc/{tgid}/maps"))
        .map(|text| parse_maps(&text))
        .unwrap_or_default()
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
