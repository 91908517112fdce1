//! What users feel: real programs — a C++ compile, perl filling a hash,
//! python3 round-tripping JSON, sort — bare, under a daemon tracing every
//! process (`--scope all`) and under the daemon at its defaults (tiers),
//! seconds, the median of the runs, and each one's ratio to bare. A short
//! program is run several times back to back as one sample, so that a
//! difference of a few percent stands above the machine's noise; the
//! configurations' order alternates from round to round, so that the
//! machine's drift favours none.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Daemon, Tools, median};

/// A translation unit heavy on templates, as real C++ is.
const CXX_SOURCE: &str = r#"#include <iostream>
#include <map>
#include <regex>
#include <string>
int main() {
    std::map<std::string, int> words;
    std::regex word("[a-z]+");
    std::string text = "the quick brown fox jumps over the lazy dog";
    for (std::sregex_iterator it(text.begin(), text.end(), word), end; it != end; ++it)
        ++words[it->str()];
    for (auto &[w, n] : words) std::cout << w << ' ' << n << '\n';
}
"#;

/// The daemon's configurations measured, beside bare.
const CONFIGURATIONS: [(&str, &[&str]); 2] = [
    ("scope all", &["--scope", "all"]),
    ("defaults (scope tiered)", &[]),
];

/// One program: its name, its command line, and how many runs make one
/// sample (a few seconds).
struct Program {
    name: &'static str,
    argv: Vec<String>,
    repeat: u32,
}

/// Measures every program bare and under each configuration, `runs` times.
pub fn programs(tools: &Tools, runs: usize) -> Result<Value> {
    let programs = prepare(&tools.dir)?;
    // times[program][configuration: bare, then CONFIGURATIONS], seconds a run
    let mut times = vec![vec![Vec::new(); CONFIGURATIONS.len() + 1]; programs.len()];
    for run in 0..runs {
        eprintln!("programs: round {}/{runs}", run + 1);
        let mut order: Vec<usize> = (0..=CONFIGURATIONS.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for configuration in order {
            let daemon = match configuration.checked_sub(1) {
                None => None,
                Some(c) => {
                    let (name, flags) = CONFIGURATIONS[c];
                    Some(Daemon::start(tools, flags).with_context(|| format!("daemon, {name}"))?)
                }
            };
            for (i, program) in programs.iter().enumerate() {
                times[i][configuration].push(sample(program)?);
            }
            drop(daemon);
        }
    }
    let rows: Vec<Value> = programs
        .iter()
        .zip(&mut times)
        .map(|(program, times)| {
            let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
            json!({
                "program": program.name,
                "runs_per_sample": program.repeat,
                "bare_secs": medians[0],
                "scope_all_secs": medians[1],
                "tiered_secs": medians[2],
            })
        })
        .collect();
    Ok(json!({ "runs": runs, "rows": rows }))
}

/// Prints the table.
pub fn print(report: &Value) {
    println!(
        "\nreal programs: wall seconds a run, median of {} samples (each of one or more runs back to back), bare and under the daemon\n",
        report["runs"]
    );
    println!(
        "| program | runs a sample | bare | scope all | × bare | defaults (tiered) | × bare |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in report["rows"].as_array().into_iter().flatten() {
        let secs = |key: &str| row[key].as_f64().unwrap_or(0.0);
        let bare = secs("bare_secs").max(f64::MIN_POSITIVE);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
            row["program"].as_str().unwrap_or(""),
            row["runs_per_sample"],
            bare,
            secs("scope_all_secs"),
            secs("scope_all_secs") / bare,
            secs("tiered_secs"),
            secs("tiered_secs") / bare,
        );
    }
}

/// The programs, with their inputs written to `dir`.
fn prepare(dir: &Path) -> Result<Vec<Program>> {
    let source = dir.join("heavy.cpp");
    fs::write(&source, CXX_SOURCE)?;
    let lines = dir.join("lines.txt");
    fs::write(&lines, shuffled_lines(1_000_000))?;
    let path = |p: &Path| p.display().to_string();
    let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    Ok(vec![
        Program {
            name: "g++ -O1 -c (regex, map, iostream)",
            argv: argv(&[
                "g++",
                "-O1",
                "-c",
                &path(&source),
                "-o",
                &path(&dir.join("heavy.o")),
            ]),
            repeat: 1,
        },
        Program {
            name: "perl: a 300,000-entry hash",
            argv: argv(&[
                "perl",
                "-e",
                "my %h; $h{$_} = $_ x 2 for 1..300000; print scalar(keys %h)",
            ]),
            repeat: 6,
        },
        Program {
            name: "python3: JSON of 200,000 dicts",
            argv: argv(&[
                "python3",
                "-c",
                "import json; d = [{'a': i, 'b': str(i)} for i in range(200000)]; json.loads(json.dumps(d))",
            ]),
            repeat: 4,
        },
        Program {
            name: "sort: 1,000,000 lines",
            argv: argv(&["sort", &path(&lines)]),
            repeat: 4,
        },
    ])
}

/// `count` numbered lines in a fixed pseudo-random order.
fn shuffled_lines(count: u64) -> String {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut text = String::with_capacity(count as usize * 16);
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(&format!("line {}\n", state % 10_000_000));
    }
    text
}

/// The wall seconds of one run of `program`: its sample's, averaged.
fn sample(program: &Program) -> Result<f64> {
    let mut total = 0.0;
    for _ in 0..program.repeat {
        total += wall(&program.argv)?;
    }
    Ok(total / f64::from(program.repeat))
}

/// The wall time of `argv`, which must succeed; its output is dropped.
fn wall(argv: &[String]) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("run {}", argv[0]))?;
    if !status.success() {
        bail!("{} failed: {status}", argv.join(" "));
    }
    Ok(started.elapsed().as_secs_f64())
}
