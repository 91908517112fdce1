//! Fuzzing heapwatch's decoders and parsers with cargo-fuzz (libFuzzer, nightly).
//!
//! Each run starts from the seeds in fuzz/corpus/TARGET and never writes
//! there: what it finds goes to target/fuzz-corpus/TARGET, emptied first, and
//! only `--grow` merges that back into the repository's corpus.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{packages, run::workspace_root, toolchain};

/// What to fuzz, and for how long.
pub struct FuzzOptions {
    /// Seconds each target runs.
    pub seconds: u64,
    /// The targets to run; none: all of them.
    pub targets: Vec<String>,
    /// Merge the new inputs that add coverage into the repository's corpus.
    pub grow: bool,
}

impl FuzzOptions {
    /// Every target for 10 seconds: what `cargo xtask test` runs.
    pub fn quick() -> Self {
        Self {
            seconds: 10,
            targets: Vec::new(),
            grow: false,
        }
    }
}

/// Runs each target in turn and prints how each did; fails if any crashed.
pub fn fuzz(options: &FuzzOptions) -> Result<()> {
    toolchain::ensure()?;
    // libfuzzer-sys compiles libFuzzer, which is C++.
    packages::ensure(&["g++"])?;
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let targets = select_targets(&root, &options.targets)?;
    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = run_target(&root, target, options.seconds)?;
        if outcome.passed && options.grow {
            grow(&root, target)?;
        }
        outcomes.push(outcome);
    }
    for outcome in &outcomes {
        println!("cargo xtask fuzz: {outcome}");
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if failed > 0 {
        bail!("{failed} of {} fuzz targets failed", outcomes.len());
    }
    Ok(())
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it");
    toolchain::run(nightly_cargo().args(["install", "cargo-fuzz", "--locked"]))
}

/// The targets named, checked against fuzz/Cargo.toml's; none named: all of them.
fn select_targets(root: &Path, named: &[String]) -> Result<Vec<String>> {
    let out = nightly_cargo()
        .current_dir(root)
        .args(["fuzz", "list"])
        .output()
        .context("run `cargo fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    if let Some(unknown) = named.iter().find(|n| !all.contains(n)) {
        bail!("no fuzz target `{unknown}` (there are {})", all.join(", "));
    }
    Ok(if named.is_empty() {
        all
    } else {
        named.to_vec()
    })
}

/// Fuzzes `target` for `seconds`, seeded from the repository's corpus; the
/// output streams through and is read for statistics and a crashing input.
fn run_target(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let scratch = scratch_dir(root, target);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("empty {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let mut cmd = fuzz_run(root, target);
    cmd.arg(&scratch);
    let seeds = seed_dir(root, target);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let mut outcome = Outcome {
        target: target.to_owned(),
        ..Outcome::default()
    };
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            eprintln!("{line}");
            outcome.read(&line);
        }
    }
    outcome.passed = child.wait()?.success();
    Ok(outcome)
}

/// Copies into the repository's corpus the inputs of the run's corpus that add coverage.
fn grow(root: &Path, target: &str) -> Result<()> {
    let seeds = seed_dir(root, target);
    fs::create_dir_all(&seeds).with_context(|| format!("create {}", seeds.display()))?;
    toolchain::run(
        fuzz_run(root, target)
            .arg(&seeds)
            .arg(scratch_dir(root, target))
            .args(["--", "-merge=1"]),
    )
}

/// `cargo fuzz run TARGET`, with overflow checks on (they find bugs too).
fn fuzz_run(root: &Path, target: &str) -> Command {
    let mut cmd = nightly_cargo();
    cmd.current_dir(root)
        .args(["fuzz", "run", "--debug-assertions", target]);
    cmd
}

/// The repository's corpus of `target`.
fn seed_dir(root: &Path, target: &str) -> PathBuf {
    root.join("fuzz/corpus").join(target)
}

/// Where a run of `target` keeps the inputs it finds.
fn scratch_dir(root: &Path, target: &str) -> PathBuf {
    root.join("target/fuzz-corpus").join(target)
}

/// `cargo +nightly`: cargo-fuzz needs nightly's sanitizer flags.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    cmd
}

/// How one target's run went.
#[derive(Default)]
struct Outcome {
    target: String,
    passed: bool,
    /// Inputs executed, from libFuzzer's final statistics.
    runs: Option<u64>,
    /// Average executions per second, likewise.
    execs_per_sec: Option<u64>,
    /// Where libFuzzer wrote the input that crashed the target (or timed out).
    failing_input: Option<String>,
}

impl Outcome {
    /// Takes what it needs from a line of libFuzzer's output.
    fn read(&mut self, line: &str) {
        let number = |text: &str| text.trim().parse().ok();
        if let Some(runs) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = number(runs);
        } else if let Some(speed) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.execs_per_sec = number(speed);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            self.failing_input = Some(path.trim().to_owned());
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let verdict = if self.passed { "passed" } else { "FAILED" };
        write!(
            f,
            "{}: {verdict}, {} runs ({} execs/s)",
            self.target,
            shown(self.runs),
            shown(self.execs_per_sec)
        )?;
        match (&self.failing_input, self.passed) {
            (Some(input), _) => write!(
                f,
                "; failing input written to {input} (replay: cargo +nightly fuzz run --debug-assertions {} {input})",
                self.target
            ),
            (None, false) => write!(f, "; see the output above"),
            (None, true) => Ok(()),
        }
    }
}
