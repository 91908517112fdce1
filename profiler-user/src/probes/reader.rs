//! Draining the ring buffer: poll with a timeout, then read every record.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};

use super::ProbeError;
use crate::procinfo::monotonic_ns;

/// Reads records from the kernel's ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingBuf::try_from(map).map_err(|source| super::map_error("EVENTS", source))?;
        Ok(Self { ring })
    }

    /// Waits until the kernel wakes the reader, `also` becomes readable, or
    /// `timeout` passes. The programs wake it only past a fill threshold, so
    /// callers drain after a timeout too.
    pub fn wait(&self, timeout: Duration, also: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let watch = |fd: BorrowedFd<'_>| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            watch(self.ring.as_fd()),
            watch(also.unwrap_or(self.ring.as_fd())),
        ];
        let watched = if also.is_some() { 2 } else { 1 };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the first `watched` entries of `fds` are valid pollfds.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), watched, millis) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Hands every pending record to `apply` with the time the drain began
    /// (CLOCK_MONOTONIC nanoseconds: an allocation's time, since records
    /// carry none); returns that time.
    pub fn drain(&mut self, mut apply: impl FnMut(&[u8], u64)) -> u64 {
        let read_ns = monotonic_ns();
        while let Some(item) = self.ring.next() {
            apply(&item, read_ns);
        }
        read_ns
    }
}

/// Records drained from the ring buffer but not yet applied, with when
/// they were read: the reader keeps draining while whoever applies them is
/// busy (a tick scanning millions of live blocks), so the ring never fills
/// for that. One buffer, reused; no allocation per record.
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// (index of the first record read at a time, that time), in order.
    reads: Vec<(usize, u64)>,
}

/// Capacity a backlog keeps once applied; a burst's larger buffer is given back.
const BACKLOG_KEPT_BYTES: usize = 1 << 20;

impl Backlog {
    /// An empty backlog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a copy of one record, read at `read_ns`.
    pub fn push(&mut self, record: &[u8], read_ns: u64) {
        if self.reads.last().map(|&(_, at)| at) != Some(read_ns) {
            self.reads.push((self.ends.len(), read_ns));
        }
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    /// Bytes of the records held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Hands every record and its read time to `apply`, oldest first, and
    /// empties the backlog.
    pub fn apply_all(&mut self, mut apply: impl FnMut(&[u8], u64)) {
        let mut start = 0;
        let mut reads = self.reads.iter().peekable();
        let mut read_ns = 0;
        for (index, &end) in self.ends.iter().enumerate() {
            if let Some(&(_, at)) = reads.next_if(|&&(first, _)| first == index) {
                read_ns = at;
            }
            apply(&self.bytes[start..end], read_ns);
            start = end;
        }
        self.bytes.clear();
        self.ends.clear();
        self.reads.clear();
        self.bytes.shrink_to(BACKLOG_KEPT_BYTES);
        self.ends.shrink_to(BACKLOG_KEPT_BYTES / 24);
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    #[test]
    fn records_come_back_whole_and_in_order_then_the_backlog_is_empty() {
        let mut backlog = Backlog::new();
        let records: [(&[u8], u64); 4] = [
            (&[1; 24], 7),
            (&[2; 40], 7),
            (&[3; 1032], 9),
            (&[4; 24], 12),
        ];
        for (record, read_ns) in records {
            backlog.push(record, read_ns);
        }
        assert_eq!(backlog.bytes(), 24 + 40 + 1032 + 24);
        let mut seen = Vec::new();
        backlog.apply_all(|r, read_ns| seen.push((r.to_vec(), read_ns)));
        assert_eq!(seen, records.map(|(r, read_ns)| (r.to_vec(), read_ns)));
        assert_eq!(backlog.bytes(), 0);
        backlog.apply_all(|_, _| panic!("nothing left"));
        backlog.push(&[5; 24], 20);
        backlog.apply_all(|r, read_ns| assert_eq!((r, read_ns), (&[5; 24][..], 20)));
    }
}
