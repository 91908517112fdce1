//! `--scope` selectors at work: the processes they pick get probes of their
//! own — on the C library and on whatever other allocator each uses (found
//! by symbol, as for scope `all`) — those running at start and those that
//! appear later (exec, fork); a process that stops matching (exec of another
//! program) is let go.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    sync::{Arc, Mutex, mpsc},
    thread,
};

use super::{DaemonState, allocator_keeper::running_pids};
use aya::programs::uprobe::UProbeScope;

use crate::{
    coverage::{AllocatorFile, Coverage, Discovery},
    events::HeapEvent,
    probes::{AttachedProbes, Probes, plan_allocator},
    scope::{ProcessFacts, Scope},
    stacks::{FileId, file_id},
};

/// A process whose image appeared, changed or ended, or whose tier changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Exec'd a new image, or was forked from a traced process.
    Appeared(u32),
    /// Exited.
    Ended(u32),
    /// Grows: traced exactly from now on (scope `tiered`).
    Escalated(u32),
    /// Its escalation ended: let go unless a selector pins it.
    Released(u32),
}

impl Change {
    /// The change an applied event reports, if any.
    pub fn of(event: &HeapEvent) -> Option<Self> {
        match *event {
            HeapEvent::Exec { tgid } => Some(Self::Appeared(tgid)),
            HeapEvent::Fork { child, .. } => Some(Self::Appeared(child)),
            HeapEvent::Exit { tgid } => Some(Self::Ended(tgid)),
            _ => None,
        }
    }
}

/// Attaches and lets go of the selected processes' probes.
pub struct ScopeKeeper {
    scope: Scope,
    probes: Arc<Mutex<Probes>>,
    state: Arc<Mutex<DaemonState>>,
    attached: HashMap<u32, AttachedProbes>,
    /// The allocators' files beside the C library each process's probes cover.
    files: HashMap<u32, HashSet<FileId>>,
    /// Processes traced because they grow, beside those the scope selects.
    escalated: HashSet<u32>,
    discovery: Discovery,
    /// The C library attached at load, which every attach includes.
    load_file: Option<FileId>,
}

impl ScopeKeeper {
    /// A keeper of `scope` (not [`Scope::All`]).
    pub fn new(scope: Scope, probes: Arc<Mutex<Probes>>, state: Arc<Mutex<DaemonState>>) -> Self {
        let load_file = {
            let probes = probes.lock().unwrap_or_else(|e| e.into_inner());
            file_id(probes.libc())
        };
        Self {
            scope,
            probes,
            state,
            attached: HashMap::new(),
            files: HashMap::new(),
            escalated: HashSet::new(),
            discovery: Discovery::new(),
            load_file,
        }
    }

    /// Probes every running process the scope selects.
    pub fn attach_running(&mut self) {
        for pid in running_pids() {
            self.consider(pid, false);
        }
    }

    /// Applies changes until the reader's side of `changes` hangs up; then
    /// lets go of every process (dropping their probes detaches them).
    pub fn run(mut self, changes: &mpsc::Receiver<Change>) {
        for change in changes {
            match change {
                Change::Appeared(pid) => self.consider(pid, true),
                Change::Ended(pid) => {
                    self.escalated.remove(&pid);
                    self.let_go(pid, false);
                }
                Change::Escalated(pid) => {
                    self.escalated.insert(pid);
                    if !self.attached.contains_key(&pid) {
                        self.attach(pid, false);
                        self.note_escalated(pid);
                    }
                }
                Change::Released(pid) => {
                    self.escalated.remove(&pid);
                    self.consider(pid, false);
                }
            }
        }
    }

    /// Probes `pid` if the scope selects it, lets it go if it no longer
    /// does. `seen` when the kernel already reported it (its heap state may
    /// exist and must go with it).
    fn consider(&mut self, pid: u32, seen: bool) {
        if pid == std::process::id() {
            return;
        }
        let picked = self.escalated.contains(&pid)
            || ProcessFacts::read(pid).is_some_and(|facts| self.scope.selects(&facts));
        match (picked, self.attached.contains_key(&pid)) {
            (true, false) => self.attach(pid, seen),
            // A new image (or a fork seen after its exec) may use another
            // allocator than the one found when it was picked.
            (true, true) if seen => self.cover_new_files(pid),
            (false, true) => self.let_go(pid, true),
            (false, false) if seen => {
                self.release(pid);
                self.forget(pid);
            }
            _ => {}
        }
    }

