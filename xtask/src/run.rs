//! Building, running and testing heapwatch.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{packages::is_root, toolchain::run};

/// Environment variable that makes root-only tests fail instead of skipping.
const REQUIRE_ROOT_TESTS: &str = "HEAPWATCH_REQUIRE_ROOT_TESTS";

/// Builds the release binary (the eBPF object is built by its build script).
pub fn build() -> Result<()> {
    run(Command::new(cargo()).args(["build", "--release", "--package", "profiler-user"]))
}

/// Runs the built heapwatch with `args`.
pub fn heapwatch(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "heapwatch loads eBPF programs and needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): run as root"
        );
    }
    let binary = workspace_root().join("target/release/heapwatch");
    let status = Command::new(&binary).args(args).status()?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Builds every test first (nothing compiles while probes are attached), then
/// runs them one at a time, root-only ones included.
pub fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask test` runs the eBPF tests, which need root: run it as root");
    }
    run(Command::new(cargo()).args(["test", "--release", "--no-run", "--quiet"]))?;
    let mut child = Command::new(cargo())
        .args(["test", "--release"])
        .args(args)
        .args(["--", "--test-threads=1"])
        .env(REQUIRE_ROOT_TESTS, "1")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child.wait()?;
    println!(
        "cargo xtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if !status.success() {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Sums of cargo test's "test result:" lines.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(result) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in result.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let count: u64 = count.parse().unwrap_or(0);
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
