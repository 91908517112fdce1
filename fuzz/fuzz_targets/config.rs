//! The daemon's configuration: any text parses as a config file or is refused,
//! a file that parses is validated (or refused) without panicking, and so is
//! the text as a duration, alone and as the tick of an otherwise valid config.
#![no_main]

use heapwatch::config::{DaemonConfig, Settings, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let _ = parse_duration(text);
    let as_tick = Settings {
        tick: Some(text.to_owned()),
        ..Settings::default()
    };
    let _ = DaemonConfig::try_from(&as_tick);
    if let Ok(settings) = Settings::from_toml(text, "fuzz.toml") {
        let _ = DaemonConfig::try_from(&settings);
    }
});
