//! The daemon's configuration: /etc/heapwatch/config.toml (or --config FILE)
//! merged with flags, which win. Unknown keys and bad values are errors that
//! name the key. Parsing is pure and unit-tested.

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    leaks::LeakConfig,
    scope::Scope,
    tiers::{TierConfig, ticks_covering},
    tracker::TrackerConfig,
};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/heapwatch/config.toml";
/// The /metrics address by default: loopback only, in Prometheus's exporter port range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";

/// Thread slots by default (about 1.2 MB of kernel memory).
pub const DEFAULT_THREAD_SLOTS: u32 = profiler_common::THREAD_SLOTS_LEN;
/// Ring-buffer size by default, in KiB: sized for cache, not only for bursts.
pub const DEFAULT_RING_KIB: u32 = 4096;
/// Stack sampling by default: the full stack of every allocation.
pub const DEFAULT_STACK_SAMPLE: u32 = 1;
/// Processes the daemon exports one by one by default.
pub const DEFAULT_TOP_PROCESSES: usize = 20;
/// Sites a report or snapshot shows by default.
pub const DEFAULT_TOP_SITES: u32 = 10;
/// Cap on live allocations tracked in all, by default.
pub const DEFAULT_MAX_ALLOCATIONS: u64 = 50_000_000;
/// Cap on live allocations tracked per process, by default.
pub const DEFAULT_MAX_ALLOCATIONS_PER_PROCESS: u64 = 10_000_000;
/// How long a process found growing is traced exactly (scope `tiered`)
/// before it is judged again.
pub const DEFAULT_TRACE_FOR: Duration = Duration::from_secs(600);
/// The slowdown tracing may put an escalated process to by default, in
/// percent of its CPU time.
pub const DEFAULT_MAX_OVERHEAD_PERCENT: f64 = 5.0;
/// Where the daemon keeps what outlives it (the OOM killer's victims' reports).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/heapwatch";
/// What one traced allocator call costs a process, in nanoseconds, for the
/// cost governor: a round figure above half a malloc+free pair's cost under
/// the daemon in the bench (docs/measurements.md), so as to err on the side
/// of letting go.
pub const EVENT_COST_NS: u64 = 2_000;
/// Processes traced at once because they grow (scope `tiered`): each costs
/// a trap per allocation, so the largest growers go first.
pub const MAX_ESCALATED: usize = 8;
/// The sparsest stack sampling accepted: one allocation in a million.
pub const MAX_STACK_SAMPLE: u32 = 1_000_000;
/// What `stack_sample` (and `--stack-sample`) accepts.
pub const STACK_SAMPLE_RULE: &str = "must be a whole number from 1 (every allocation) to 1000000";
/// The most thread slots accepted: 65,536 (about 13 MB of kernel memory).
pub const MAX_THREAD_SLOTS: u32 = 1 << 16;
/// What `thread_slots` (and `--thread-slots`) accepts.
pub const THREAD_SLOTS_RULE: &str = "must be a power of two from 1 to 65536";
/// The largest ring buffer accepted, in KiB: 1 GiB.
pub const MAX_RING_KIB: u32 = 1 << 20;
/// What `ring_kib` (and `--ring-kib`) accepts.
pub const RING_KIB_RULE: &str = "must be a power of two from 4 to 1048576 (KiB)";
/// The most ticks a window spans: the leak rule keeps that many samples of
/// every site and compares each pair of them at every tick.
pub const MAX_WINDOW_TICKS: u128 = 1000;
/// The longest duration accepted: nanoseconds must fit 64 bits (584 years),
/// as the kernel's clock and the API count them.
const MAX_DURATION: Duration = Duration::from_nanos(u64::MAX);
/// How a duration is written, for error messages.
const DURATION_SYNTAX: &str = "a duration is a whole number and a unit, ms, s, m or h, as in 20s";

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

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The configuration file could not be read.
    #[error("read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
}

/// Where the daemon's configuration comes from: a file and the flags, which
/// win. Loaded at start and again at each reload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSource {
    /// The file named (`None`: the default one, if it exists).
    pub file: Option<PathBuf>,
    /// The settings the flags give.
    pub flags: Settings,
}

impl ConfigSource {
    /// Reads the file (if any) and validates it, overridden by the flags.
    pub fn load(&self) -> Result<DaemonConfig, LoadError> {
        let path = match &self.file {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        let settings = match path {
            Some(path) => read_settings(&path)?.overridden_by(&self.flags),
            None => Settings::default().overridden_by(&self.flags),
        };
        Ok(DaemonConfig::try_from(&settings)?)
    }
}

fn read_settings(path: &Path) -> Result<Settings, LoadError> {
    let text = fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Settings::from_toml(&text, &path.display().to_string())?)
}

