//! Faults around a running daemon: killed with SIGKILL and restarted, PIDs
//! reused, a process exec'ing while its threads allocate, processes killed
//! inside the allocator, and live blocks past the memory caps.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{
    BpfBaseline, KillOnDrop, Workload, config_file,
    daemon::{Daemon, Metrics},
    fixture,
    process::{
        Gated, INT3, eventually, first_byte_of_malloc, is_running, snapshot_json, status_kib,
        workload_named,
    },
    sigalloc_count, tempfile_path,
};

const LIVE: &str = "heapwatch_process_live_bytes";
const BLOCKS: &str = "heapwatch_process_live_allocations";
const ALLOCS: &str = "heapwatch_process_allocations_total";
const INEXACT: &str = "heapwatch_process_inexact";

/// Asserts that process `pid` holds what `workload constant` makes, exactly:
/// 100 allocations, 1,000,000 live bytes, nothing inexact.
fn assert_constant_exactly(m: &Metrics, pid: u32) {
    assert_eq!(m.process(ALLOCS, pid), Some(100.0), "allocations of {pid}");
    assert_eq!(
        m.process(LIVE, pid),
        Some(1_000_000.0),
        "live bytes of {pid}"
    );
    assert_eq!(m.process(INEXACT, pid), Some(0.0), "{pid} inexact");
}

