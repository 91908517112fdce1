//! The command line: clap's definitions and one thin file per command,
//! each parsing its flags, calling the library and printing.

mod daemon;
mod floor;
mod output;
mod ps;
mod record;
mod snapshot;
mod values;

use clap::{Parser, Subcommand};

pub use daemon::DaemonArgs;
pub use floor::FloorArgs;
pub use ps::PsArgs;
pub use record::RecordArgs;
pub use snapshot::SnapshotArgs;

use crate::report::CommandStatus;

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
    Daemon(Box<DaemonArgs>),
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

impl Command {
    /// True for the daemon, which logs (to the journal under systemd).
    pub fn logs(&self) -> bool {
        matches!(self, Self::Daemon(_))
    }
}

/// How heapwatch ends: what to say on stderr, and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    /// The error, with its causes, when there was one.
    pub message: Option<String>,
    /// The process's exit code.
    pub code: i32,
}

/// Runs the command.
pub fn run(command: Command) -> Exit {
    match command {
        Command::Daemon(args) => finish(daemon::run(&args).map(|()| 0), |_| 1),
        Command::Snapshot(args) => finish(snapshot::run(&args).map(|()| 0), |e| e.exit_code()),
        Command::Ps(args) => finish(ps::run(&args).map(|()| 0), |e| e.exit_code()),
        Command::Record(args) => finish(record::run(&args).map(exit_code), |e| e.exit_code()),
        Command::Floor(args) => finish(floor::run(&args).map(exit_code), |e| e.exit_code()),
    }
}

/// The command's exit code, as a shell gives it: 128 + N when signal N killed it.
fn exit_code(status: CommandStatus) -> i32 {
    match status {
        CommandStatus::Exited(code) => code,
        CommandStatus::Killed(signal) => 128 + signal,
    }
}

fn finish<E: std::error::Error>(result: Result<i32, E>, code_of: impl Fn(&E) -> i32) -> Exit {
    match result {
        Ok(code) => Exit {
            message: None,
            code,
        },
        Err(err) => Exit {
            message: Some(error_chain(&err)),
            code: code_of(&err),
        },
    }
}

/// The error and its causes, joined as "what: why: deeper why".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
}