/// The daemon's settings as a file or the flags give them; `None` is unset.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
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
    /// Threads whose allocator state the kernel keeps in its fast array (a power of two).
    pub thread_slots: Option<u32>,
    /// The allocator library to probe.
    pub libc: Option<PathBuf>,
    /// The processes traced: `["tiered"]` (the default, with any selectors
    /// pinned), `["all"]`, or selectors (`pid:N`, `comm:NAME`, `unit:NAME`,
    /// `cgroup:/PATH`).
    pub scope: Option<Vec<String>>,
    /// How long a growing process is traced before it is judged again
    /// (duration; scope `tiered`).
    pub trace_for: Option<String>,
    /// The slowdown tracing may put an escalated process to, in percent of
    /// its CPU time (scope `tiered`).
    pub max_overhead: Option<f64>,
    /// Where the daemon keeps what outlives it (an absolute path).
    pub state_dir: Option<PathBuf>,
}

impl Settings {
    /// Parses a TOML file's text; `path` names it in errors, which give the
    /// line at fault (and so its key).
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.span() {
                Some(span) => format!("{}: {}", line_at(text, span.start), e.message()),
                None => e.message().to_owned(),
            },
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
            thread_slots: over.thread_slots.or(self.thread_slots),
            libc: over.libc.clone().or(self.libc),
            scope: over.scope.clone().or(self.scope),
            trace_for: over.trace_for.clone().or(self.trace_for),
            max_overhead: over.max_overhead.or(self.max_overhead),
            state_dir: over.state_dir.clone().or(self.state_dir),
        }
    }
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq)]
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
    /// Threads whose allocator state the kernel keeps in its fast array.
    pub thread_slots: u32,
    /// The allocator library to probe (`None`: heapwatch's own C library).
    pub libc: Option<PathBuf>,
    /// The processes traced.
    pub scope: Scope,
    /// How long a growing process is traced before it is judged again.
    pub trace_for: Duration,
    /// The slowdown tracing may put an escalated process to, a fraction.
    pub max_overhead: f64,
    /// Where the daemon keeps what outlives it: `oom/` holds the OOM
    /// killer's victims' reports.
    pub state_dir: PathBuf,
}

impl DaemonConfig {
    /// The tracker's configuration: the caps, and children start with a
    /// copy of their parent's heap (as the kernel gives them).
    pub fn tracker(&self) -> TrackerConfig {
        TrackerConfig {
            copy_on_fork: true,
            max_live_total: self.max_allocations,
            max_live_per_process: self.max_allocations_per_process,
        }
    }

    /// The tiers' configuration: growth judged over the leak rule's window,
    /// an escalation lasting `trace_for` (at least a tick).
    pub fn tiers(&self) -> TierConfig {
        TierConfig {
            window_ticks: self.leak.samples(),
            trace_ticks: ticks_covering(self.trace_for, self.leak.tick),
            max_escalated: MAX_ESCALATED,
            max_overhead: self.max_overhead,
            event_cost_ns: EVENT_COST_NS,
        }
    }
}

impl TryFrom<&Settings> for DaemonConfig {
    type Error = ConfigError;

    fn try_from(s: &Settings) -> Result<Self, ConfigError> {
        let listen_text = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| ConfigError::Value {
            key: "listen",
            message: format!(
                "`{listen_text}` is not IP:PORT (for example 127.0.0.1:9465 or [::1]:9465; host names are not looked up)"
            ),
        })?;
        let leak = leak_config(s)?;
        let top_processes = s.top_processes.unwrap_or(DEFAULT_TOP_PROCESSES);
        if top_processes == 0 {
            return Err(value_error("top_processes", "must be at least 1"));
        }
        let ring_kib = ring_kib(s.ring_kib.unwrap_or(DEFAULT_RING_KIB))
            .map_err(|rule| value_error("ring_kib", rule))?;
        let max_allocations = positive(
            "max_allocations",
            s.max_allocations,
            DEFAULT_MAX_ALLOCATIONS,
        )?;
        let max_allocations_per_process = positive(
            "max_allocations_per_process",
            s.max_allocations_per_process,
            DEFAULT_MAX_ALLOCATIONS_PER_PROCESS,
        )?;
        Ok(Self {
            listen,
            leak,
            top_processes,
            max_allocations,
            max_allocations_per_process,
            ring_kib,
            stack_sample: stack_sample(s.stack_sample.unwrap_or(DEFAULT_STACK_SAMPLE))
                .map_err(|rule| value_error("stack_sample", rule))?,
            thread_slots: thread_slots(s.thread_slots.unwrap_or(DEFAULT_THREAD_SLOTS))
                .map_err(|rule| value_error("thread_slots", rule))?,
            libc: s.libc.clone(),
            scope: Scope::parse(s.scope.as_deref().unwrap_or_default())
                .map_err(|e| value_error("scope", &e.to_string()))?,
            trace_for: trace_for(s, leak.tick)?,
            max_overhead: max_overhead(s.max_overhead)?,
            state_dir: state_dir(s.state_dir.as_deref())?,
        })
    }
}