#[test]
#[ignore = "needs root"]
fn a_daemon_killed_with_sigkill_leaves_its_processes_running_untouched() {
    let baseline = BpfBaseline::take();
    let daemon = Daemon::start(&config_file(""), &[]);
    let churn = Command::new(fixture("churn"))
        .args(["2", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the churn");
    let _churn_guard = KillOnDrop::pid_only(churn.id() as i32);
    let constant = Workload::start(&fixture("workload"), "constant");
    assert!(
        eventually(|| first_byte_of_malloc(constant.pid()) == Some(INT3)),
        "the daemon put no breakpoint into a running process"
    );
    thread::sleep(Duration::from_millis(500));
    daemon.signal(libc::SIGKILL);
    drop(daemon);
    baseline.assert_nothing_left();
    assert_ne!(
        first_byte_of_malloc(constant.pid()),
        Some(INT3),
        "a breakpoint outlived the daemon"
    );
    assert!(is_running(constant.pid()), "the traced process died");
    let output = churn.wait_with_output().expect("wait for the churn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" pairs in "),
        "the churn did not finish as it would alone: {stdout}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_restarted_daemon_counts_frees_of_blocks_it_never_saw_as_unmatched() {
    let config = config_file("");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let args = ["--tick", "1s", "--socket", socket_arg];
    let first = Daemon::start(&config, &args);
    let mut holder = Gated::spawn(&fixture("workload"), "release");
    holder.read_line("ready\n");
    let pid = holder.pid();
    let m = first.scrape_until(Duration::from_secs(10), |m| {
        m.process(LIVE, pid) == Some(1_000_000.0)
    });
    assert_eq!(m.process(LIVE, pid), Some(1_000_000.0));
    first.signal(libc::SIGKILL);
    drop(first);

    let mut second = Daemon::start(&config, &args);
    // The 100 blocks the first daemon saw are freed, 10 of 1,000 bytes made.
    holder.step("released\n");
    let m = second.scrape_until(Duration::from_secs(10), |m| {
        m.process(BLOCKS, pid) == Some(10.0)
    });
    assert_eq!(m.process(LIVE, pid), Some(10_000.0), "never negative");
    assert_eq!(m.process(BLOCKS, pid), Some(10.0));
    assert_eq!(m.process("heapwatch_process_frees_total", pid), Some(0.0));
    assert_eq!(m.process(INEXACT, pid), Some(1.0));
    // Blocks from before this daemon: told apart from records missed.
    assert!(m.total("heapwatch_pretrace_frees_total") >= 100.0);
    let json = snapshot_json(&socket, pid).expect("a snapshot");
    assert_eq!(json["unmatched_frees"], 100, "{json}");
    assert_eq!(json["in_use_bytes"], 10_000, "{json}");
    assert_eq!(json["inexact"], true, "{json}");
    assert!(second.stop().success());
}

/// Starts `workload constant` from `binary` as process `pid`, freed by its
/// previous owner: the kernel hands out the PID after `ns_last_pid` next.
fn constant_at_pid(binary: &std::path::Path, pid: u32) -> Workload {
    for _ in 0..100 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid");
        let workload = Workload::start(binary, "constant");
        if workload.pid() == pid {
            return workload;
        }
    }
    panic!("PID {pid} was not handed out again");
}

#[test]
#[ignore = "needs root"]
fn a_reused_pid_starts_with_nothing_of_the_process_before_it() {
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--top", "1000"]);
    let old = Workload::start(&workload_named("hw_old"), "constant");
    let pid = old.pid();
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process(LIVE, pid) == Some(1_000_000.0)
    });
    assert_eq!(m.process(LIVE, pid), Some(1_000_000.0));
    drop(old);
    let new = constant_at_pid(&workload_named("hw_new"), pid);
    let comm = |m: &Metrics| {
        m.family(LIVE)
            .into_iter()
            .find(|s| s.labels.get("pid") == Some(&pid.to_string()))
            .and_then(|s| s.labels.get("comm").cloned())
    };
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        comm(m).as_deref() == Some("hw_new") && m.process(ALLOCS, pid) == Some(100.0)
    });
    assert_eq!(comm(&m).as_deref(), Some("hw_new"));
    assert_constant_exactly(&m, pid);
    drop(new);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn a_process_exec_ing_while_its_threads_allocate_starts_afresh() {
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--top", "1000"]);
    let busy = Workload::spawn(&fixture("workload"), "exec_busy");
    let pid = busy.pid();
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process(ALLOCS, pid) == Some(100.0)
    });
    // Only the new image's 100 blocks: none of the old threads' churn and
    // leaks, and nothing lost or unpaired on the way.
    assert_constant_exactly(&m, pid);
    assert_eq!(m.process(BLOCKS, pid), Some(100.0));
    assert_eq!(m.dropped("ring_full"), 0.0);
    drop(busy);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn processes_killed_inside_the_allocator_leave_no_state_behind() {
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--top", "1000"]);
    let before = daemon.scrape();
    // Two threads churning under the probes spend most of their time in the
    // probes' traps, and a signal is taken on the way out of a trap: most
    // of these kills land between an allocator call's entry and its return.
    let mut killed = Vec::new();
    for round in 0..20u64 {
        let mut churn = KillOnDrop::new(
            Command::new(fixture("churn"))
                .args(["2", "10"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start the churn"),
        );
        thread::sleep(Duration::from_millis(100 + 7 * round));
        churn.kill_now();
        killed.push(churn.pid());
    }
    let constant = Workload::start(&fixture("workload"), "constant");
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process(LIVE, constant.pid()) == Some(1_000_000.0)
            && killed.iter().all(|&pid| m.process(LIVE, pid).is_none())
    });
    for pid in &killed {
        assert_eq!(m.process(LIVE, *pid), None, "killed {pid} still has state");
    }
    assert_constant_exactly(&m, constant.pid());
    assert_eq!(m.dropped("unpaired"), before.dropped("unpaired"));
    assert_eq!(m.dropped("ring_full"), 0.0);
    drop(constant);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn past_the_caps_blocks_are_refused_counted_and_cost_no_memory() {
    let mut daemon = Daemon::start(
        &config_file(""),
        &[
            "--tick",
            "1s",
            "--max-allocations",
            "2000000",
            "--max-allocations-per-process",
            "1000000",
        ],
    );
    let idle_kib = status_kib(daemon.pid(), "VmRSS");
    let before = daemon.scrape();
    // 10,000,000 live blocks of 32 bytes over 1,000 sites.
    let holder = Workload::start_with(&fixture("many_sites"), &["hold", "10000"]);
    let pid = holder.pid();
    let refused_before = before.total("heapwatch_refused_allocations_total");
    let m = daemon.scrape_until(Duration::from_secs(60), |m| {
        m.total("heapwatch_refused_allocations_total") - refused_before >= 9_000_000.0
    });
    let peak_kib = status_kib(daemon.pid(), "VmHWM");
    let refused = m.total("heapwatch_refused_allocations_total") - refused_before;
    let tracker_bytes = m.total("heapwatch_tracker_memory_bytes");
    eprintln!(
        "caps 1,000,000 per process, 2,000,000 in all; 10,000,000 live blocks made: {} tracked, {refused} refused, {} lost; tracker {tracker_bytes} bytes; daemon RSS {idle_kib} KiB idle, peak {peak_kib} KiB",
        m.process(BLOCKS, pid).unwrap_or(0.0),
        m.dropped("ring_full"),
    );
    assert_eq!(m.dropped("ring_full"), 0.0);
    assert_eq!(refused, 9_000_000.0);
    assert_eq!(m.process(BLOCKS, pid), Some(1_000_000.0));
    assert_eq!(m.process(LIVE, pid), Some(32_000_000.0));
    assert_eq!(m.process(ALLOCS, pid), Some(10_000_000.0));
    assert_eq!(m.process(INEXACT, pid), Some(1.0));
    // A million blocks take about 35 MB of tables (21-byte buckets, 1.65 a
    // block); ten million, uncapped, took 470 MB of RSS.
    assert!(tracker_bytes < 64.0 * 1024.0 * 1024.0, "{tracker_bytes}");
    assert!(
        peak_kib - idle_kib < 150 * 1024,
        "the daemon grew from {idle_kib} KiB to {peak_kib} KiB"
    );
    drop(holder);
    assert!(daemon.stop().success());
}

/// The C library this test process maps (the one the daemon probes).
fn libc_path() -> String {
    fs::read_to_string("/proc/self/maps")
        .expect("read the maps")
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .expect("the C library is mapped")
        .to_owned()
}

/// bpftrace programs attached by process `pid`, as `bpftool perf show` lists them.
fn attached_by(pid: u32) -> bool {
    let output = Command::new("bpftool")
        .args(["-j", "perf", "show"])
        .output()
        .expect("run bpftool");
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    listing
        .as_array()
        .is_some_and(|entries| entries.iter().any(|e| e["pid"] == pid))
}

#[test]
#[ignore = "needs root"]
fn a_process_killed_between_mallocs_entry_and_return_leaves_nothing_for_its_pid() {
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--top", "1000"]);
    let workload = fixture("workload");
    let mut doomed = Gated::spawn(&workload, "doomed");
    doomed.read_line("ready\n");
    let pid = doomed.pid();
    // A second program on malloc's breakpoint kills the process at the entry
    // of its malloc(777777): heapwatch's entry program has run, its return
    // program never will.
    let script = format!(
        "uprobe:{}:malloc /pid == {pid} && arg0 == 777777/ {{ signal(\"KILL\"); }}",
        libc_path()
    );
    let bpftrace = KillOnDrop::new(
        Command::new("bpftrace")
            .args(["--unsafe", "-e", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("start bpftrace"),
    );
    assert!(
        eventually(|| attached_by(bpftrace.pid())),
        "bpftrace did not attach"
    );
    let before = daemon.scrape();
    doomed.poke();
    assert_eq!(doomed.killing_signal(), Some(libc::SIGKILL));
    drop(bpftrace);
    // Its PID, and so its main thread's id, goes to a new process: a call
    // state kept by thread id would pair that process's first malloc with
    // the dead one's 777,777 bytes.
    let reborn = constant_at_pid(&workload, pid);
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process(ALLOCS, pid) == Some(100.0)
    });
    assert_constant_exactly(&m, pid);
    assert_eq!(m.dropped("unpaired"), before.dropped("unpaired"));
    drop(reborn);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn after_a_burst_is_freed_the_trackers_memory_returns_to_its_size_before() {
    const TRACKER: &str = "heapwatch_tracker_memory_bytes";
    let baseline = BpfBaseline::take();
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s"]);
    let mut flood = Gated::spawn(&fixture("workload"), "flood");
    let pid = flood.pid();
    flood.allocate();
    let before = daemon
        .scrape_until(Duration::from_secs(5), |m| m.process(LIVE, pid).is_some())
        .total(TRACKER);

    flood.step("flooded\n");
    let peak = daemon
        .scrape_until(Duration::from_secs(20), |m| {
            m.process(BLOCKS, pid).is_some_and(|n| n >= 1_000_000.0)
        })
        .total(TRACKER);
    flood.step("drained\n");
    let drained = daemon.scrape_until(Duration::from_secs(20), |m| {
        m.process(BLOCKS, pid).is_some_and(|n| n < 1_000.0)
    });
    let after = drained.total(TRACKER);
    eprintln!("tracker: {before} bytes before, {peak} at 1,000,000 blocks, {after} after");
    assert!(
        peak - before > 16.0 * 1e6,
        "the burst was tracked: {before} then {peak}"
    );
    // Within 10 %, give or take what the machine's other processes
    // (traced too) hold meanwhile.
    let slack = before * 0.1 + 32.0 * 1024.0;
    assert!(
        after <= before + slack,
        "{after} bytes after, {before} before ({peak} at the peak)"
    );

    flood.finish();
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn allocations_in_a_signal_handler_are_counted_exactly_by_the_daemon() {
    let baseline = BpfBaseline::take();
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s"]);
    let mut program = Command::new(fixture("sigalloc"))
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sigalloc");
    let _kill = KillOnDrop::pid_only(program.id() as i32);
    let pid = program.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(program.stdout.as_mut().expect("piped")),
        &mut line,
    )
    .expect("its count");
    let (blocks, bytes, signals) = sigalloc_count(line.as_bytes());
    assert!(
        signals >= 1_000,
        "only {signals} signals: the test proves little"
    );

    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process(BLOCKS, pid) == Some(blocks as f64)
    });
    assert_eq!(
        m.process(BLOCKS, pid),
        Some(blocks as f64),
        "{signals} signals"
    );
    assert_eq!(m.process(LIVE, pid), Some(bytes as f64));
    assert_eq!(m.process(INEXACT, pid), Some(0.0));

    drop(program.stdin.take());
    assert!(program.wait().expect("wait for sigalloc").success());
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn short_processes_started_under_the_daemon_leave_no_unmatched_free() {
    let baseline = BpfBaseline::take();
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s"]);
    let before = daemon.scrape();
    // Started after the daemon: a shell spawning with vfork, whose children
    // allocate in its memory before they exec.
    let status = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 500 ]; do /bin/true; ls / > /dev/null; i=$((i+1)); done",
        ])
        .status()
        .expect("run the shell loop");
    assert!(status.success());
    let settled = |m: &Metrics| m.events("exit") >= before.events("exit") + 1_000.0;
    let after = daemon.scrape_until(Duration::from_secs(10), settled);
    assert!(settled(&after), "the exits were applied");
    let unmatched = |m: &Metrics| m.total("heapwatch_unmatched_frees_total");
    eprintln!(
        "1,000 short processes: unmatched frees {} -> {}, frees of blocks from before tracing {} -> {}",
        unmatched(&before),
        unmatched(&after),
        before.total("heapwatch_pretrace_frees_total"),
        after.total("heapwatch_pretrace_frees_total"),
    );
    assert_eq!(after.dropped("ring_full"), 0.0);
    assert_eq!(unmatched(&after), unmatched(&before), "frees missed");
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}
