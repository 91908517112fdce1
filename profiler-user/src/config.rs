//! The daemon's configuration: /etc/heapwatch/config.toml (or --config FILE)
//! merged with flags, which win. Unknown keys and bad values are errors that
//! name the key. Parsing is pure and unit-tested.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::{leaks::LeakConfig, scope::Selection};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/heapwatch/config.toml";
/// The /metrics address by default: loopback only, in Prometheus's exporter port range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";

/// The sparsest stack sampling accepted: one allocation in a million.
pub const MAX_STACK_SAMPLE: u32 = 1_000_000;

/// A configuration error, naming the key and what is wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid TOML or has an unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {message}")]
    Value {
        /// The key (or flag).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The daemon's settings as a file or the flags give them; `None` is unset.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Settings {
    /// Address of the /metrics endpoint, `ADDR:PORT`.
    pub listen: Option<String>,
    /// How often live bytes are sampled (duration, e.g. `10s`).
    pub tick: Option<String>,
    /// Over how long growth is judged (duration).
    pub window: Option<String>,
    /// How old live blocks must be to count as leaked (duration).
    pub min_age: Option<String>,
    /// Processes exported one by one, by live bytes (the rest are summed).
    pub top_processes: Option<usize>,
    /// Cap on live allocations tracked in all.
    pub max_allocations: Option<u64>,
    /// Cap on live allocations tracked per process.
    pub max_allocations_per_process: Option<u64>,
    /// Ring-buffer size in KiB (a power of two).
    pub ring_kib: Option<u32>,
    /// Capture the full stack of one allocation in this many.
    pub stack_sample: Option<u32>,
    /// The allocator library to probe.
    pub libc: Option<PathBuf>,
    /// The processes traced: `["all"]` or selectors (`pid:N`, `comm:NAME`,
    /// `unit:NAME`, `cgroup:/PATH`).
    pub scope: Option<Vec<String>>,
}

impl Settings {
    /// Parses a TOML file's text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// `self` with every key `over` sets replaced by its value.
    pub fn overridden_by(self, over: &Settings) -> Settings {
        Settings {
            listen: over.listen.clone().or(self.listen),
            tick: over.tick.clone().or(self.tick),
            window: over.window.clone().or(self.window),
            min_age: over.min_age.clone().or(self.min_age),
            top_processes: over.top_processes.or(self.top_processes),
            max_allocations: over.max_allocations.or(self.max_allocations),
            max_allocations_per_process: over
                .max_allocations_per_process
                .or(self.max_allocations_per_process),
            ring_kib: over.ring_kib.or(self.ring_kib),
            stack_sample: over.stack_sample.or(self.stack_sample),
            libc: over.libc.clone().or(self.libc),
            scope: over.scope.clone().or(self.scope),
        }
    }
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Address of the /metrics endpoint.
    pub listen: SocketAddr,
    /// The leak rule's tick, window and minimum age.
    pub leak: LeakConfig,
    /// Processes exported one by one.
    pub top_processes: usize,
    /// Cap on live allocations tracked in all.
    pub max_allocations: u64,
    /// Cap on live allocations tracked per process.
    pub max_allocations_per_process: u64,
    /// Ring-buffer size in KiB.
    pub ring_kib: u32,
    /// Capture the full stack of one allocation in this many (1: all).
    pub stack_sample: u32,
    /// The allocator library to probe (`None`: heapwatch's own C library).
    pub libc: Option<PathBuf>,
    /// The processes traced.
    pub scope: Selection,
}

impl TryFrom<&Settings> for DaemonConfig {
    type Error = ConfigError;

    fn try_from(s: &Settings) -> Result<Self, ConfigError> {
        let listen_text = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| ConfigError::Value {
            key: "listen",
            message: format!("`{listen_text}` is not ADDR:PORT (for example 127.0.0.1:9465)"),
        })?;
        let defaults = LeakConfig::default();
        let leak = LeakConfig {
            tick: duration_key("tick", s.tick.as_deref(), defaults.tick)?,
            window: duration_key("window", s.window.as_deref(), defaults.window)?,
            min_age: duration_key("min_age", s.min_age.as_deref(), defaults.min_age)?,
        };
        if leak.tick.is_zero() {
            return Err(value_error("tick", "must be longer than 0"));
        }
        if leak.window < leak.tick * 3 {
            return Err(value_error("window", "must span at least 3 ticks"));
        }
        let top_processes = s.top_processes.unwrap_or(20);
        if top_processes == 0 {
            return Err(value_error("top_processes", "must be at least 1"));
        }
        let ring_kib = s.ring_kib.unwrap_or(4096);
        if ring_kib < 4 || !ring_kib.is_power_of_two() || ring_kib > 1024 * 1024 {
            return Err(value_error(
                "ring_kib",
                "must be a power of two from 4 to 1048576",
            ));
        }
        let max_allocations = positive("max_allocations", s.max_allocations, 50_000_000)?;
        let max_allocations_per_process = positive(
            "max_allocations_per_process",
            s.max_allocations_per_process,
            10_000_000,
        )?;
        Ok(Self {
            listen,
            leak,
            top_processes,
            max_allocations,
            max_allocations_per_process,
            ring_kib,
            stack_sample: stack_sample("stack_sample", s.stack_sample.unwrap_or(1))?,
            libc: s.libc.clone(),
            scope: Selection::parse(s.scope.as_deref().unwrap_or_default())
                .map_err(|e| value_error("scope", &e.to_string()))?,
        })
    }
}

