//! `heapwatch daemon` end to end: system-wide tracing of real workloads,
//! /metrics scraped over loopback, leak suspects, signals and sd_notify.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{
    BpfBaseline, Workload, config_file,
    daemon::{Daemon, Metrics},
    fixture, heapwatch,
    process::churn_pairs,
};

/// The leak rule's settings for tests: seconds, not minutes.
const FAST: [&str; 6] = ["--tick", "1s", "--window", "6s", "--min-age", "3s"];

#[test]
#[ignore = "needs root"]
fn live_bytes_and_leak_suspects_of_real_workloads() {
    let workload = fixture("workload");
    let baseline = BpfBaseline::take();
    let config = config_file("");
    let mut daemon = Daemon::start(&config, &[&FAST[..], &["--top", "50"]].concat());
    let started = Instant::now();
    let leak = Workload::start(&workload, "leak");
    let plateau = Workload::start(&workload, "plateau");
    let constant = Workload::start(&workload, "constant");
    let burst = Workload::start(&workload, "burst");
    let exiting = Workload::start(&workload, "exit");
    let execing = Workload::spawn(&workload, "exec");

    let live = |m: &Metrics, pid| m.process("heapwatch_process_live_bytes", pid);
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        live(m, exiting.pid()).is_some()
    });
    assert_eq!(
        live(&m, exiting.pid()),
        Some(300_000.0),
        "a process holding memory"
    );

    let suspect = |m: &Metrics, pid| {
        m.process("heapwatch_process_leak_suspect_bytes", pid)
            .unwrap_or(0.0)
    };
    let m = daemon.scrape_until(Duration::from_secs(12), |m| suspect(m, leak.pid()) > 0.0);
    let detection = started.elapsed();
    assert!(
        suspect(&m, leak.pid()) > 0.0,
        "the leak is not suspect after two windows"
    );
    eprintln!("leak detected after {detection:?} (tick 1s, window 6s, min-age 3s)");

    // Let the plateau stay flat for a whole window, and the exiting process end.
    thread::sleep(Duration::from_secs(8));
    let m = daemon.scrape();
    assert!(suspect(&m, leak.pid()) > 0.0, "the leak stays suspect");
    for (name, pid) in [
        ("plateau", plateau.pid()),
        ("constant", constant.pid()),
        ("burst", burst.pid()),
        ("exec", execing.pid()),
    ] {
        assert_eq!(suspect(&m, pid), 0.0, "{name} is not a leak");
    }
    assert_eq!(live(&m, constant.pid()), Some(1_000_000.0));
    assert_eq!(
        m.process("heapwatch_process_live_allocations", constant.pid()),
        Some(100.0)
    );
    assert_eq!(live(&m, plateau.pid()), Some(64.0 * 4096.0));
    assert_eq!(
        live(&m, execing.pid()),
        Some(1_000_000.0),
        "the pre-exec heap is dropped"
    );
    assert_eq!(
        live(&m, exiting.pid()),
        None,
        "an exited process's series are removed"
    );
    let comm = m
        .family("heapwatch_process_live_bytes")
        .into_iter()
        .find(|s| s.labels.get("pid") == Some(&constant.pid().to_string()))
        .and_then(|s| s.labels.get("comm").cloned());
    assert_eq!(comm.as_deref(), Some("workload"));
    let suspects = m
        .family("heapwatch_process_leak_suspect_bytes")
        .iter()
        .filter(|s| s.value > 0.0)
        .count();
    let series = m.family("heapwatch_process_live_bytes").len();
    assert!(
        series <= 50 + suspects + 1,
        "{series} series exceed the bound"
    );
    assert_eq!(m.dropped("ring_full"), 0.0);
    assert!(m.total("heapwatch_events_total") > 0.0);

    drop((leak, plateau, constant, burst, exiting, execing));
    assert!(
        daemon.stop().success(),
        "SIGTERM exits 0:\n{}",
        daemon.log()
    );
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn per_process_series_are_bounded() {
    let workload = fixture("workload");
    let config = config_file("");
    let mut daemon = Daemon::start(&config, &[&FAST[..], &["--top", "1"]].concat());
    let held: Vec<Workload> = (0..3)
        .map(|_| Workload::start(&workload, "constant"))
        .collect();
    // With --top 1, at most one of the three 1,000,000-byte workloads is
    // shown; the others are summed into pid="other".
    let other = |m: &Metrics| m.process_labelled("heapwatch_process_live_bytes", "other");
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        other(m).is_some_and(|v| v >= 2_000_000.0)
    });
    let family = m.family("heapwatch_process_live_bytes");
    let suspects = m
        .family("heapwatch_process_leak_suspect_bytes")
        .iter()
        .filter(|s| s.value > 0.0)
        .count();
    assert!(
        family.len() <= 1 + suspects + 1,
        "{} series with --top 1",
        family.len()
    );
    assert!(
        other(&m).is_some_and(|v| v >= 2_000_000.0),
        "the constant workloads are summed in other: {:?}",
        other(&m)
    );
    drop(held);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn sighup_reloads_a_good_config_and_keeps_the_old_on_a_bad_one() {
    let baseline = BpfBaseline::take();
    let config = config_file("tick = \"1s\"\nwindow = \"6s\"\n");
    let mut daemon = Daemon::start(&config, &[]);
    std::fs::write(&config, "tick = \"1s\"\nwindwo = \"6s\"\n").expect("break the config");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration not reloaded", Duration::from_secs(10));
    assert!(
        daemon.log().contains("windwo"),
        "the error names the key:\n{}",
        daemon.log()
    );
    daemon.assert_running();
    assert!(
        daemon.scrape().total("heapwatch_build_info") == 1.0,
        "still serving"
    );
    std::fs::write(&config, "tick = \"2s\"\nwindow = \"20s\"\n").expect("fix the config");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn sigint_and_sigkill_leave_nothing_attached() {
    let baseline = BpfBaseline::take();
    let config = config_file("");
    let mut daemon = Daemon::start(&config, &[]);
    assert!(!baseline.new_links().is_empty(), "the daemon attached");
    daemon.signal(libc::SIGINT);
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0));
    baseline.assert_nothing_left();
    let daemon = Daemon::start(&config, &[]);
    daemon.signal(libc::SIGKILL);
    drop(daemon);
    baseline.assert_nothing_left();
}

