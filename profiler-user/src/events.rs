//! Decoding ring-buffer records into typed events: pure and bounds-checked.

use profiler_common::{
    AllocEvent, Event, MAX_STACK_DEPTH, STACK_UNSAMPLED, StackEvent, kind, stack_hash_seed,
    stack_hash_step,
};
use thiserror::Error;

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A heap or process change.
    Heap(HeapEvent),
    /// A user stack seen for the first time, which allocations name by its hash.
    Stack(StackRecord<'a>),
}

/// A decoded record of a heap or process change.
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
        /// When the record was read, CLOCK_MONOTONIC nanoseconds (since
        /// boot): its allocation time, to within the reader's poll interval.
        time_ns: u64,
    },
    /// The block at `ptr` was freed.
    Free {
        /// Caller's process and thread.
        task: Task,
        /// Address of the block.
        ptr: u64,
    },
    /// The block at `ptr` was freed by a thread that has begun to exit; a
    /// block not live is one glibc's per-thread cache held, freed again.
    ExitingFree {
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
        /// It runs in its parent's memory until it execs or exits (vfork):
        /// its allocator calls are its parent's.
        shares_memory: bool,
    },
    /// The OOM killer chose process `tgid`, traced or not; its exit follows.
    OomVictim {
        /// The process.
        tgid: u32,
        /// Its anonymous resident bytes when it was chosen.
        anon_bytes: u64,
    },
}

/// The kinds of heap event, for counting them (`heapwatch_events_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`HeapEvent::Alloc`].
    Alloc,
    /// [`HeapEvent::Free`] and [`HeapEvent::ExitingFree`].
    Free,
    /// [`HeapEvent::ReallocFree`].
    ReallocFree,
    /// [`HeapEvent::ReallocFail`].
    ReallocFail,
    /// [`HeapEvent::Exec`].
    Exec,
    /// [`HeapEvent::Exit`].
    Exit,
    /// [`HeapEvent::Fork`].
    Fork,
    /// [`HeapEvent::OomVictim`].
    OomVictim,
}

impl EventKind {
    /// Every kind, in the order of their codes.
    pub const ALL: [Self; 8] = [
        Self::Alloc,
        Self::Free,
        Self::ReallocFree,
        Self::ReallocFail,
        Self::Exec,
        Self::Exit,
        Self::Fork,
        Self::OomVictim,
    ];
}

impl HeapEvent {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Alloc { .. } => EventKind::Alloc,
            Self::Free { .. } | Self::ExitingFree { .. } => EventKind::Free,
            Self::ReallocFree { .. } => EventKind::ReallocFree,
            Self::ReallocFail { .. } => EventKind::ReallocFail,
            Self::Exec { .. } => EventKind::Exec,
            Self::Exit { .. } => EventKind::Exit,
            Self::Fork { .. } => EventKind::Fork,
            Self::OomVictim { .. } => EventKind::OomVictim,
        }
    }
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
    /// Hash of the allocation's user stack, sent once in a [`StackRecord`].
    pub stack: u64,
}

/// A user stack as the kernel sent it, borrowed from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRecord<'a> {
    /// The hash allocations name it by.
    pub hash: u64,
    /// False when only the immediate caller was read (`--stack-sample`).
    pub sampled: bool,
    frames: &'a [u8],
}

impl StackRecord<'_> {
    /// Return addresses, immediate caller first.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.frames
            .chunks_exact(8)
            .map(|chunk| u64::from_ne_bytes(chunk.try_into().unwrap_or_default()))
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not as long as its kind's records are.
    #[error("record of {len} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        len: usize,
        /// Bytes a record of its kind has.
        expected: usize,
    },
    /// The kind code is unknown.
    #[error("unknown record kind {kind}")]
    Kind {
        /// The code received.
        kind: u32,
    },
    /// A stack record whose depth, flags or hash do not hold together.
    #[error("inconsistent stack record (depth {depth}, flags {flags:#x})")]
    Stack {
        /// Frames it claims.
        depth: u16,
        /// Flags it carries.
        flags: u16,
    },
}

/// Decodes one ring-buffer record, read from the ring at `read_ns`
/// (CLOCK_MONOTONIC nanoseconds), which an allocation takes as its time.
pub fn decode(bytes: &[u8], read_ns: u64) -> Result<Record<'_>, DecodeError> {
    let kind = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()))
        .ok_or(DecodeError::Length {
            len: bytes.len(),
            expected: size_of::<Event>(),
        })?;
    match kind {
        kind::ALLOC => decode_alloc(bytes, read_ns).map(Record::Heap),
        kind::STACK => decode_stack(bytes).map(Record::Stack),
        _ => decode_event(bytes).map(Record::Heap),
    }
}

