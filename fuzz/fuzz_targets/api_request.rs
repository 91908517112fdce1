//! API request lines: any bytes parse to a request or are refused, and a
//! request that parses reads back the same once serialized.
#![no_main]

use heapwatch::api::protocol::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(request) = parse_request(line) {
        let text = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(parse_request(&text), Ok(request));
    }
});
