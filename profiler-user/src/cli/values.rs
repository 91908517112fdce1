//! Parsers of flag values: each refuses a bad value with the range or rule
//! it breaks, which clap prints beside the flag.

use std::time::Duration;

use crate::config;

/// A duration longer than zero, e.g. `30s`.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match config::parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than 0".to_owned()),
        d => Ok(d),
    }
}

/// A whole number from `min` to `max`; anything else (a sign, a fraction,
/// a number too large for `T`) is refused with the range.
fn whole_number<T>(text: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match text.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A process id: 1 and up.
pub fn parse_pid(text: &str) -> Result<u32, String> {
    whole_number(text, 1, u32::MAX)
}

/// How many to show: 1 and up.
pub fn parse_top(text: &str) -> Result<u32, String> {
    whole_number(text, 1, u32::MAX)
}

/// A cap on live allocations: 1 and up.
pub fn parse_cap(text: &str) -> Result<u64, String> {
    whole_number(text, 1, u64::MAX)
}

/// One allocation in N gets its full stack: N from 1 to a million.
pub fn parse_stack_sample(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| config::STACK_SAMPLE_RULE)
        .and_then(config::stack_sample)
}

/// Thread slots: a power of two up to the kernel side's array.
pub fn parse_thread_slots(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| config::THREAD_SLOTS_RULE)
        .and_then(config::thread_slots)
}

/// A ring-buffer size in KiB: a power of two.
pub fn parse_ring_kib(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| config::RING_KIB_RULE)
        .and_then(config::ring_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_bounded_by_their_range_and_type() {
        assert_eq!(whole_number("7", 1u32, 9), Ok(7));
        for bad in [
            "0",
            "10",
            "-1",
            "+",
            "1.5",
            "",
            " 3",
            "99999999999999999999999",
        ] {
            assert_eq!(
                whole_number(bad, 1u32, 9),
                Err("must be a whole number from 1 to 9".to_owned()),
                "{bad:?}"
            );
        }
    }
}