fn decode_alloc(bytes: &[u8], read_ns: u64) -> Result<HeapEvent, DecodeError> {
    let raw: AllocEvent = read(bytes)?;
    Ok(HeapEvent::Alloc {
        task: Task {
            tgid: raw.tgid,
            tid: raw.tid,
        },
        ptr: raw.ptr,
        size: raw.size,
        site: RawSite { stack: raw.stack },
        time_ns: read_ns,
    })
}

fn decode_event(bytes: &[u8]) -> Result<HeapEvent, DecodeError> {
    let raw: Event = read(bytes)?;
    let task = Task {
        tgid: raw.tgid,
        tid: raw.tid,
    };
    Ok(match raw.kind {
        kind::FREE => HeapEvent::Free { task, ptr: raw.ptr },
        kind::EXITING_FREE => HeapEvent::ExitingFree { task, ptr: raw.ptr },
        kind::REALLOC_FREE => HeapEvent::ReallocFree { task, ptr: raw.ptr },
        kind::REALLOC_FAIL => HeapEvent::ReallocFail { task, ptr: raw.ptr },
        kind::EXEC => HeapEvent::Exec { tgid: raw.tgid },
        kind::EXIT => HeapEvent::Exit { tgid: raw.tgid },
        kind::FORK => HeapEvent::Fork {
            child: raw.tgid,
            parent: raw.ptr as u32,
            shares_memory: raw.ptr & kind::FORK_SHARES_MEMORY != 0,
        },
        kind::OOM_VICTIM => HeapEvent::OomVictim {
            tgid: raw.tgid,
            anon_bytes: raw.ptr.saturating_mul(1024),
        },
        other => return Err(DecodeError::Kind { kind: other }),
    })
}

/// Offset of [`StackEvent::frames`] in the record.
const FRAMES_OFFSET: usize = size_of::<StackEvent>() - 8 * MAX_STACK_DEPTH;

fn decode_stack(bytes: &[u8]) -> Result<StackRecord<'_>, DecodeError> {
    check_length(bytes, size_of::<StackEvent>())?;
    let field = |at: usize, len: usize| {
        let mut word = [0u8; 8];
        word[..len].copy_from_slice(&bytes[at..at + len]);
        u64::from_ne_bytes(word)
    };
    let (depth, flags, hash) = (field(4, 2) as u16, field(6, 2) as u16, field(8, 8));
    let inconsistent = DecodeError::Stack { depth, flags };
    if depth == 0 || usize::from(depth) > MAX_STACK_DEPTH || flags & !STACK_UNSAMPLED != 0 {
        return Err(inconsistent);
    }
    let record = StackRecord {
        hash,
        sampled: flags & STACK_UNSAMPLED == 0,
        frames: &bytes[FRAMES_OFFSET..FRAMES_OFFSET + 8 * usize::from(depth)],
    };
    if record
        .frames()
        .fold(stack_hash_seed(flags), stack_hash_step)
        != hash
    {
        return Err(inconsistent);
    }
    Ok(record)
}

fn check_length(bytes: &[u8], expected: usize) -> Result<(), DecodeError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::Length {
            len: bytes.len(),
            expected,
        })
    }
}

/// Reads a wire struct of exactly `bytes.len()` bytes.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_length(bytes, size_of::<T>())?;
    // SAFETY: the length is checked above; the wire types are plain integers,
    // valid for any bit pattern, and read_unaligned needs no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The bytes the kernel writes for a stack record of `frames`.
#[cfg(test)]
pub(crate) fn stack_record_bytes(frames: &[u64], flags: u16) -> Vec<u8> {
    let mut bytes = vec![0u8; size_of::<StackEvent>()];
    bytes[..4].copy_from_slice(&kind::STACK.to_ne_bytes());
    bytes[4..6].copy_from_slice(&(frames.len() as u16).to_ne_bytes());
    bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
    let hash = profiler_common::stack_hash(flags, frames);
    bytes[8..16].copy_from_slice(&hash.to_ne_bytes());
    for (i, frame) in frames.iter().enumerate() {
        let at = FRAMES_OFFSET + 8 * i;
        bytes[at..at + 8].copy_from_slice(&frame.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
