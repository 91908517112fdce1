//! The daemon's listeners (the API socket, /metrics) serve at most a bounded
//! number of connections at once, so that clients that connect and say
//! nothing can neither take all the daemon's descriptors nor keep others
//! out. Past the bound, the oldest connection still waiting for its request
//! is closed to make room for the newcomer; when every one is answering a
//! request, the newcomer is closed instead. An accept that fails (out of
//! descriptors, most often) is retried after a pause, not at once.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;

/// Connections served at once by one listener.
pub const MAX_CONNECTIONS: usize = 256;

/// The pause after a failed accept: long enough not to spin, short enough
/// that a descriptor freed meanwhile is soon used.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// One listener's connections.
#[derive(Clone, Debug)]
pub struct Slots {
    shared: Arc<Mutex<Shared>>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Shared {
    next_id: u64,
    open: usize,
    /// Connections still waiting for their request, oldest first.
    waiting: VecDeque<(u64, Arc<Notify>)>,
}

/// A connection's place: given back when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    closed: Arc<Notify>,
    shared: Arc<Mutex<Shared>>,
}

impl Slots {
    /// At most `cap` connections at once (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            shared: Arc::default(),
            cap: cap.max(1),
        }
    }

    /// A place for a connection just accepted, making room by closing the
    /// oldest waiting one if need be; `None` when every place is taken by a
    /// connection being answered.
    pub fn take(&self) -> Option<Slot> {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.open >= self.cap {
            // Its task ends at the next turn: until then both are open,
            // which makes at most twice the bound, briefly.
            let (_, oldest) = shared.waiting.pop_front()?;
            oldest.notify_one();
        }
        shared.open += 1;
        shared.next_id += 1;
        let id = shared.next_id;
        let closed = Arc::new(Notify::new());
        shared.waiting.push_back((id, Arc::clone(&closed)));
        Some(Slot {
            id,
            closed,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }
}

impl Slot {
    /// Its request has come: it is no longer closed to make room.
    pub fn answering(&self) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.waiting.retain(|(id, _)| *id != self.id);
    }

    /// Resolves when the connection is closed to make room for another.
    pub async fn closed(&self) {
        self.closed.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.waiting.retain(|(id, _)| *id != self.id);
        shared.open -= 1;
    }
}

/// Waits after an accept that failed, saying why the first time of a run of
/// failures (`failing` counts them; reset it on a success).
pub async fn after_failed_accept(what: &str, err: &io::Error, failing: &mut u64) {
    if *failing == 0 {
        tracing::warn!(listener = what, error = %err, "accepting a connection failed; retrying");
    }
    *failing += 1;
    tokio::time::sleep(ACCEPT_RETRY).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_the_oldest_waiting_connection_makes_room() {
        let slots = Slots::new(2);
        let first = slots.take().expect("room");
        let second = slots.take().expect("room");
        second.answering();
        let third = slots.take().expect("room made");
        // The first was told to close; the second, answering, was not.
        assert!(closed_now(&first), "the oldest waiting one is closed");
        assert!(!closed_now(&second));
        drop(first);
        assert_eq!(slots.open(), 2);
        drop(third);
        drop(second);
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn when_every_connection_is_answering_a_newcomer_is_refused() {
        let slots = Slots::new(1);
        let busy = slots.take().expect("room");
        busy.answering();
        assert!(slots.take().is_none());
        drop(busy);
        assert!(slots.take().is_some(), "its place is free again");
    }

    /// Whether `slot.closed()` is ready at once.
    fn closed_now(slot: &Slot) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::select! {
                biased;
                () = slot.closed() => true,
                () = tokio::task::yield_now() => false,
            }
        })
    }
}
