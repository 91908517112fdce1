//! Building, running and testing heapwatch.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{packages::is_root, toolchain::run};

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
/// runs them one at a time, the `#[ignore = "needs root"]` ones included.
pub fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask test` runs the eBPF tests, which need root: run it as root");
    }
    run(Command::new(cargo()).args(["test", "--release", "--no-run", "--quiet"]))?;
    let mut child = Command::new(cargo())
        .args(["test", "--release"])
        .args(args)
        .args(["--", "--include-ignored", "--test-threads=1"])
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
        "cargo xtask test: {} passed, {} failed, {} ignored",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    // --include-ignored runs every test: one still reported ignored would
    // let the run pass without it.
    if totals.ignored > 0 {
        bail!(
            "{} tests were reported ignored despite --include-ignored",
            totals.ignored
        );
    }
    Ok(())
}

/// Sums of cargo test's "test result:" lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
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
                "ignored" => self.ignored += count,
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

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn totals_sum_the_result_lines_and_skip_the_rest() {
        let mut totals = TestTotals::default();
        for line in [
            "running 5 tests",
            "test a_test ... ok",
            "test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 1 passed; 4 failed; 0 ignored; 0 measured; 7 filtered out; finished in 2.50s",
        ] {
            totals.add(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                passed: 4,
                failed: 4,
                ignored: 2,
            }
        );
    }
}
