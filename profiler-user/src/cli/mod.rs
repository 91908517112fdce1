//! Command-line definitions and the subcommands' glue.

mod command;
mod record;
mod session;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use command::{CommandError, resolve_command};
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
    /// Run CMD under tracing from its first instruction and print its heap
    /// summary (valgrind's figures) and the sites still holding memory at exit.
    Record(RecordArgs),
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
    /// Show at most K sites per process.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// The allocator library to probe (default: the C library heapwatch itself uses).
    #[arg(long, value_name = "PATH")]
    pub libc: Option<PathBuf>,
    /// Ring-buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
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
        let Command::Record(args) = cli.command;
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
        ] {
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?} accepted");
        }
    }
}
