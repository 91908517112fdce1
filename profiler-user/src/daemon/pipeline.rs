//! The reader and the applier, and how far they have got: a query waits
//! until every record the kernel wrote before it was asked has been applied,
//! so a snapshot shows each allocation the process made before it.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use super::{DaemonState, post_mortem::Victim, scope_keeper};
use crate::{
    events::HeapEvent,
    probes::{Backlog, EventReader},
};

/// How long the reader waits for a wakeup before draining anyway.
const READER_POLL: Duration = Duration::from_millis(50);
/// Records the reader holds while the applier is busy before it waits for
/// it (then the ring buffer fills, and what it cannot take is counted lost).
const MAX_BACKLOG_BYTES: usize = 32 << 20;

/// How far the pipeline has got. The reader marks each drain after which it
/// holds nothing back; the applier counts the batches it has applied; a
/// query wakes the reader and waits for both to pass the moment it was asked.
#[derive(Debug)]
pub struct Progress {
    marks: Mutex<Marks>,
    advanced: Condvar,
    wake: OwnedFd,
}

#[derive(Debug, Default)]
struct Marks {
    /// When the latest drain that left nothing held back began.
    drained_ns: u64,
    /// Batches handed to the applier by the end of that drain.
    handed_by_then: u64,
    /// Batches the applier has applied.
    applied: u64,
}

impl Progress {
    /// Nothing read, nothing applied.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            marks: Mutex::default(),
            advanced: Condvar::new(),
            // SAFETY: `fd` was just opened and nothing else owns it.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Blocks until every record the kernel wrote before `since_ns` has been
    /// applied, waking the reader first. False if `timeout` passed first.
    pub fn wait_applied(&self, since_ns: u64, timeout: Duration) -> bool {
        self.wake_reader();
        let deadline = Instant::now() + timeout;
        let Some(marks) = self.wait_while(self.lock(), deadline, |m| m.drained_ns < since_ns)
        else {
            return false;
        };
        let target = marks.handed_by_then;
        self.wait_while(marks, deadline, |m| m.applied < target)
            .is_some()
    }

    /// The fd the reader polls beside the ring buffer.
    fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn wake_reader(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full
        // counter (EAGAIN) already wakes the reader, so the result is moot.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Consumes pending wakeups, so the reader's next poll waits again.
    fn clear_wakeups(&self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
    }

    /// The reader: a drain that began at `read_ns` left nothing held back,
    /// `handed` batches in all having gone to the applier.
    fn drained(&self, read_ns: u64, handed: u64) {
        let mut marks = self.lock();
        marks.drained_ns = read_ns;
        marks.handed_by_then = handed;
        drop(marks);
        self.advanced.notify_all();
    }

    /// The applier: `applied` batches in all are applied.
    fn applied(&self, applied: u64) {
        self.lock().applied = applied;
        self.advanced.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while `blocked` holds, until `deadline`; `None` if it still held then.
    fn wait_while<'a>(
        &self,
        marks: MutexGuard<'a, Marks>,
        deadline: Instant,
        blocked: impl FnMut(&mut Marks) -> bool,
    ) -> Option<MutexGuard<'a, Marks>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (marks, waited) = self
            .advanced
            .wait_timeout_while(marks, left, blocked)
            .unwrap_or_else(|e| e.into_inner());
        (!waited.timed_out()).then_some(marks)
    }
}

/// Where the applier sends what it finds besides the state's own changes.
pub struct Outlets {
    /// Every process that appears or ends, for the scope keeper.
    pub changes: Option<mpsc::Sender<scope_keeper::Change>>,
    /// The OOM killer's victims, for their post-mortems.
    pub victims: mpsc::Sender<Victim>,
}