/// The state directory: an absolute path (the daemon's working directory
/// is no place to keep state), a directory if it exists (made when first
/// needed otherwise).
fn state_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let path = path.unwrap_or(Path::new(DEFAULT_STATE_DIR));
    if !path.is_absolute() {
        return Err(value_error(
            "state_dir",
            &format!(
                "must be an absolute path, for example {DEFAULT_STATE_DIR}, not `{}`",
                path.display()
            ),
        ));
    }
    if path.exists() && !path.is_dir() {
        return Err(value_error(
            "state_dir",
            &format!("`{}` is not a directory", path.display()),
        ));
    }
    Ok(path.to_owned())
}

/// The overhead budget as a fraction: from more than 0 to 1000 percent.
fn max_overhead(percent: Option<f64>) -> Result<f64, ConfigError> {
    let percent = percent.unwrap_or(DEFAULT_MAX_OVERHEAD_PERCENT);
    if !(percent > 0.0 && percent <= 1000.0) {
        return Err(value_error(
            "max_overhead",
            &format!("must be a percentage above 0 and at most 1000, not {percent}"),
        ));
    }
    Ok(percent / 100.0)
}

/// How long an escalation lasts: at least a tick.
fn trace_for(s: &Settings, tick: Duration) -> Result<Duration, ConfigError> {
    let trace_for = duration_key("trace_for", s.trace_for.as_deref(), DEFAULT_TRACE_FOR)?;
    if trace_for < tick {
        return Err(value_error(
            "trace_for",
            &format!("must be at least a tick ({tick:?}), not {trace_for:?}"),
        ));
    }
    Ok(trace_for)
}

/// The leak rule's durations: a tick longer than 0, a window of 3 to
/// [`MAX_WINDOW_TICKS`] ticks.
fn leak_config(s: &Settings) -> Result<LeakConfig, ConfigError> {
    let defaults = LeakConfig::default();
    let leak = LeakConfig {
        tick: duration_key("tick", s.tick.as_deref(), defaults.tick)?,
        window: duration_key("window", s.window.as_deref(), defaults.window)?,
        min_age: duration_key("min_age", s.min_age.as_deref(), defaults.min_age)?,
    };
    if leak.tick.is_zero() {
        return Err(value_error("tick", "must be longer than 0"));
    }
    let ticks = leak.window.as_nanos() / leak.tick.as_nanos();
    if !(3..=MAX_WINDOW_TICKS).contains(&ticks) {
        return Err(value_error(
            "window",
            &format!(
                "must span from 3 to {MAX_WINDOW_TICKS} ticks, not {ticks} ({:?} over ticks of {:?}): change tick or window",
                leak.window, leak.tick
            ),
        ));
    }
    Ok(leak)
}

/// Checks a stack sampling rate: one allocation in 1 to 1,000,000.
pub fn stack_sample(every: u32) -> Result<u32, &'static str> {
    if (1..=MAX_STACK_SAMPLE).contains(&every) {
        Ok(every)
    } else {
        Err(STACK_SAMPLE_RULE)
    }
}

/// Checks a number of thread slots: a power of two from 1 to [`MAX_THREAD_SLOTS`].
pub fn thread_slots(slots: u32) -> Result<u32, &'static str> {
    if (1..=MAX_THREAD_SLOTS).contains(&slots) && slots.is_power_of_two() {
        Ok(slots)
    } else {
        Err(THREAD_SLOTS_RULE)
    }
}

