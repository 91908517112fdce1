//! A full stack to show beside a call site whose callers were not sampled
//! (`--stack-sample`): the kernel walks the whole stack of each call site's
//! first allocation and of one allocation in N after it.

use std::{cmp::Reverse, collections::HashMap};

use crate::{events::RawSite, stacks::StackStatus, tracker::SiteStats};

/// Per call site (the return address into its caller), the full-stack site
/// of that call site with the most allocations.
#[derive(Debug, Default)]
pub struct SampledStacks {
    by_caller: HashMap<u64, (u64, Reverse<RawSite>)>,
}

impl SampledStacks {
    /// From every site of a process; `stack_of` gives a site's stack status
    /// and immediate caller, when its stack is known.
    pub fn new(
        sites: &[SiteStats],
        stack_of: impl Fn(RawSite) -> Option<(StackStatus, u64)>,
    ) -> Self {
        let mut by_caller: HashMap<u64, (u64, Reverse<RawSite>)> = HashMap::new();
        for stats in sites {
            let Some((StackStatus::Full, caller)) = stack_of(stats.site) else {
                continue;
            };
            let candidate = (stats.allocs, Reverse(stats.site));
            let best = by_caller.entry(caller).or_insert(candidate);
            *best = (*best).max(candidate);
        }
        Self { by_caller }
    }

    /// The full-stack site sampled most often at call site `caller` (ties:
    /// the lower hash), if any was.
    pub fn for_caller(&self, caller: u64) -> Option<RawSite> {
        self.by_caller.get(&caller).map(|&(_, Reverse(site))| site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(stack: u64, allocs: u64) -> SiteStats {
        SiteStats {
            site: RawSite { stack },
            live_bytes: 0,
            live_blocks: 0,
            allocs,
            bytes_allocated: 0,
        }
    }

    #[test]
    fn the_full_stack_sampled_most_often_is_picked_for_each_call_site() {
        // Call site 0x10: full stacks 1 (3 allocs) and 2 (5), the unsampled 3;
        // call site 0x20: full stacks 4 and 5, 2 allocs each; 6 is not known.
        let sites = [
            site(1, 3),
            site(2, 5),
            site(3, 900),
            site(4, 2),
            site(5, 2),
            site(6, 7),
        ];
        let stacks = SampledStacks::new(&sites, |s| match s.stack {
            1 | 2 => Some((StackStatus::Full, 0x10)),
            3 => Some((StackStatus::Unsampled, 0x10)),
            4 | 5 => Some((StackStatus::Full, 0x20)),
            _ => None,
        });
        assert_eq!(stacks.for_caller(0x10), Some(RawSite { stack: 2 }));
        assert_eq!(stacks.for_caller(0x20), Some(RawSite { stack: 4 }));
        assert_eq!(stacks.for_caller(0x30), None);
    }

    #[test]
    fn no_full_stack_gives_nothing() {
        let stacks = SampledStacks::new(&[site(3, 10)], |_| Some((StackStatus::Unsampled, 0x10)));
        assert_eq!(stacks.for_caller(0x10), None);
    }
}