/// The reader and the applier: the reader only drains the ring buffer into
/// batches, so that it keeps up whatever the state costs (a tick holding it,
/// a table growing under a burst); the applier applies each batch to the
/// state, tells the scope keeper of every process that appears or ends, and
/// sends each OOM victim's state before its exit is applied. The reader
/// stops at `stop`; the applier when the reader is gone.
pub fn spawn(
    reader: EventReader,
    state: Arc<Mutex<DaemonState>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    outlets: Outlets,
) -> [thread::JoinHandle<()>; 2] {
    let (full, to_apply) = mpsc::sync_channel::<Backlog>(1);
    let (recycle, recycled) = mpsc::channel::<Backlog>();
    let reading = {
        let progress = Arc::clone(&progress);
        thread::spawn(move || read(reader, &progress, &stop, &full, &recycled))
    };
    let applying = thread::spawn(move || {
        let mut applied = 0;
        for mut batch in to_apply {
            apply(&mut batch, &state, &outlets);
            applied += 1;
            progress.applied(applied);
            let _ = recycle.send(batch);
        }
    });
    [reading, applying]
}

fn read(
    mut reader: EventReader,
    progress: &Progress,
    stop: &AtomicBool,
    full: &mpsc::SyncSender<Backlog>,
    recycled: &mpsc::Receiver<Backlog>,
) {
    let mut batch = Backlog::new();
    let mut handed = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Err(err) = reader.wait(READER_POLL, Some(progress.wake_fd())) {
            tracing::error!(error = %err, "polling the ring buffer failed");
            thread::sleep(READER_POLL);
        }
        progress.clear_wakeups();
        let read_ns = reader.drain(|bytes, read_ns| batch.push(bytes, read_ns));
        if batch.bytes() > 0 {
            match full.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(held)) if held.bytes() < MAX_BACKLOG_BYTES => {
                    batch = held;
                    continue;
                }
                Err(mpsc::TrySendError::Full(held)) => {
                    if full.send(held).is_err() {
                        return;
                    }
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
            batch = recycled.try_recv().unwrap_or_default();
            handed += 1;
        }
        progress.drained(read_ns, handed);
    }
}

fn apply(batch: &mut Backlog, state: &Mutex<DaemonState>, outlets: &Outlets) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    batch.apply_all(|bytes, read_ns| {
        let Some(event) = state.apply_record(bytes, read_ns) else {
            return;
        };
        if let HeapEvent::OomVictim { tgid, anon_bytes } = event {
            let _ = outlets.victims.send(state.oom_victim(tgid, anon_bytes));
        }
        let change = scope_keeper::Change::of(&event);
        if let (Some(change), Some(changes)) = (change, &outlets.changes) {
            let _ = changes.send(change);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procinfo::monotonic_ns;

    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn a_query_waits_for_a_drain_begun_after_it_was_asked() {
        let progress = Progress::new().expect("an eventfd");
        progress.drained(10, 0);
        assert!(progress.wait_applied(10, SHORT));
        assert!(!progress.wait_applied(11, SHORT), "no drain since 11");
    }

    #[test]
    fn a_query_waits_until_the_batches_handed_by_then_are_applied() {
        let progress = Progress::new().expect("an eventfd");
        progress.drained(20, 2);
        progress.applied(1);
        assert!(
            !progress.wait_applied(20, SHORT),
            "one batch still unapplied"
        );
        progress.applied(2);
        assert!(progress.wait_applied(20, SHORT));
    }

    #[test]
    fn a_waiting_query_wakes_the_reader_and_returns_once_it_has_caught_up() {
        let progress = Arc::new(Progress::new().expect("an eventfd"));
        let reader = {
            let progress = Arc::clone(&progress);
            thread::spawn(move || {
                let mut fd = libc::pollfd {
                    fd: progress.wake_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, count 1.
                let ready = unsafe { libc::poll(&mut fd, 1, 5_000) };
                assert_eq!(ready, 1, "the query did not wake the reader");
                progress.clear_wakeups();
                progress.drained(monotonic_ns(), 1);
                progress.applied(1);
            })
        };
        assert!(progress.wait_applied(monotonic_ns(), Duration::from_secs(5)));
        reader.join().expect("the reader thread");
    }
}
