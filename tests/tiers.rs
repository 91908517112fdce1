//! `heapwatch daemon --scope tiered`: every process watched from the
//! kernel, and traced exactly only while its memory grows.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{
    BpfBaseline, KillOnDrop, Workload, config_file,
    daemon::{Daemon, Metrics},
    fixture, functions,
    process::snapshot_json,
    tempfile_path,
};

/// Short windows for tests: growth judged over 6 ticks of 1 s, an
/// escalation judged again after 3 s.
const FAST: [&str; 8] = [
    "--tick",
    "1s",
    "--window",
    "6s",
    "--min-age",
    "3s",
    "--trace-for",
    "3s",
];

/// A daemon with `--scope tiered` and short windows, answering at `socket`.
fn tiered_daemon(socket: &str) -> Daemon {
    Daemon::start(
        &config_file(""),
        &[
            &FAST[..],
            &["--scope", "tiered", "--socket", socket, "--top", "100"],
        ]
        .concat(),
    )
}

fn escalated(m: &Metrics, pid: u32) -> f64 {
    m.process("heapwatch_process_escalated", pid).unwrap_or(0.0)
}

#[test]
#[ignore = "needs root"]
fn a_growing_process_is_traced_while_it_grows_and_steady_ones_never() {
    let workload = fixture("workload");
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = tiered_daemon(socket_arg);
    let grower = Workload::start(&workload, "grow");
    let plateau = Workload::start(&workload, "plateau");
    let constant = Workload::start(&workload, "constant");
    let churner = KillOnDrop::new(
        Command::new(fixture("churn"))
            .args(["1", "60"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the churner"),
    );
    let steady = [
        ("plateau", plateau.pid()),
        ("constant", constant.pid()),
        ("churner", churner.pid()),
    ];

    // Escalated once a window shows it growing; never the steady ones.
    let started = Instant::now();
    let mut escalated_after = None;
    while started.elapsed() < Duration::from_secs(20) {
        let m = daemon.scrape();
        for (name, pid) in steady {
            assert_eq!(escalated(&m, pid), 0.0, "{name} escalated");
        }
        if escalated(&m, grower.pid()) == 1.0 {
            escalated_after = Some(started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let escalated_after = escalated_after.expect("the growing process is escalated");
    eprintln!("escalated after {escalated_after:?}");
    let m = daemon.scrape();
    for (name, pid) in steady {
        assert!(
            m.process("heapwatch_process_anon_bytes", pid)
                .is_some_and(|bytes| bytes > 0.0),
            "{name}'s memory is watched"
        );
    }
    // Counted by coverage once the escalation's attach is done (a tick).
    let processes = |m: &Metrics, state: &str| m.labelled("heapwatch_processes", "state", state);
    let m = daemon.scrape_until(Duration::from_secs(5), |m| processes(m, "traced") == 1.0);
    assert_eq!(processes(&m, "traced"), 1.0, "the grower alone is traced");
    // The steady three and the machine's others; not the grower.
    let watched = processes(&m, "watched");
    assert!(watched >= steady.len() as f64, "{watched}");

    // Traced exactly from then on: its growing site named, its report
    // saying what came before is unseen.
    thread::sleep(Duration::from_millis(1500));
    let json = snapshot_json(&socket, grower.pid()).expect("a snapshot of the grower");
    assert_eq!(json["attached_late"], true, "{json}");
    let site = &json["sites"][0];
    assert_eq!(functions(site)[..2], ["grow_step", "main"], "{site}");
    let blocks = site["live_blocks"].as_u64().expect("blocks");
    assert!(blocks >= 5, "{site}");
    assert_eq!(site["live_bytes"].as_u64(), Some(65_536 * blocks), "{site}");
    for (name, pid) in steady {
        let refused = snapshot_json(&socket, pid).expect_err(name);
        assert!(refused.contains("made no allocation"), "{name}: {refused}");
    }

    // It stops growing at 12 s: let go once a window's last third is flat
    // and its escalation ends, and forgotten.
    let released = daemon.scrape_until(Duration::from_secs(25), |m| {
        escalated(m, grower.pid()) == 0.0
    });
    assert_eq!(escalated(&released, grower.pid()), 0.0, "let go");
    let gone = snapshot_json(&socket, grower.pid()).expect_err("no longer traced");
    assert!(gone.contains("made no allocation"), "{gone}");
    for (name, pid) in steady {
        assert_eq!(escalated(&released, pid), 0.0, "{name} escalated");
    }

    drop((grower, plateau, constant, churner));
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn a_process_tracing_would_slow_too_much_is_let_go_and_said_so() {
    let workload = fixture("workload");
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = tiered_daemon(socket_arg);
    // It grows, and a thread of it allocates flat out: traced, it would
    // run many times slower.
    let busy = Workload::start(&workload, "grow_busy");
    let m = daemon.scrape_until(Duration::from_secs(25), |m| {
        m.labelled("heapwatch_processes", "reason", "over_budget") >= 1.0
    });
    assert!(
        m.labelled("heapwatch_processes", "reason", "over_budget") >= 1.0,
        "let go for its cost:\n{}",
        daemon.log()
    );
    assert_eq!(escalated(&m, busy.pid()), 0.0);
    assert!(daemon.log().contains("overhead budget"), "{}", daemon.log());
    let ps = support::heapwatch()
        .args(["ps", "--all", "--socket", socket_arg])
        .output()
        .expect("run ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    let line = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(busy.pid().to_string().as_str()))
        .unwrap_or_else(|| panic!("not listed:\n{ps}"));
    assert!(line.contains("over_budget"), "{line}");
    // Still growing, it is not escalated again.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(escalated(&daemon.scrape(), busy.pid()), 0.0);

    drop(busy);
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn memory_the_allocator_keeps_is_retention_and_a_leak_is_not() {
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let mut daemon = tiered_daemon(socket.to_str().expect("utf-8 path"));
    let retainer = Workload::start(&fixture("retain"), "retain");
    let leaker = Workload::start(&fixture("workload"), "slow_leak");
    let figure = |m: &Metrics, name: &str, pid: u32| m.process(name, pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut both_judged = false;
    while !both_judged && started.elapsed() < Duration::from_secs(45) {
        thread::sleep(Duration::from_millis(500));
        let m = daemon.scrape();
        let retention = |pid| figure(&m, "heapwatch_process_retention_suspect_bytes", pid);
        let leak = |pid| figure(&m, "heapwatch_process_leak_suspect_bytes", pid);
        assert_eq!(leak(retainer.pid()), 0.0, "the retainer called a leak");
        assert_eq!(retention(leaker.pid()), 0.0, "the leak called retention");
        both_judged = retention(retainer.pid()) > 0.0 && leak(leaker.pid()) > 0.0;
    }
    assert!(both_judged, "not both judged:\n{}", daemon.log());
    let m = daemon.scrape();
    let retained = figure(&m, "heapwatch_process_retained_bytes", retainer.pid());
    let live = figure(&m, "heapwatch_process_live_bytes", retainer.pid());
    assert!(
        retained > 1_000_000.0 && live < 100_000.0,
        "kept by the allocator: {retained} retained, {live} live"
    );

    drop((retainer, leaker));
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

/// A memory cgroup of the test's own with a limit on its memory, removed
/// when dropped (once the processes in it are gone).
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Version 1's memory hierarchy where it is mounted, else version 2's root.
    fn create(limit_bytes: u64) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, "memory.limit_in_bytes")
        } else {
            (Path::new("/sys/fs/cgroup"), "memory.max")
        };
        let dir = root.join(format!("heapwatch-test-oom-{}", std::process::id()));
        fs::create_dir(&dir).expect("create a memory cgroup");
        let cgroup = Self { dir };
        fs::write(cgroup.dir.join(limit_file), limit_bytes.to_string()).expect("limit its memory");
        // No swap to escape to, where the kernel has it.
        let _ = fs::write(cgroup.dir.join("memory.swap.max"), "0");
        cgroup
    }

    fn enter(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move the process in");
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
#[ignore = "needs root"]
fn an_oom_victim_leaves_its_report_naming_its_allocation_site() {
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let state = tempfile_path("state");
    let (socket_arg, state_arg) = (
        socket.to_str().expect("utf-8 path"),
        state.to_str().expect("utf-8 path"),
    );
    let mut daemon = Daemon::start(
        &config_file(""),
        &[
            &FAST[..],
            &["--scope", "tiered", "--scope", "comm:workload"],
            &["--socket", socket_arg, "--state-dir", state_arg],
        ]
        .concat(),
    );
    let cgroup = MemoryCgroup::create(64 << 20);
    let hog = Workload::start(&fixture("workload"), "hog");
    let traced = format!("scope: tracing pid={}", hog.pid());
    daemon.wait_for_log(&traced, Duration::from_secs(10));
    cgroup.enter(hog.pid());

    let oom = state.join("oom");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let written = fs::read_dir(&oom).into_iter().flatten().flatten().next();
        if let Some(entry) = written {
            break entry.path();
        }
        assert!(
            Instant::now() < deadline,
            "no post-mortem in {}:\n{}",
            oom.display(),
            daemon.plain_log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    thread::sleep(Duration::from_millis(200));
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).expect("read the report"))
            .expect("the report is JSON");
    assert_eq!(json["pid"], hog.pid(), "{json}");
    assert_eq!(json["comm"], "workload", "{json}");
    assert!(json["anon_bytes"].as_u64() > Some(32 << 20), "{json}");
    let site = &json["heap"]["sites"][0];
    assert_eq!(functions(site)[..2], ["hog_step", "main"], "{site}");
    assert!(site["live_bytes"].as_u64() > Some(16 << 20), "{site}");
    assert!(
        daemon
            .plain_log()
            .contains("the OOM killer chose this process"),
        "{}",
        daemon.plain_log()
    );
    // Counted at the next tick's refresh of the metrics.
    let m = daemon.scrape_until(Duration::from_secs(5), |m| m.events("oom_victim") > 0.0);
    assert_eq!(m.events("oom_victim"), 1.0);

    drop(hog);
    drop(cgroup);
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn a_snapshot_with_a_duration_has_the_daemon_trace_the_process_for_it() {
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = tiered_daemon(socket_arg);
    // It grows too slowly to be escalated within the snapshot's 2 s.
    let leak = Workload::start(&fixture("workload"), "slow_leak");
    let pid = leak.pid().to_string();
    let output = support::heapwatch()
        .args([
            "snapshot",
            "--pid",
            &pid,
            "--duration",
            "2s",
            "--format",
            "json",
        ])
        .args(["--socket", socket_arg])
        .output()
        .expect("run snapshot");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        daemon
            .plain_log()
            .contains(&format!("tiers: traced on request pid={pid}")),
        "traced by the daemon:\n{}",
        daemon.plain_log()
    );
    assert_eq!(json["attached_late"], true, "{json}");
    assert!(json["traced_secs"].as_f64() >= Some(2.0), "{json}");
    let site = &json["sites"][0];
    assert_eq!(functions(site)[..2], ["slow_leak_step", "main"], "{site}");
    let blocks = site["live_blocks"].as_u64().expect("blocks");
    assert!((10..=30).contains(&blocks), "about 20 in 2 s: {site}");

    drop(leak);
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}
