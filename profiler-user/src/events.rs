//! Decoding ring-buffer records into typed events: pure and bounds-checked.

use profiler_common::{Event, kind};
use thiserror::Error;

/// Size in bytes of one wire record.
pub const RECORD_SIZE: usize = size_of::<Event>();

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapEvent {
    /// A block of `size` requested bytes was allocated at `ptr`.
    Alloc {
        /// Caller's process and thread.
        task: Task,
        /// Address of the block.
        ptr: u64,
        /// Requested bytes.
        size: u64,
        /// Where it was allocated.
        site: RawSite,
        /// Nanoseconds since boot.
        time_ns: u64,
    },
    /// The block at `ptr` was freed.
    Free {
        /// Caller's process and thread.
        task: Task,
        /// Address of the block.
        ptr: u64,
    },
    /// realloc freed its old block `ptr` at entry (undone by [`HeapEvent::ReallocFail`]).
    ReallocFree {
        /// Caller's process and thread.
        task: Task,
        /// Address of the old block.
        ptr: u64,
    },
    /// realloc failed: the thread's old block `ptr` is live again.
    ReallocFail {
        /// Caller's process and thread.
        task: Task,
        /// Address of the old block.
        ptr: u64,
    },
    /// Process `tgid` exec'd a new image.
    Exec {
        /// The process.
        tgid: u32,
    },
    /// Process `tgid` exited.
    Exit {
        /// The process.
        tgid: u32,
    },
    /// Process `child` was forked from `parent`.
    Fork {
        /// The new process.
        child: u32,
        /// The process it was forked from.
        parent: u32,
    },
}

/// A thread of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
}

/// Where an allocation was made, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawSite {
    /// Id in the stack-trace map, or a negative errno when no stack was captured.
    pub stack_id: i32,
    /// Return address of the allocator call.
    pub caller: u64,
}

/// Why a record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not exactly one [`Event`] long.
    #[error("record of {len} bytes, expected {RECORD_SIZE}")]
    Length {
        /// Bytes received.
        len: usize,
    },
    /// The kind code is unknown.
    #[error("unknown record kind {kind}")]
    Kind {
        /// The code received.
        kind: u32,
    },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<HeapEvent, DecodeError> {
    let raw = read_event(bytes)?;
    let task = Task {
        tgid: raw.tgid,
        tid: raw.tid,
    };
    Ok(match raw.kind {
        kind::ALLOC => HeapEvent::Alloc {
            task,
            ptr: raw.ptr,
            size: raw.size,
            site: RawSite {
                stack_id: raw.stack_id,
                caller: raw.caller,
            },
            time_ns: raw.ktime_ns,
        },
        kind::FREE => HeapEvent::Free { task, ptr: raw.ptr },
        kind::REALLOC_FREE => HeapEvent::ReallocFree { task, ptr: raw.ptr },
        kind::REALLOC_FAIL => HeapEvent::ReallocFail { task, ptr: raw.ptr },
        kind::EXEC => HeapEvent::Exec { tgid: raw.tgid },
        kind::EXIT => HeapEvent::Exit { tgid: raw.tgid },
        kind::FORK => HeapEvent::Fork {
            child: raw.tgid,
            parent: raw.ptr as u32,
        },
        other => return Err(DecodeError::Kind { kind: other }),
    })
}

fn read_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != RECORD_SIZE {
        return Err(DecodeError::Length { len: bytes.len() });
    }
    // SAFETY: the length is checked above; Event is plain integers, valid for
    // any bit pattern, and read_unaligned needs no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(event: &Event) -> Vec<u8> {
        // SAFETY: test helper viewing a repr(C) integer struct as bytes.
        unsafe { std::slice::from_raw_parts((event as *const Event).cast::<u8>(), RECORD_SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_an_allocation() {
        let raw = Event {
            kind: kind::ALLOC,
            tgid: 10,
            tid: 11,
            stack_id: 7,
            ptr: 0x1000,
            size: 64,
            caller: 0x4011,
            ktime_ns: 99,
        };
        let expected = HeapEvent::Alloc {
            task: Task { tgid: 10, tid: 11 },
            ptr: 0x1000,
            size: 64,
            site: RawSite {
                stack_id: 7,
                caller: 0x4011,
            },
            time_ns: 99,
        };
        assert_eq!(decode(&bytes_of(&raw)), Ok(expected));
    }

    #[test]
    fn decodes_lifecycle_records() {
        let fork = Event {
            kind: kind::FORK,
            tgid: 20,
            ptr: 10,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes_of(&fork)),
            Ok(HeapEvent::Fork {
                child: 20,
                parent: 10
            })
        );
        let exit = Event {
            kind: kind::EXIT,
            tgid: 20,
            ..Event::default()
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(HeapEvent::Exit { tgid: 20 }));
    }

    #[test]
    fn rejects_wrong_lengths_and_kinds() {
        let raw = Event {
            kind: 99,
            ..Event::default()
        };
        let bytes = bytes_of(&raw);
        assert_eq!(decode(&bytes), Err(DecodeError::Kind { kind: 99 }));
        assert_eq!(
            decode(&bytes[..RECORD_SIZE - 1]),
            Err(DecodeError::Length {
                len: RECORD_SIZE - 1
            })
        );
        assert_eq!(decode(&[]), Err(DecodeError::Length { len: 0 }));
    }
}
