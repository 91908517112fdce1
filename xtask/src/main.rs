//! `cargo xtask`: the project's own tasks, so that nothing is installed by hand.

mod bench;
mod fuzz;
mod install;
mod packages;
mod python_tools;
mod run;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// heapwatch's development tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test heapwatch")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly's rust-src, bpf-linker,
    /// Debian packages, the tests' Python tools in target/tools/venv).
    Setup,
    /// Build heapwatch (release) with its eBPF programs.
    Build,
    /// Build heapwatch and run it with ARGS (as root); with no ARGS, the daemon.
    Run {
        /// Arguments for heapwatch (default: daemon).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build and install the binary, the systemd unit and the config example.
    Install {
        /// Install under this directory instead of the machine's root.
        #[arg(long, value_name = "DIR", default_value_os_t = install::default_root())]
        root: std::path::PathBuf,
        /// Install what is already built (target/release) without building.
        #[arg(long)]
        no_build: bool,
    },
    /// Measure what heapwatch costs traced programs, against bare runs and the
    /// probes' own cost (as root); prints a table and writes target/bench.json.
    Bench {
        /// malloc(64)+free pairs per thread and run (a multiple of 100).
        #[arg(long, default_value_t = 1_000_000)]
        pairs: u64,
        /// Runs of each configuration; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Fuzz the record decoder, the config and the API request parsers
    /// (cargo-fuzz, nightly), seeded from fuzz/corpus; fails on a crash.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Afterwards, merge the new inputs that add coverage into fuzz/corpus.
        #[arg(long)]
        grow: bool,
        /// The targets to run (default: all).
        targets: Vec<String>,
    },
    /// Run every test, the root-only eBPF tests included (as root; none is
    /// skipped), then, with no ARGS, each fuzz target for a few seconds.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, for example).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            run::build()
        }
        Task::Run { args } => {
            setup()?;
            run::build()?;
            if args.is_empty() {
                run::heapwatch(&["daemon".to_owned()])
            } else {
                run::heapwatch(&args)
            }
        }
        Task::Install { root, no_build } => {
            if !no_build {
                toolchain::ensure()?;
                run::build()?;
            }
            install::install(&root)
        }
        Task::Bench { pairs, runs } => bench::bench(&bench::BenchOptions { pairs, runs }),
        Task::Fuzz {
            seconds,
            grow,
            targets,
        } => fuzz::fuzz(&fuzz::FuzzOptions {
            seconds,
            targets,
            grow,
        }),
        Task::Test { args } => {
            setup()?;
            run::test(&args)?;
            // Only a full run (CI's): a filtered one is a quick check.
            if args.is_empty() {
                fuzz::fuzz(&fuzz::FuzzOptions::quick())?;
            }
            Ok(())
        }
    }
}

fn setup() -> Result<()> {
    toolchain::ensure()?;
    packages::ensure(packages::TEST_PACKAGES)?;
    python_tools::ensure()
}
