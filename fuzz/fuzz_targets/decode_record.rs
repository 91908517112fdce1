//! Ring-buffer records: any bytes decode to a record or an error, and a stack
//! that decodes holds together (1 to 127 frames whose hash it carries).
#![no_main]

use heapwatch::events::{Record, decode};
use libfuzzer_sys::fuzz_target;
use profiler_common::{MAX_STACK_DEPTH, STACK_UNSAMPLED, stack_hash};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(Record::Stack(stack)) = decode(bytes, 0) {
        let frames: Vec<u64> = stack.frames().collect();
        assert!((1..=MAX_STACK_DEPTH).contains(&frames.len()));
        let flags = if stack.sampled { 0 } else { STACK_UNSAMPLED };
        assert_eq!(stack.hash, stack_hash(flags, &frames));
    }
});