/// Checks a stack sampling rate: one allocation in 1 to 1,000,000.
pub fn stack_sample(key: &'static str, every: u32) -> Result<u32, ConfigError> {
    if (1..=MAX_STACK_SAMPLE).contains(&every) {
        Ok(every)
    } else {
        Err(value_error(
            key,
            &format!("must be from 1 (every allocation) to {MAX_STACK_SAMPLE}"),
        ))
    }
}

fn positive(key: &'static str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(value_error(key, "must be at least 1")),
        n => Ok(n),
    }
}

fn value_error(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Value {
        key,
        message: message.to_owned(),
    }
}

fn duration_key(
    key: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    text.map_or(Ok(default), |t| {
        parse_duration(t).map_err(|message| ConfigError::Value { key, message })
    })
}

/// Parses `250ms`, `1s`, `20s`, `5m`, `1h`: a whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h, as in 20s)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let seconds = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!(
            "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "5",
            "s",
            "-5s",
            "5 days",
            "1.5s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = DaemonConfig::try_from(&Settings::default()).expect("defaults");
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().expect("address"));
        assert_eq!(config.leak, LeakConfig::default());
        assert_eq!(config.top_processes, 20);
    }

    #[test]
    fn the_example_config_is_valid_and_says_the_defaults() {
        let example = include_str!("../../deploy/config.toml");
        let settings = Settings::from_toml(example, "deploy/config.toml").expect("parses");
        let config = DaemonConfig::try_from(&settings).expect("valid");
        assert_eq!(
            config,
            DaemonConfig::try_from(&Settings::default()).expect("defaults")
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            Settings::from_toml("tick = \"5s\"\nwindow = \"1m\"\n", "c.toml").expect("valid");
        let flags = Settings {
            tick: Some("1s".to_owned()),
            ..Settings::default()
        };
        let config = DaemonConfig::try_from(&file.overridden_by(&flags)).expect("valid");
        assert_eq!(config.leak.tick, Duration::from_secs(1));
        assert_eq!(config.leak.window, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Settings::from_toml("tikc = \"5s\"\n", "c.toml").expect_err("unknown key");
        assert!(err.to_string().contains("tikc"), "{err}");
        let err = Settings::from_toml("tick = 5\n", "c.toml").expect_err("wrong type");
        assert!(err.to_string().starts_with("c.toml: "), "{err}");
        for (settings, key) in [
            (
                Settings {
                    listen: Some("localhost".into()),
                    ..Settings::default()
                },
                "listen",
            ),
            (
                Settings {
                    tick: Some("0s".into()),
                    ..Settings::default()
                },
                "tick",
            ),
            (
                Settings {
                    tick: Some("10x".into()),
                    ..Settings::default()
                },
                "tick",
            ),
            (
                Settings {
                    window: Some("10s".into()),
                    ..Settings::default()
                },
                "window",
            ),
            (
                Settings {
                    top_processes: Some(0),
                    ..Settings::default()
                },
                "top_processes",
            ),
            (
                Settings {
                    ring_kib: Some(100),
                    ..Settings::default()
                },
                "ring_kib",
            ),
            (
                Settings {
                    stack_sample: Some(0),
                    ..Settings::default()
                },
                "stack_sample",
            ),
            (
                Settings {
                    max_allocations: Some(0),
                    ..Settings::default()
                },
                "max_allocations",
            ),
            (
                Settings {
                    scope: Some(vec!["all".into(), "comm:nginx".into()]),
                    ..Settings::default()
                },
                "scope",
            ),
            (
                Settings {
                    scope: Some(vec!["nginx".into()]),
                    ..Settings::default()
                },
                "scope",
            ),
        ] {
            let err = DaemonConfig::try_from(&settings).expect_err(key);
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }

    #[test]
    fn the_scope_is_every_process_unless_selectors_are_given() {
        let everything = DaemonConfig::try_from(&Settings::default()).expect("defaults");
        assert_eq!(everything.scope, Selection::All);
        let text = "scope = [\"comm:nginx\", \"unit:db.service\"]\n";
        let file = Settings::from_toml(text, "test.toml").expect("parses");
        let config = DaemonConfig::try_from(&file).expect("valid");
        let Selection::Only(selectors) = config.scope else {
            panic!("not a selection: {:?}", config.scope);
        };
        let shown: Vec<String> = selectors.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["comm:nginx", "unit:db.service"]);
        let flags = Settings {
            scope: Some(vec!["pid:7".into()]),
            ..Settings::default()
        };
        let merged = DaemonConfig::try_from(&file.overridden_by(&flags)).expect("valid");
        assert_eq!(
            merged.scope.to_owned(),
            Selection::parse(&["pid:7".into()]).unwrap()
        );
    }
}
