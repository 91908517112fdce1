//! Command-line definitions and the subcommands' glue.

mod command;
mod daemon;
mod floor;
mod notify;
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
    #[arg(long, value_name = "DURATION")]
    pub tick: Option<String>,
    /// Over how long growth is judged, e.g. 10m [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,
    /// How old live blocks must be to count as leaked, e.g. 5m [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub min_age: Option<String>,
    /// Processes exported one by one, by live bytes; the rest are summed [default: 20].
    #[arg(long, value_name = "K")]
    pub top: Option<usize>,
    /// Cap on live allocations tracked in all [default: 50000000].
    #[arg(long, value_name = "N")]
    pub max_allocations: Option<u64>,
    /// Cap on live allocations tracked per process [default: 10000000].
    #[arg(long, value_name = "N")]
    pub max_allocations_per_process: Option<u64>,
    /// Ring-buffer size in KiB, a power of two [default: 4096].
    #[arg(long, value_name = "KIB")]
    pub ring_kib: Option<u32>,
    /// Capture the full stack of one allocation in N, chosen at random; the
    /// others keep their immediate caller. Byte counts stay exact [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_stack_sample)]
    pub stack_sample: Option<u32>,
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
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,
    /// Show at most K sites, largest first.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// Count only blocks allocated at least this long ago, e.g. 5m.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub min_age: Option<std::time::Duration>,
    /// Without the daemon: trace the process for this long, e.g. 30s (as
    /// root); allocations made before tracing began are unseen.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
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
            top_processes: self.top,
            max_allocations: self.max_allocations,
            max_allocations_per_process: self.max_allocations_per_process,
            ring_kib: self.ring_kib,
            stack_sample: self.stack_sample,
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
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// Ring-buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    /// Capture the full stack of one allocation in N, chosen at random; the
    /// others keep their immediate caller. Byte counts stay exact.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_stack_sample)]
    pub stack_sample: u32,
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

fn parse_stack_sample(text: &str) -> Result<u32, String> {
    let every = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    crate::config::stack_sample("--stack-sample", every).map_err(|e| e.to_string())
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!(
            "{kib} KiB is not a power of two between 4 and 1048576"
        ));
    }
    Ok(kib)
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
    fn bad_values_are_refused() {
        for argv in [
            vec!["heapwatch", "record"],
            vec!["heapwatch", "record", "--top", "0", "--", "ls"],
            vec!["heapwatch", "record", "--top", "x", "--", "ls"],
            vec!["heapwatch", "record", "--ring-kib", "1000", "--", "ls"],
            vec!["heapwatch", "record", "--ring-kib", "-4", "--", "ls"],
            vec!["heapwatch", "record", "--format", "svg", "--", "ls"],
            vec!["heapwatch", "record", "--stack-sample", "0", "--", "ls"],
            vec![
                "heapwatch",
                "record",
                "--stack-sample",
                "1000001",
                "--",
                "ls",
            ],
            vec!["heapwatch", "daemon", "--stack-sample", "x"],
        ] {
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?} accepted");
        }
    }
}