/// `heapwatch daemon --check --scope all` with `config` and `env`.
fn check_tracing_all(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    heapwatch()
        .envs(env.iter().copied())
        .args([
            "daemon",
            "--check",
            "--scope",
            "all",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config)
        .output()
        .expect("run daemon --check")
}

#[test]
#[ignore = "needs root"]
fn both_ways_of_attaching_are_used_as_asked_and_stop_leaves_nothing() {
    let config = config_file("");
    for (env, link_type, said) in [
        (
            &[][..],
            "uprobe_multi",
            "uprobes attached by multi-uprobe links",
        ),
        (
            &[("HEAPWATCH_UPROBE_LINKS", "perf-event")][..],
            "perf_event",
            "uprobes attached by perf events, one a probe (not multi-uprobe links: HEAPWATCH_UPROBE_LINKS=perf-event)",
        ),
    ] {
        let baseline = BpfBaseline::take();
        let check = check_tracing_all(&config, env);
        let stdout = String::from_utf8_lossy(&check.stdout);
        assert!(stdout.contains(said), "{env:?}: {said} not said:\n{stdout}");
        let mut daemon = Daemon::start_with_env(&config, &[], env);
        let types = baseline.new_link_types();
        assert!(
            types.iter().any(|t| t == link_type),
            "{env:?}: links of kinds {types:?}, not {link_type}"
        );
        assert_eq!(daemon.stop().code(), Some(0), "{env:?}");
        baseline.assert_nothing_left();
    }
}

#[test]
#[ignore = "needs root"]
fn check_reports_every_probe() {
    let baseline = BpfBaseline::take();
    let config = config_file("");
    let output = check_tracing_all(&config, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for probe in [
        "uprobe+uretprobe malloc in",
        "at malloc+0: `push r12` at +0 is emulated (one trap)",
        "uprobe free in",
        "at free+9: past `test rdi, rdi`, `je (taken on NULL, which needs no accounting)`: `push rbp` at +9 is emulated (one trap)",
        "uprobes attached by multi-uprobe links",
        "raw tracepoint sched_process_exit",
        "tracepoint task/task_newtask",
        "tracepoint oom/mark_victim",
    ] {
        assert!(stdout.contains(probe), "{probe} missing:\n{stdout}");
    }
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn bad_configuration_is_refused_with_the_key_named() {
    let baseline = BpfBaseline::take();
    for (file, flags, expected) in [
        ("tikc = \"1s\"\n", vec![], "tikc"),
        ("tick = \"fast\"\n", vec![], "tick"),
        ("", vec!["--window", "1s"], "window"),
        ("", vec!["--listen", "nowhere"], "listen"),
        ("", vec!["--scope", "nginx"], "scope `nginx` is not `all`"),
        ("", vec!["--scope", "pid:0"], "whole number from 1"),
        (
            "scope = [\"all\", \"comm:x\"]\n",
            vec![],
            "cannot be combined",
        ),
    ] {
        let config = config_file(file);
        let output = heapwatch()
            .args(["daemon", "--config"])
            .arg(&config)
            .args(&flags)
            .output()
            .expect("run heapwatch daemon");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{expected} not named: {stderr}");
    }
    let output = heapwatch()
        .args(["daemon", "--config", "/no/such/config.toml"])
        .output()
        .expect("run heapwatch daemon");
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/config.toml"));
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn two_threads_churning_lose_no_event() {
    let churn = fixture("churn");
    let config = config_file("");
    let mut daemon = Daemon::start(&config, &["--tick", "1s"]);
    let output = Command::new(&churn)
        .args(["2", "5"])
        .output()
        .expect("run the churn");
    let pairs = churn_pairs(&output.stdout);
    let m = daemon.scrape_until(Duration::from_secs(10), |m| m.events("free") >= pairs);
    assert!(
        m.events("alloc") >= pairs,
        "allocations counted: {} of {pairs}",
        m.events("alloc")
    );
    assert!(
        m.events("free") >= pairs,
        "frees counted: {} of {pairs}",
        m.events("free")
    );
    assert_eq!(m.dropped("ring_full"), 0.0);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn an_overflowing_ring_marks_the_losing_process_inexact_and_the_daemon_recovers() {
    let socket = support::tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    // 64 KiB of ring buffer: two threads churning flat out overflow it
    // (hundreds of thousands of records lost here); a quiet process fits.
    let mut daemon = Daemon::start(
        &config_file(""),
        &[
            &FAST[..],
            &["--ring-kib", "64", "--top", "1000", "--socket", socket_arg],
        ]
        .concat(),
    );
    let before = daemon.scrape();
    let counted_before = before.events("alloc") + before.events("free");
    let lost_before = before.dropped("ring_full");
    let churn = std::process::Command::new(fixture("churn"))
        .args(["2", "6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the churn");
    let pid = churn.id();
    let m = daemon.scrape_until(Duration::from_secs(5), |m| {
        m.process("heapwatch_process_inexact", pid) == Some(1.0)
    });
    assert!(m.dropped("ring_full") > 0.0, "nothing lost");
    assert_eq!(m.process("heapwatch_process_inexact", pid), Some(1.0));
    assert_eq!(
        m.process("heapwatch_process_leak_suspect_bytes", pid),
        Some(0.0),
        "lost frees made a leak suspect"
    );
    let snapshot = heapwatch()
        .args(["snapshot", "--format", "json", "--socket", socket_arg])
        .args(["--pid", &pid.to_string()])
        .output()
        .expect("run heapwatch snapshot");
    let json: serde_json::Value = serde_json::from_slice(&snapshot.stdout).expect("JSON");
    assert_eq!(json["inexact"], true, "{json}");
    let output = churn.wait_with_output().expect("wait for the churn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" pairs in "),
        "the churn's own result: {stdout}"
    );
    let generated = 2.0 * churn_pairs(&output.stdout);
    let counted = |m: &Metrics| m.events("alloc") + m.events("free") - counted_before;
    let lost = |m: &Metrics| m.dropped("ring_full") - lost_before;
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        counted(m) + lost(m) >= generated
    });
    eprintln!(
        "overload: 64 KiB ring, churn {}: {generated} events generated, {} counted and {} lost (the machine's)",
        stdout.trim(),
        counted(&m),
        lost(&m),
    );
    // Recovered, without a restart: a new process is tracked exactly.
    let constant = Workload::start(&fixture("workload"), "constant");
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process("heapwatch_process_live_bytes", constant.pid()) == Some(1_000_000.0)
    });
    assert_eq!(
        m.process("heapwatch_process_live_bytes", constant.pid()),
        Some(1_000_000.0)
    );
    assert_eq!(
        m.process("heapwatch_process_inexact", constant.pid()),
        Some(0.0)
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn the_watchdog_is_petted_and_stopping_is_announced() {
    let config = config_file("");
    let mut daemon = Daemon::start_with_env(&config, &[], &[("WATCHDOG_USEC", "400000")]);
    let started = Instant::now();
    daemon.wait_for_notification("WATCHDOG=1");
    daemon.wait_for_notification("WATCHDOG=1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the watchdog is petted every 200 ms"
    );
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_notification("STOPPING=1");
    assert!(daemon.stop_after_signal().success());
}

/// Stack hashes the daemon's kernel side holds as sent, as the kernel lists
/// them: the array's slots that are not empty.
///
/// Counted in bpftool's plain output line by line: this test process is
/// traced too, and parsing its JSON allocates for each of 65,536 slots.
fn known_stacks() -> usize {
    let output = Command::new("bpftool")
        .args(["map", "dump", "name", "KNOWN_STACKS"])
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "bpftool found no KNOWN_STACKS map");
    let empty = b"value: 00 00 00 00 00 00 00 00";
    output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"key:") && !line.ends_with(empty))
        .count()
}

#[test]
#[ignore = "needs root"]
fn the_stacks_of_processes_gone_are_forgotten() {
    let config = config_file("");
    let mut daemon = Daemon::start(&config, &FAST);
    let many_sites = fixture("many_sites");
    let held = || daemon.scrape().total("heapwatch_stacks_held");
    // This test's own process is traced too and keeps its stacks.
    let (before, held_before) = (known_stacks(), held());
    // Each run adds 1,000 stacks of its own (its addresses are randomized).
    for _ in 0..5 {
        let status = Command::new(&many_sites)
            .arg("exit")
            .status()
            .expect("run many_sites");
        assert!(status.success());
    }
    // Four ticks: each makes the kernel forget the stacks of the processes
    // gone before it, and drops those it made it forget the tick before.
    thread::sleep(Duration::from_secs(4));
    let held_after = held();
    assert!(
        held_after < held_before + 1000.0,
        "stacks held: {held_before} before, {held_after} after"
    );
    let after = known_stacks();
    assert!(
        after < before + 1000,
        "the kernel kept the stacks of exited processes as sent: {before} before, {after} after"
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn processes_whose_exit_records_were_lost_leave_no_series_behind() {
    // 64 KiB of ring buffer, overflowed by two threads churning flat out,
    // while short processes come and go: some of their exits are lost.
    let mut daemon = Daemon::start(
        &config_file(""),
        &[&FAST[..], &["--ring-kib", "64", "--top", "1000"]].concat(),
    );
    let churn = fixture("churn");
    let mut overflow = Command::new(&churn)
        .args(["2", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the churn");
    let mut short = 0;
    while overflow.try_wait().expect("the churn").is_none() {
        let status = Command::new(&churn)
            .args(["1", "1", "1000"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run a short churn");
        assert!(status.success());
        short += 1;
    }
    let lost = daemon.scrape().dropped("ring_full");
    assert!(lost > 0.0, "nothing lost: the test proves nothing");

    // Within a few ticks, every process with series still runs.
    let gone = |m: &Metrics| -> Vec<String> {
        m.family("heapwatch_process_live_bytes")
            .iter()
            .filter_map(|s| s.labels.get("pid"))
            .filter(|pid| {
                pid.parse::<u32>()
                    .is_ok_and(|pid| !support::process::is_running(pid))
            })
            .cloned()
            .collect()
    };
    let m = daemon.scrape_until(Duration::from_secs(5), |m| gone(m).is_empty());
    eprintln!("{short} short processes beside the overflow, {lost} records lost");
    assert_eq!(gone(&m), Vec::<String>::new(), "series of processes gone");
    assert!(daemon.stop().success());
}
