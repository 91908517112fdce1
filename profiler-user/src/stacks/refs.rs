//! Which processes use each id of the kernel's stack map. The map never
//! forgets a stack by itself, and every new process (with its own address
//! layout) brings new stacks: without removing the stacks of processes that
//! have gone, a long-running daemon's map fills and every new stack fails.
//! Pure: the daemon feeds it events and removes what it returns.

use std::collections::{HashMap, HashSet};

/// Users of each stack id, and the ids no process uses any more.
#[derive(Debug, Default)]
pub struct StackRefs {
    by_process: HashMap<u32, HashSet<u32>>,
    users: HashMap<u32, u32>,
    unused: HashSet<u32>,
}

impl StackRefs {
    /// Process `tgid` allocated with stack `stack_id` (negative: none captured).
    pub fn used(&mut self, tgid: u32, stack_id: i32) {
        let Ok(id) = u32::try_from(stack_id) else {
            return;
        };
        if self.by_process.entry(tgid).or_default().insert(id) {
            *self.users.entry(id).or_insert(0) += 1;
            self.unused.remove(&id);
        }
    }

    /// A forked child holds copies of its parent's blocks, and so their stacks.
    pub fn inherit(&mut self, child: u32, parent: u32) {
        let ids: Vec<u32> = self
            .by_process
            .get(&parent)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.used(child, id as i32);
        }
    }

    /// Process `tgid` exited or exec'd: its stacks lose a user.
    pub fn release(&mut self, tgid: u32) {
        for id in self.by_process.remove(&tgid).unwrap_or_default() {
            let Some(users) = self.users.get_mut(&id) else {
                continue;
            };
            *users -= 1;
            if *users == 0 {
                self.users.remove(&id);
                self.unused.insert(id);
            }
        }
    }

    /// The ids no process uses any more, forgotten here: remove them from the map.
    pub fn take_unused(&mut self) -> Vec<u32> {
        self.unused.drain().collect()
    }

    /// Stack ids in use.
    pub fn in_use(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_unused_once_its_last_process_is_gone() {
        let mut refs = StackRefs::default();
        refs.used(1, 7);
        refs.used(1, 7);
        refs.used(2, 7);
        refs.used(2, 8);
        refs.used(2, -17);
        assert_eq!(refs.in_use(), 2);
        refs.release(1);
        assert!(refs.take_unused().is_empty(), "process 2 still uses 7");
        refs.release(2);
        let mut unused = refs.take_unused();
        unused.sort_unstable();
        assert_eq!(unused, [7, 8]);
        assert_eq!(refs.in_use(), 0);
        assert!(refs.take_unused().is_empty());
    }

    #[test]
    fn a_forked_child_keeps_its_parents_stacks() {
        let mut refs = StackRefs::default();
        refs.used(1, 7);
        refs.inherit(2, 1);
        refs.release(1);
        assert!(refs.take_unused().is_empty());
        refs.release(2);
        assert_eq!(refs.take_unused(), [7]);
    }

    #[test]
    fn a_stack_used_again_before_removal_is_kept() {
        let mut refs = StackRefs::default();
        refs.used(1, 7);
        refs.release(1);
        refs.used(3, 7);
        assert!(refs.take_unused().is_empty());
        refs.release(99);
        assert_eq!(refs.in_use(), 1);
    }
}
