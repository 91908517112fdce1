//! `heapwatch daemon`: its flags, turned into the daemon's configuration source.

use std::path::PathBuf;

use clap::Args;

use super::values::{parse_cap, parse_ring_kib, parse_stack_sample, parse_thread_slots, parse_top};
use crate::{
    config::{ConfigSource, Settings},
    daemon::{self, DaemonError},
};

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
    /// Which processes to trace. `tiered`: every process watched from the
    /// kernel at no cost, and traced exactly while its memory grows
    /// (selectors beside it are traced always). `all`: every process traced
    /// exactly (every allocator call traps: allocation-heavy programs run
    /// several times slower, docs/measurements.md has the figures).
    /// Or selectors, each flag one (a process any picks is traced):
    /// `pid:N`, `comm:NAME`, `unit:NAME` (systemd unit or container id),
    /// `cgroup:/PATH` (and below); selected processes are probed one by
    /// one, started later ones too, the others run untouched [default: tiered].
    #[arg(long, value_name = "SELECTOR")]
    pub scope: Vec<String>,
    /// With scope `tiered`: how long a growing process is traced before it
    /// is judged again, e.g. 10m [default: 10m].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub trace_for: Option<String>,
    /// With scope `tiered`: the slowdown tracing may put a growing process
    /// to, in percent of its CPU time; past it, the process is let go [default: 5].
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true)]
    pub max_overhead: Option<f64>,
    /// Where the daemon keeps what outlives it: the OOM killer's victims'
    /// reports, under oom/ (an absolute path) [default: /var/lib/heapwatch].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Load and attach everything, report what works, and exit.
    #[arg(long)]
    pub check: bool,
    /// The API socket (snapshots, process list, health).
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl DaemonArgs {
    /// Where the configuration comes from: the file and these flags.
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource {
            file: self.config.clone(),
            flags: Settings {
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
                trace_for: self.trace_for.clone(),
                max_overhead: self.max_overhead,
                state_dir: self.state_dir.clone(),
            },
        }
    }
}

/// Runs the daemon, or with `--check` checks that it could run.
pub fn run(args: &DaemonArgs) -> Result<(), DaemonError> {
    let source = args.config_source();
    if args.check {
        daemon::check(&source)
    } else {
        daemon::run(&source, &args.socket)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::{
        cli::Cli,
        config::{
            DEFAULT_LISTEN, DEFAULT_MAX_ALLOCATIONS, DEFAULT_MAX_ALLOCATIONS_PER_PROCESS,
            DEFAULT_RING_KIB, DEFAULT_STACK_SAMPLE, DEFAULT_THREAD_SLOTS, DEFAULT_TOP_PROCESSES,
            DEFAULT_TRACE_FOR,
        },
        leaks::LeakConfig,
    };

    /// A duration as the flags write it: the largest unit that divides it.
    fn written(duration: std::time::Duration) -> String {
        let secs = duration.as_secs();
        match secs {
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }

    #[test]
    fn the_help_names_the_defaults_in_force() {
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("daemon")
            .expect("daemon")
            .render_help()
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let leak = LeakConfig::default();
        for default in [
            DEFAULT_LISTEN.to_owned(),
            written(leak.tick),
            written(leak.window),
            written(leak.min_age),
            written(DEFAULT_TRACE_FOR),
            DEFAULT_TOP_PROCESSES.to_string(),
            DEFAULT_MAX_ALLOCATIONS.to_string(),
            DEFAULT_MAX_ALLOCATIONS_PER_PROCESS.to_string(),
            DEFAULT_RING_KIB.to_string(),
            DEFAULT_STACK_SAMPLE.to_string(),
            DEFAULT_THREAD_SLOTS.to_string(),
        ] {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "--help does not say the default {default}:\n{help}"
            );
        }
    }
}