    /// Probes `pid` alone: the C library and its other allocators (`fresh`:
    /// it has just exec'd, its libraries are not mapped yet).
    fn attach(&mut self, pid: u32, fresh: bool) {
        let Some(nonzero) = NonZeroU32::new(pid) else {
            return;
        };
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .session
            .trace_again(pid);
        let others = self.other_allocators(pid, fresh);
        let attached = {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.attach_process(nonzero).map(|mut attached| {
                attach_files(&mut probes, nonzero, &others, &mut attached);
                attached
            })
        };
        match attached {
            Ok(probes) => {
                {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.session.remember_maps(pid);
                    state.coverage.insert(pid, None);
                }
                tracing::info!(pid, "scope: tracing");
                self.attached.insert(pid, probes);
                self.files
                    .insert(pid, others.iter().map(|file| file.id).collect());
            }
            Err(err) => {
                self.release(pid);
                self.forget(pid);
                tracing::debug!(pid, error = %err, "scope: not attached (gone?)");
            }
        }
    }

    /// The allocators' files process `pid` uses beside the C library
    /// (`fresh`: it has just exec'd, its libraries are not mapped yet).
    fn other_allocators(&mut self, pid: u32, fresh: bool) -> Vec<AllocatorFile> {
        let coverage = if fresh {
            self.discovery.starting(pid)
        } else {
            self.discovery.running(pid)
        };
        match coverage {
            Some(Coverage::Traced(files)) => files
                .into_iter()
                .filter(|file| Some(file.id) != self.load_file)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Probes the allocators' files of `pid`'s new image its probes do not
    /// cover yet; those it had stay (detaching them would leave a gap).
    fn cover_new_files(&mut self, pid: u32) {
        let Some(nonzero) = NonZeroU32::new(pid) else {
            return;
        };
        let covered = self.files.get(&pid).cloned().unwrap_or_default();
        let new: Vec<AllocatorFile> = self
            .other_allocators(pid, true)
            .into_iter()
            .filter(|file| !covered.contains(&file.id))
            .collect();
        if new.is_empty() {
            return;
        }
        let Some(attached) = self.attached.get_mut(&pid) else {
            return;
        };
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        attach_files(&mut probes, nonzero, &new, attached);
        self.files
            .entry(pid)
            .or_default()
            .extend(new.iter().map(|file| file.id));
    }

    /// Stops tracing `pid`; with `alive`, also forgets its heap state (an
    /// ended process's goes with its exit record).
    fn let_go(&mut self, pid: u32, alive: bool) {
        self.files.remove(&pid);
        let Some(probes) = self.attached.remove(&pid) else {
            return;
        };
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // A process let go by the cost governor stays marked so.
            if state.coverage.get(&pid) == Some(&None) {
                state.coverage.remove(&pid);
            }
        }
        self.release(pid);
        if alive {
            self.forget(pid);
            tracing::info!(pid, "scope: no longer selected");
        }
        // Detaching waits for a grace period: off this thread.
        thread::spawn(move || {
            drop(probes);
            tracing::debug!(pid, "scope: detached");
        });
    }

    fn release(&self, pid: u32) {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = probes.release_process(pid) {
            tracing::warn!(pid, error = %err, "scope: could not stop tracing");
        }
    }

    /// Marks an escalated process as traced from now: what it allocated
    /// before is unseen, and its reports say so.
    fn note_escalated(&self, pid: u32) {
        if self.attached.contains_key(&pid) {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.session.note_attached_late(pid);
        }
    }

    /// Drops the heap state the tracker may hold for `pid` (a child forked
    /// from a traced process starts with a copy of its parent's).
    fn forget(&self, pid: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.forget_process(pid);
    }
}

/// Attaches the probes of `files` to process `pid` alone, into `attached`;
/// a file whose probes do not attach is logged and skipped.
fn attach_files(
    probes: &mut Probes,
    pid: NonZeroU32,
    files: &[AllocatorFile],
    attached: &mut AttachedProbes,
) {
    for file in files {
        let more = plan_allocator(&file.path, false)
            .and_then(|plan| probes.attach_allocator(&plan, UProbeScope::OneProcess(pid)));
        match more {
            Ok(more) => attached.absorb(more),
            Err(err) => {
                tracing::warn!(pid, file = %file.shown.display(), error = %err, "scope: allocator not attached");
            }
        }
    }
}
