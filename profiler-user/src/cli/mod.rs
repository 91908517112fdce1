//! Command-line definitions and the subcommands' glue.

mod command;
mod daemon;
mod floor;
mod notify;
mod output;
mod query;
mod record;
mod recording;
mod session;
mod standalone;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use command::{CommandError, resolve_command};
pub use daemon::{DaemonError, daemon};
pub use floor::floor;
pub use query::{QueryError, ps, snapshot};
pub use record::{RecordError, record};

/// heapwatch: who holds the heap, for any process, with no rebuild.
#[derive(Debug, Parser)]
#[command(name = "heapwatch", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// heapwatch's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace every process on the machine and serve Prometheus metrics:
    /// live heap per process, growth, leak suspects.
    Daemon(DaemonArgs),
    /// The sites holding live memory in process PID, from the running daemon
    /// (or, with --duration, traced by heapwatch itself for that long).
    Snapshot(SnapshotArgs),
    /// Traced processes by live bytes, from the running daemon.
    Ps(PsArgs),
    /// Run CMD under tracing from its first instruction and print its heap
    /// summary (valgrind's figures) and the sites still holding memory at exit.
    Record(RecordArgs),
    /// The benchmark's floor: run CMD with probes that do nothing (for `cargo xtask bench`).
    #[command(hide = true)]
    Floor(FloorArgs),
}

/// Options of `heapwatch floor`.
#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Probe every function at +0 instead of heapwatch's placements.
    #[arg(long)]
    pub at_entry: bool,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options of `heapwatch daemon`. Flags override the configuration file.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file (default: /etc/heapwatch/config.toml, if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the /metrics endpoint [default: 127.0.0.1:9465].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// How often live bytes are sampled, e.g. 10s [default: 10s].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub tick: Option<String>,
    /// Over how long growth is judged, e.g. 10m [default: 10m].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// How old live blocks must be to count as leaked, e.g. 5m [default: 5m].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub min_age: Option<String>,
    /// Processes exported one by one, by live bytes; the rest are summed [default: 20].
    #[arg(long, value_name = "K", value_parser = parse_top, allow_negative_numbers = true)]
    pub top: Option<u32>,
    /// Cap on live allocations tracked in all [default: 50000000].
    #[arg(long, value_name = "N", value_parser = parse_cap, allow_negative_numbers = true)]
    pub max_allocations: Option<u64>,
    /// Cap on live allocations tracked per process [default: 10000000].
    #[arg(long, value_name = "N", value_parser = parse_cap, allow_negative_numbers = true)]
    pub max_allocations_per_process: Option<u64>,
    /// Ring-buffer size in KiB, a power of two [default: 4096].
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib, allow_negative_numbers = true)]
    pub ring_kib: Option<u32>,
    /// Capture the full stack of one allocation in N on average (at random
    /// intervals) and of each call site's first; the others keep their
    /// immediate caller. Byte counts stay exact [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_stack_sample, allow_negative_numbers = true)]
    pub stack_sample: Option<u32>,
    /// Threads whose allocator state the kernel keeps in its fast array, a
    /// power of two; others keep it in task storage, exact but slower [default: 16384].
    #[arg(long, value_name = "N", value_parser = parse_thread_slots, allow_negative_numbers = true)]
    pub thread_slots: Option<u32>,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// Which processes to trace: `all`, or selectors, each flag one (a
    /// process any picks is traced): `pid:N`, `comm:NAME`, `unit:NAME`
    /// (systemd unit or container id), `cgroup:/PATH` (and below). Selected
    /// processes are probed one by one, started later ones too; the others
    /// run untouched [default: all].
    #[arg(long, value_name = "SELECTOR")]
    pub scope: Vec<String>,
    /// Load and attach everything, report what works, and exit.
    #[arg(long)]
    pub check: bool,
    /// The API socket (snapshots, process list, health).
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Options of `heapwatch snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The process.
    #[arg(long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: u32,
    /// Show at most K sites, largest first.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = parse_top, allow_negative_numbers = true)]
    pub top: u32,
    /// Count only blocks allocated at least this long ago, e.g. 5m.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration, allow_hyphen_values = true)]
    pub min_age: Option<std::time::Duration>,
    /// Without the daemon: trace the process for this long, e.g. 30s (as
    /// root); allocations made before tracing began are unseen.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub duration: Option<std::time::Duration>,
    /// Rendering (pprof and flamegraph need -o).
    #[arg(long, value_enum, default_value_t = crate::report::Format::Text)]
    pub format: crate::report::Format,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Options of `heapwatch ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl DaemonArgs {
    /// The settings the flags give (unset flags are `None`).
    pub fn settings(&self) -> crate::config::Settings {
        crate::config::Settings {
            listen: self.listen.clone(),
            tick: self.tick.clone(),
            window: self.window.clone(),
            min_age: self.min_age.clone(),
            top_processes: self.top.map(|k| k as usize),
            max_allocations: self.max_allocations,
            max_allocations_per_process: self.max_allocations_per_process,
            ring_kib: self.ring_kib,
            stack_sample: self.stack_sample,
            thread_slots: self.thread_slots,
            libc: self.libc.clone(),
            scope: (!self.scope.is_empty()).then(|| self.scope.clone()),
        }
    }
}

