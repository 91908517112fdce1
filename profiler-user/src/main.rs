//! The `heapwatch` binary: parses the command line and dispatches.
//!
//! heapwatch allocates with mimalloc, not the C library's malloc: the probes
//! it places on libc's malloc family trap in every process that calls them,
//! heapwatch included (its programs only filter its records out), and a
//! snapshot's symbolization and JSON would otherwise pay a trap per allocation.

use clap::Parser;
use heapwatch::cli::{Cli, run};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` (its place in `mi_option_e` of
/// mimalloc v3's `mimalloc.h`; libmimalloc-sys names no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs [`commit_memory_on_use`] as the program is loaded: the Rust runtime
/// allocates before `main`, and that first allocation reserves mimalloc's
/// first arena.
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_MEMORY_ON_USE: extern "C" fn() = commit_memory_on_use;

fn main() {
    let cli = Cli::parse();
    if cli.command.logs() {
        init_logging();
    }
    let exit = run(cli.command);
    if let Some(message) = exit.message {
        eprintln!("heapwatch: {message}");
    }
    std::process::exit(exit.code);
}

/// Makes mimalloc commit its arenas' memory as it is used, not all at once:
/// memory it purges then leaves the resident set. Eagerly committed (its
/// default on Linux), what it freed stayed resident, the tables the tracker
/// outgrew among it (docs/measurements.md has the memory per live block).
extern "C" fn commit_memory_on_use() {
    // SAFETY: sets an option's value; no allocation has been made yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// Logs to stderr (the journal, under systemd); HEAPWATCH_LOG sets the filter.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEAPWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
