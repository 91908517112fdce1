//! What heapwatch costs around a program rather than per allocation, as a
//! user waits for it: `record -- true`, the seed's leak under `record` and
//! under valgrind (back to back), the daemon from start to ready and from
//! SIGTERM to exit, start to ready again with 500 more processes running
//! (each one's allocator is looked for at start), and one per-PID scope's
//! attach and detach. Wall times
//! in seconds, the median of the runs.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Tools, median};

/// How long any one step may take before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);

/// Measures every row, `runs` times each, interleaved.
pub fn lifecycle(tools: &Tools, runs: usize) -> Result<Value> {
    let leak = &tools.leak;
    let mut rows: [Vec<f64>; 8] = Default::default();
    for run in 0..runs {
        eprintln!("lifecycle: round {}/{runs}", run + 1);
        rows[0].push(wall(
            Command::new(&tools.heapwatch).args(["record", "--", "true"]),
        )?);
        rows[1].push(wall(
            Command::new(&tools.heapwatch)
                .arg("record")
                .arg("--")
                .arg(leak),
        )?);
        rows[2].push(wall(
            Command::new("valgrind")
                .args(["--run-libc-freeres=no", "--run-cxx-freeres=no"])
                .arg(leak),
        )?);
        let (ready, stop) = daemon_start_stop(tools, &[])?;
        rows[3].push(ready);
        rows[4].push(stop);
        let (attach, detach) = scope_attach_detach(tools)?;
        rows[5].push(attach);
        rows[6].push(detach);
        let crowd = Crowd::start(CROWD)?;
        // Scope `all` looks for every running process's allocator at start.
        let (ready_crowded, _) = daemon_start_stop(tools, &["--scope", "all"])?;
        drop(crowd);
        rows[7].push(ready_crowded);
    }
    let [
        record_true,
        record_leak,
        valgrind_leak,
        ready,
        stop,
        attach,
        detach,
        ready_crowded,
    ] = rows.map(|mut values| median(&mut values));
    Ok(json!({
        "runs": runs,
        "record_true_secs": record_true,
        "record_leak_secs": record_leak,
        "valgrind_leak_secs": valgrind_leak,
        "daemon_ready_secs": ready,
        "daemon_stop_secs": stop,
        "scope_attach_secs": attach,
        "scope_detach_secs": detach,
        "daemon_ready_crowded_secs": ready_crowded,
    }))
}

/// Prints the rows as a table.
pub fn print(row: &Value) {
    println!(
        "\nlifecycle: wall seconds, median of {} runs (leak: tests/fixtures/leak.c, the seed's)\n",
        row["runs"]
    );
    println!(
        "| record -- true | record leak | valgrind leak | daemon start to ready | daemon SIGTERM to exit | scope attach | scope detach | daemon ready, scope all, {CROWD} more processes |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let secs = |key: &str| format!("{:.3}", row[key].as_f64().unwrap_or(0.0));
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        secs("record_true_secs"),
        secs("record_leak_secs"),
        secs("valgrind_leak_secs"),
        secs("daemon_ready_secs"),
        secs("daemon_stop_secs"),
        secs("scope_attach_secs"),
        secs("scope_detach_secs"),
        secs("daemon_ready_crowded_secs"),
    );
}

/// Processes running while the daemon starts, for its scan of /proc.
const CROWD: usize = 500;

/// `count` idle processes (`sleep`), killed when dropped.
struct Crowd(Vec<std::process::Child>);

impl Crowd {
    fn start(count: usize) -> Result<Self> {
        let mut crowd = Self(Vec::with_capacity(count));
        for _ in 0..count {
            crowd.0.push(
                Command::new("sleep")
                    .arg("600")
                    .stdout(Stdio::null())
                    .spawn()
                    .context("start an idle process")?,
            );
        }
        Ok(crowd)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The wall time of `command`, which must succeed; its output is dropped.
fn wall(command: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A fresh path in the bench's directory (what was there is removed).
fn fresh(tools: &Tools, name: &str) -> PathBuf {
    let path = tools.dir.join(name);
    let _ = fs::remove_file(&path);
    path
}

/// The daemon's arguments: loopback metrics on a free port, its own API
/// socket and an empty configuration.
fn daemon_command(tools: &Tools) -> Result<Command> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = tools.dir.join("lifecycle.toml");
    fs::write(&config, "")?;
    let mut command = Command::new(&tools.heapwatch);
    command
        .args([
            "daemon",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(config)
        .arg("--socket")
        .arg(fresh(tools, "lifecycle.sock"));
    Ok(command)
}

/// (start to READY=1, SIGTERM to exit) of a daemon at its defaults but `extra`.
fn daemon_start_stop(tools: &Tools, extra: &[&str]) -> Result<(f64, f64)> {
    let notify_path = fresh(tools, "notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(PATIENCE))?;
    let started = Instant::now();
    let mut child = daemon_command(tools)?
        .args(extra)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut message = [0u8; 256];
    loop {
        let len = notify
            .recv(&mut message)
            .context("the daemon never said READY=1")?;
        if String::from_utf8_lossy(&message[..len]).contains("READY=1") {
            break;
        }
    }
    let ready = started.elapsed().as_secs_f64();
    let stopping = Instant::now();
    super::signal(child.id(), "TERM")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("the daemon stopped with {status}");
    }
    Ok((ready, stopping.elapsed().as_secs_f64()))
}

/// (a process's start to its probes attached, its exit to its probes
/// detached) under a daemon whose scope selects that process alone.
fn scope_attach_detach(tools: &Tools) -> Result<(f64, f64)> {
    let selected = tools.dir.join("hw-scope-bench");
    fs::copy(which("sleep")?, &selected)?;
    let mut daemon = daemon_command(tools)?
        .args(["--scope", "comm:hw-scope-bench"])
        .env("HEAPWATCH_LOG", "heapwatch=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let lines = stamped_lines(daemon.stderr.take().context("daemon stderr")?);
    let result = (|| {
        wait_for(&lines, |line| line.contains("tracing the selected"))?;
        let started = Instant::now();
        let mut process = Command::new(&selected).arg("1").spawn()?;
        let pid = format!("pid={}", process.id());
        let attached = wait_for(&lines, |line| {
            line.contains("scope: tracing") && line.contains(&pid)
        })?;
        process.wait()?;
        let ended = Instant::now();
        let detached = wait_for(&lines, |line| {
            line.contains("scope: detached") && line.contains(&pid)
        })?;
        Ok((
            attached.duration_since(started).as_secs_f64(),
            detached.duration_since(ended).as_secs_f64(),
        ))
    })();
    super::signal(daemon.id(), "TERM")?;
    daemon.wait()?;
    result
}

/// The daemon's log lines as they come, each with when it came, its
/// terminal colours taken out.
fn stamped_lines(stderr: impl std::io::Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender
                .send((Instant::now(), without_colours(&line)))
                .is_err()
            {
                break;
            }
        }
    });
    receiver
}

/// When the first line `matches` came.
fn wait_for(
    lines: &mpsc::Receiver<(Instant, String)>,
    matches: impl Fn(&str) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = lines
            .recv_timeout(left)
            .context("the daemon did not log what the bench waits for")?;
        if matches(&line) {
            return Ok(at);
        }
    }
}

/// `line` without ANSI escape sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The program `name` on PATH.
fn which(name: &str) -> Result<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_taken_out() {
        assert_eq!(
            without_colours(
                "\u{1b}[32m INFO\u{1b}[0m scope: tracing \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m42"
            ),
            " INFO scope: tracing pid=42"
        );
    }
}