/// Options of `heapwatch record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace the processes CMD forks too (each gets its own summary).
    #[arg(long)]
    pub follow_forks: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Rendering written to -o FILE (text goes to stderr without -o; the others need -o).
    #[arg(long, value_enum, default_value_t = crate::report::Format::Text)]
    pub format: crate::report::Format,
    /// Write the --format rendering to FILE.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Show at most K sites per process.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = parse_top, allow_negative_numbers = true)]
    pub top: u32,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// Ring-buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib, allow_negative_numbers = true)]
    pub ring_kib: u32,
    /// Capture the full stack of one allocation in N on average (at random
    /// intervals) and of each call site's first; the others keep their
    /// immediate caller. Byte counts stay exact.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_stack_sample, allow_negative_numbers = true)]
    pub stack_sample: u32,
    /// Threads whose allocator state the kernel keeps in its fast array, a
    /// power of two; others keep it in task storage, exact but slower.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_THREAD_SLOTS, value_parser = parse_thread_slots, allow_negative_numbers = true)]
    pub thread_slots: u32,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match crate::config::parse_duration(text)? {
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

fn parse_pid(text: &str) -> Result<u32, String> {
    whole_number(text, 1, u32::MAX)
}

fn parse_top(text: &str) -> Result<u32, String> {
    whole_number(text, 1, u32::MAX)
}

fn parse_cap(text: &str) -> Result<u64, String> {
    whole_number(text, 1, u64::MAX)
}

fn parse_stack_sample(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| crate::config::STACK_SAMPLE_RULE)
        .and_then(crate::config::stack_sample)
}

fn parse_thread_slots(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| crate::config::THREAD_SLOTS_RULE)
        .and_then(crate::config::thread_slots)
}

fn parse_ring_kib(text: &str) -> Result<u32, &'static str> {
    text.parse()
        .map_err(|_| crate::config::RING_KIB_RULE)
        .and_then(crate::config::ring_kib)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn record_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from(["heapwatch", "record", "--top", "3", "--", "ls", "-l"])
            .expect("valid command line");
        let Command::Record(args) = cli.command else {
            panic!("not record");
        };
        assert_eq!(args.command, ["ls", "-l"]);
        assert_eq!(
            (args.top, args.ring_kib, args.follow_forks),
            (3, 4096, false)
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_and_what_is_valid() {
        for (args, expected) in [
            ("record", "<CMD>"),
            ("record --top 0 -- ls", "from 1 to 4294967295"),
            ("record --top x -- ls", "from 1 to 4294967295"),
            (
                "record --ring-kib 1000 -- ls",
                "power of two from 4 to 1048576",
            ),
            (
                "record --ring-kib -4 -- ls",
                "power of two from 4 to 1048576",
            ),
            ("record --format svg -- ls", "possible values"),
            (
                "record --stack-sample 0 -- ls",
                "from 1 (every allocation) to 1000000",
            ),
            ("record --stack-sample 1000001 -- ls", "to 1000000"),
            ("daemon --stack-sample x", "from 1 (every allocation)"),
            (
                "record --thread-slots 3 -- ls",
                "power of two from 1 to 65536",
            ),
            (
                "daemon --thread-slots 131072",
                "power of two from 1 to 65536",
            ),
            ("daemon --top -1", "from 1 to 4294967295"),
            ("daemon --ring-kib 8589934592", "power of two"),
            (
                "daemon --max-allocations 0",
                "from 1 to 18446744073709551615",
            ),
            ("daemon --max-allocations-per-process -1", "from 1 to"),
            ("snapshot --pid 0", "from 1 to 4294967295"),
            ("snapshot --pid -1", "from 1 to 4294967295"),
            ("snapshot --pid 4294967296", "from 1 to 4294967295"),
            (
                "snapshot --pid 1 --duration -1s",
                "does not start with a whole number",
            ),
            ("snapshot --pid 1 --min-age 5x", "unknown unit `x`"),
        ] {
            let argv = std::iter::once("heapwatch").chain(args.split(' '));
            let err = Cli::try_parse_from(argv).expect_err(args).to_string();
            let flag = args
                .split(' ')
                .rfind(|a| a.starts_with("--") && a.len() > 2)
                .unwrap_or("");
            assert!(err.contains(flag), "{args}: the flag is not named: {err}");
            assert!(err.contains(expected), "{args}: {expected} not said: {err}");
        }
    }

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
