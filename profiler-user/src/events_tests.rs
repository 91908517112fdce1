use profiler_common::stack_hash;
use proptest::prelude::*;

use super::*;

/// Decodes `bytes` read at time 0.
fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    super::decode(bytes, 0)
}

fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: test helper viewing a repr(C) integer struct as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[test]
fn decodes_an_allocation() {
    let raw = AllocEvent {
        kind: kind::ALLOC,
        tgid: 10,
        tid: 11,
        _pad: 0,
        ptr: 0x1000,
        size: 64,
        stack: 0xfeed,
    };
    let expected = HeapEvent::Alloc {
        task: Task { tgid: 10, tid: 11 },
        ptr: 0x1000,
        size: 64,
        site: RawSite { stack: 0xfeed },
        time_ns: 99,
    };
    assert_eq!(
        super::decode(&bytes_of(&raw), 99),
        Ok(Record::Heap(expected))
    );
}

#[test]
fn decodes_frees_and_lifecycle_records() {
    let free = Event {
        kind: kind::FREE,
        tgid: 20,
        tid: 21,
        ptr: 0x2000,
        ..Event::default()
    };
    let task = Task { tgid: 20, tid: 21 };
    assert_eq!(
        decode(&bytes_of(&free)),
        Ok(Record::Heap(HeapEvent::Free { task, ptr: 0x2000 }))
    );
    let exiting_free = Event {
        kind: kind::EXITING_FREE,
        ..free
    };
    assert_eq!(
        decode(&bytes_of(&exiting_free)),
        Ok(Record::Heap(HeapEvent::ExitingFree { task, ptr: 0x2000 }))
    );
    let fork = Event {
        kind: kind::FORK,
        tgid: 20,
        ptr: 10,
        ..Event::default()
    };
    assert_eq!(
        decode(&bytes_of(&fork)),
        Ok(Record::Heap(HeapEvent::Fork {
            child: 20,
            parent: 10,
            shares_memory: false,
        }))
    );
    let vfork = Event {
        ptr: 10 | kind::FORK_SHARES_MEMORY,
        ..fork
    };
    assert_eq!(
        decode(&bytes_of(&vfork)),
        Ok(Record::Heap(HeapEvent::Fork {
            child: 20,
            parent: 10,
            shares_memory: true,
        }))
    );
    let exit = Event {
        kind: kind::EXIT,
        tgid: 20,
        ..Event::default()
    };
    assert_eq!(
        decode(&bytes_of(&exit)),
        Ok(Record::Heap(HeapEvent::Exit { tgid: 20 }))
    );
}

#[test]
fn decodes_a_stack_and_its_frames() {
    let frames = [0x401_000, 0x402_000, 0x7f00_0000_1000];
    let bytes = stack_record_bytes(&frames, 0);
    let Ok(Record::Stack(stack)) = decode(&bytes) else {
        panic!("not a stack: {:?}", decode(&bytes));
    };
    assert_eq!(stack.hash, stack_hash(0, &frames));
    assert!(stack.sampled);
    assert_eq!(stack.frames().collect::<Vec<_>>(), frames);
    let one_frame = stack_record_bytes(&frames[..1], STACK_UNSAMPLED);
    let Ok(Record::Stack(unsampled)) = decode(&one_frame) else {
        panic!("not a stack");
    };
    assert!(!unsampled.sampled);
    assert_ne!(unsampled.hash, stack_hash(0, &frames[..1]), "seeds differ");
}

#[test]
fn refuses_stacks_that_do_not_hold_together() {
    let frames = [0x401_000, 0x402_000];
    let mut wrong_hash = stack_record_bytes(&frames, 0);
    wrong_hash[FRAMES_OFFSET] ^= 1;
    assert_eq!(
        decode(&wrong_hash),
        Err(DecodeError::Stack { depth: 2, flags: 0 })
    );
    let mut too_deep = stack_record_bytes(&frames, 0);
    too_deep[4..6].copy_from_slice(&(MAX_STACK_DEPTH as u16 + 1).to_ne_bytes());
    assert!(matches!(decode(&too_deep), Err(DecodeError::Stack { .. })));
    assert!(matches!(
        decode(&stack_record_bytes(&[], 0)),
        Err(DecodeError::Stack { depth: 0, .. })
    ));
    assert!(matches!(
        decode(&stack_record_bytes(&frames, 0x80)),
        Err(DecodeError::Stack { flags: 0x80, .. })
    ));
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
        decode(&bytes[..23]),
        Err(DecodeError::Length {
            len: 23,
            expected: 24
        })
    );
    let alloc = bytes_of(&AllocEvent {
        kind: kind::ALLOC,
        ..AllocEvent::default()
    });
    assert!(matches!(
        decode(&alloc[..24]),
        Err(DecodeError::Length { expected: 40, .. })
    ));
    assert!(matches!(
        decode(&stack_record_bytes(&[1], 0)[..100]),
        Err(DecodeError::Length { .. })
    ));
    assert!(matches!(
        decode(&[]),
        Err(DecodeError::Length { len: 0, .. })
    ));
}

proptest! {
    /// Any bytes decode to a record or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = decode(&bytes);
    }

    /// Every stack the kernel could send comes back frame for frame.
    #[test]
    fn stacks_round_trip(frames in proptest::collection::vec(any::<u64>(), 1..=MAX_STACK_DEPTH)) {
        let bytes = stack_record_bytes(&frames, 0);
        let Ok(Record::Stack(stack)) = decode(&bytes) else {
            panic!("not decoded");
        };
        prop_assert_eq!(stack.frames().collect::<Vec<_>>(), frames);
    }
}