/// Checks a ring-buffer size in KiB: a power of two from 4 to [`MAX_RING_KIB`].
pub fn ring_kib(kib: u32) -> Result<u32, &'static str> {
    if (4..=MAX_RING_KIB).contains(&kib) && kib.is_power_of_two() {
        Ok(kib)
    } else {
        Err(RING_KIB_RULE)
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

/// Parses `250ms`, `1s`, `20s`, `5m`, `1h`: a whole number and a unit, at
/// most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit ({DURATION_SYNTAX})"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` does not start with a whole number ({DURATION_SYNTAX})"
        ));
    }
    let too_long = || format!("`{text}` is too long (at most 5124095h, 584 years)");
    let n: u64 = number.parse().map_err(|_| too_long())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` ({DURATION_SYNTAX})"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(too_long)
}

/// "line N, `the line`" for the byte `offset` of `text`, the line cut short
/// when long.
fn line_at(text: &str, offset: usize) -> String {
    const SHOWN: usize = 60;
    let before = &text.as_bytes()[..offset.min(text.len())];
    let number = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or("").trim();
    match line.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("line {number}, `{}...`", &line[..cut]),
        None => format!("line {number}, `{line}`"),
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
    fn bad_durations_are_told_what_a_duration_is() {
        for (bad, says) in [
            ("5", "has no unit (a duration is a whole number and a unit"),
            ("-5s", "does not start with a whole number"),
            ("5x", "unknown unit `x`"),
            ("99999999999999999999h", "is too long (at most 5124095h"),
            ("18446744073709551615s", "is too long"),
            ("5124096h", "is too long"),
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(
            parse_duration("5124095h"),
            Ok(Duration::from_secs(5_124_095 * 3600))
        );
    }

    #[test]
    fn the_window_spans_3_to_1000_ticks() {
        let config = |tick: &str, window: &str| {
            DaemonConfig::try_from(&Settings {
                tick: Some(tick.to_owned()),
                window: Some(window.to_owned()),
                ..Settings::default()
            })
        };
        assert!(config("1s", "3s").is_ok());
        assert!(config("1s", "1000s").is_ok());
        let err = config("1s", "1001s").expect_err("1001 ticks");
        assert!(err.to_string().contains("from 3 to 1000 ticks"), "{err}");
        assert!(
            err.to_string()
                .contains("not 1001 (1001s over ticks of 1s)"),
            "{err}"
        );
        assert!(config("1ms", "24h").is_err());
        assert!(
            config("5124095h", "10m").is_err(),
            "a huge tick is not a panic"
        );
    }

    #[test]
    fn the_limits_and_their_rules_agree() {
        assert_eq!(stack_sample(MAX_STACK_SAMPLE), Ok(MAX_STACK_SAMPLE));
        assert_eq!(stack_sample(MAX_STACK_SAMPLE + 1), Err(STACK_SAMPLE_RULE));
        assert_eq!(stack_sample(0), Err(STACK_SAMPLE_RULE));
        assert!(STACK_SAMPLE_RULE.contains(&MAX_STACK_SAMPLE.to_string()));
        assert_eq!(ring_kib(4), Ok(4));
        assert_eq!(ring_kib(MAX_RING_KIB), Ok(MAX_RING_KIB));
        for bad in [0, 2, 1000, MAX_RING_KIB * 2] {
            assert_eq!(ring_kib(bad), Err(RING_KIB_RULE), "{bad}");
        }
        assert!(RING_KIB_RULE.contains(&MAX_RING_KIB.to_string()));
    }

    #[test]
    fn file_errors_name_the_line_and_so_the_key() {
        let text = "tick = \"5s\"\ntop_processes = -1\n";
        let err = Settings::from_toml(text, "c.toml").expect_err("negative");
        assert!(
            err.to_string()
                .starts_with("c.toml: line 2, `top_processes = -1`: "),
            "{err}"
        );
        let long = format!("scope = [{}]", "\"comm:x\", ".repeat(20) + "5]");
        let err = Settings::from_toml(&long, "c.toml").expect_err("a number in the scope");
        assert!(
            err.to_string().contains("line 1, `scope = [\"comm:x\""),
            "{err}"
        );
        assert!(err.to_string().contains("...`"), "the line is cut: {err}");
    }

    #[test]
    fn defaults_are_valid() {
        let config = DaemonConfig::try_from(&Settings::default()).expect("defaults");
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().expect("address"));
        assert_eq!(config.leak, LeakConfig::default());
        assert_eq!(config.top_processes, DEFAULT_TOP_PROCESSES);
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
    fn the_scope_is_tiers_unless_all_or_selectors_are_given() {
        let defaults = DaemonConfig::try_from(&Settings::default()).expect("defaults");
        assert_eq!(defaults.scope, Scope::Tiered(vec![]));
        let text = "scope = [\"comm:nginx\", \"unit:db.service\"]\n";
        let file = Settings::from_toml(text, "test.toml").expect("parses");
        let config = DaemonConfig::try_from(&file).expect("valid");
        let Scope::Only(selectors) = config.scope else {
            panic!("not a list of selectors: {:?}", config.scope);
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
            Scope::parse(&["pid:7".into()]).unwrap()
        );
    }
}
