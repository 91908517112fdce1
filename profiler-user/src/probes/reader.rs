//! Draining the ring buffer: poll with a timeout, then read every record.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};

use super::ProbeError;

/// Reads records from the kernel's ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingBuf::try_from(map).map_err(|source| super::map_error("EVENTS", source))?;
        Ok(Self { ring })
    }

    /// Waits until the kernel wakes the reader or `timeout` passes.
    /// The programs wake it only past a fill threshold, so callers drain after
    /// a timeout too.
    pub fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, count 1.
        let ret = unsafe { libc::poll(&mut fd, 1, millis) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Hands every pending record to `apply`; returns how many there were.
    pub fn drain(&mut self, mut apply: impl FnMut(&[u8])) -> usize {
        let mut count = 0;
        while let Some(item) = self.ring.next() {
            apply(&item);
            count += 1;
        }
        count
    }
}
