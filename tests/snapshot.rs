//! `heapwatch snapshot` and `heapwatch ps` against a real daemon: symbolized
//! stacks in every format, the API socket's authorization with a real
//! unprivileged user, and bad requests.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Workload, c_fixture_with,
    daemon::{Daemon, api_reply},
    fixture, functions, heapwatch,
    pprof::{Profile, go_pprof},
    process::Gated,
    sampled_functions, tempfile_path,
};

/// A daemon with fast leak settings and its API socket under /tmp.
fn start_daemon() -> (Daemon, PathBuf) {
    let config = support::config_file("");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path").to_owned();
    let daemon = Daemon::start(
        &config,
        &[
            "--tick",
            "1s",
            "--window",
            "6s",
            "--min-age",
            "3s",
            "--socket",
            &socket_arg,
        ],
    );
    (daemon, socket)
}

/// A snapshot of `pid` in `format`, written to a temporary file named `name`.
fn snapshot_to_file(socket: &Path, pid: u32, format: &str, name: &str) -> PathBuf {
    let path = tempfile_path(name);
    let output = snapshot(
        socket,
        pid,
        &["--format", format, "-o", path.to_str().expect("utf-8")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

fn snapshot(socket: &Path, pid: u32, extra: &[&str]) -> Output {
    heapwatch()
        .args(["snapshot", "--pid", &pid.to_string(), "--socket"])
        .arg(socket)
        .args(extra)
        .output()
        .expect("run heapwatch snapshot")
}

#[test]
#[ignore = "needs root"]
fn a_snapshot_names_the_leaking_function_in_every_format() {
    let (mut daemon, socket) = start_daemon();
    let leak = Workload::start(&fixture("workload"), "leak");
    let deadline = Instant::now() + Duration::from_secs(30);
    let json = loop {
        let output = snapshot(&socket, leak.pid(), &["--format", "json"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Right after start the leak may not have allocated yet: ask again.
        if !output.status.success() && stderr.contains("has made no allocation") {
            assert!(Instant::now() < deadline, "{stderr}");
            thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert!(output.status.success(), "{stderr}");
        let json: Value = serde_json::from_slice(&output.stdout).expect("JSON snapshot");
        support::assert_matches_schema(&json);
        if json["sites"][0]["leak_suspect"] == true || Instant::now() > deadline {
            break json;
        }
        thread::sleep(Duration::from_secs(1));
    };
    let site = &json["sites"][0];
    assert_eq!(site["leak_suspect"], true, "{json}");
    assert_eq!(site["stack"][0]["function"], "leak_step", "{site}");
    // The whole stack: the kernel walks every allocation's stack itself.
    assert_eq!(site["stack_status"], "full", "{site}");
    assert_eq!(site["stack"][1]["function"], "main", "{site}");
    assert!(
        site["oldest_age_secs"]
            .as_f64()
            .is_some_and(|age| age > 3.0),
        "{site}"
    );
    // 1,024 bytes every 100 ms: about 10 KB/s.
    let growth = site["growth_bytes_per_sec"].as_f64().expect("growth");
    assert!((5_000.0..20_000.0).contains(&growth), "{site}");
    let old = snapshot(
        &socket,
        leak.pid(),
        &["--format", "json", "--min-age", "3s"],
    );
    let all = snapshot(&socket, leak.pid(), &["--format", "json"]);
    let (old, all): (Value, Value) = (
        serde_json::from_slice(&old.stdout).expect("JSON"),
        serde_json::from_slice(&all.stdout).expect("JSON"),
    );
    assert_eq!(old["only_older_than_secs"], 3.0, "{old}");
    let leak_blocks = |json: &Value| {
        json["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| functions(s).first().is_some_and(|f| f == "leak_step"))
            .map(|s| s["live_blocks"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        leak_blocks(&old) + 20 <= leak_blocks(&all),
        "blocks of the last 3 s (about 30) are left out: {} of {}",
        leak_blocks(&old),
        leak_blocks(&all)
    );
    for site in old["sites"].as_array().into_iter().flatten() {
        assert!(site["oldest_age_secs"].as_f64() >= Some(3.0), "{site}");
    }
    let text = snapshot(&socket, leak.pid(), &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("[LEAK SUSPECT]")
            && text.contains(" B/s)")
            && text.contains(": leak_step (workload.c:"),
        "{text}"
    );
    let svg_path = snapshot_to_file(&socket, leak.pid(), "flamegraph", "leak.svg");
    assert!(
        std::fs::read_to_string(&svg_path)
            .expect("SVG")
            .contains("leak_step")
    );
    let pprof_path = snapshot_to_file(&socket, leak.pid(), "pprof", "leak.pb.gz");
    Profile::read(&pprof_path).sample_at("leak_step");
    // pprof's -base: what grew between two snapshots, by function.
    thread::sleep(Duration::from_millis(1500));
    let later_path = snapshot_to_file(&socket, leak.pid(), "pprof", "leak-later.pb.gz");
    let inuse_total = |path: &Path| -> i64 {
        let profile = Profile::read(path);
        let index = profile.value_index("inuse_space");
        profile.samples.iter().map(|s| s.values[index]).sum()
    };
    let grown = inuse_total(&later_path) - inuse_total(&pprof_path);
    assert!(grown > 0, "the leak grew between the snapshots");
    let diff = go_pprof(&[
        "-top",
        "-sample_index=inuse_space",
        "-unit=B",
        "-base",
        pprof_path.to_str().expect("utf-8"),
        later_path.to_str().expect("utf-8"),
    ]);
    let leak_step_flat = diff
        .lines()
        .find(|l| l.ends_with(" leak_step"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|flat| flat.trim_end_matches('B').parse::<i64>().ok());
    assert_eq!(
        leak_step_flat,
        Some(grown),
        "all the growth is leak_step's: {diff}"
    );
    let _ = std::fs::remove_file(later_path);
    let ps = heapwatch()
        .args(["ps", "--socket"])
        .arg(&socket)
        .output()
        .expect("run ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with(&format!("{} ", leak.pid()))
                && l.ends_with("workload")),
        "{ps}"
    );
    let _ = std::fs::remove_file(svg_path);
    let _ = std::fs::remove_file(pprof_path);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn since_shows_the_sites_that_grew_over_the_span_most_first() {
    let (mut daemon, socket) = start_daemon();
    // A large site that holds steady, and a small one that grows.
    let process = Workload::start(&fixture("workload"), "held_and_leak");
    thread::sleep(Duration::from_secs(4));
    let json = |extra: &[&str]| -> Value {
        let output = snapshot(
            &socket,
            process.pid(),
            &[&["--format", "json"], extra].concat(),
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON snapshot")
    };
    let largest = json(&["--top", "1"]);
    assert_eq!(functions(&largest["sites"][0])[0], "hold", "{largest}");
    let grown = json(&["--since", "3s"]);
    let sites = grown["sites"].as_array().expect("sites");
    assert!(!sites.is_empty(), "{grown}");
    assert_eq!(functions(&sites[0])[0], "slow_leak_step", "{grown}");
    assert!(
        sites
            .iter()
            .all(|s| functions(s)[0] != "hold" && s["grown_bytes"].as_i64() > Some(0)),
        "only sites that grew: {grown}"
    );
    let since = grown["since_secs"].as_f64().expect("the span covered");
    assert!((1.0..=4.0).contains(&since), "{grown}");
    // Live bytes are read at each tick: the growth is whole leaked blocks.
    let step = grown["sites"][0]["grown_bytes"].as_i64().expect("growth");
    let block = grown["sites"][0]["live_bytes"].as_i64().expect("live")
        / grown["sites"][0]["live_blocks"].as_i64().expect("blocks");
    assert_eq!(step % block, 0, "{grown}");
    let text = snapshot(&socket, process.pid(), &["--since", "3s"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("grew over the last")
            && text.contains(" bytes), allocated at:")
            && text.contains(": slow_leak_step ("),
        "{text}"
    );
    let too_far = snapshot(&socket, process.pid(), &["--since", "1h"]);
    let said = String::from_utf8_lossy(&too_far.stderr);
    assert!(
        !too_far.status.success()
            && said.contains("keeps the last 6 s")
            && said.contains("--since"),
        "{said}"
    );
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn base_shows_what_grew_since_a_saved_snapshot_json_or_pprof() {
    let (mut daemon, socket) = start_daemon();
    let process = Workload::start(&fixture("workload"), "held_and_leak");
    thread::sleep(Duration::from_secs(2));
    let saved = |name: &str, format: &str| snapshot_to_file(&socket, process.pid(), format, name);
    let (old_json, old_pprof) = (saved("old.json", "json"), saved("old.pb.gz", "pprof"));
    thread::sleep(Duration::from_secs(2));
    let new_pprof = saved("new.pb.gz", "pprof");
    let grown = |extra: &[&str]| -> Value {
        let output = heapwatch()
            .args(["snapshot", "--format", "json"])
            .args(extra)
            .output()
            .expect("run heapwatch snapshot");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let live = grown(&[
        "--pid",
        &process.pid().to_string(),
        "--socket",
        socket.to_str().expect("utf-8"),
        "--base",
        old_json.to_str().expect("utf-8"),
    ]);
    let saved_both = grown(&[
        "--from",
        new_pprof.to_str().expect("utf-8"),
        "--base",
        old_pprof.to_str().expect("utf-8"),
    ]);
    for report in [&live, &saved_both] {
        let sites = report["sites"].as_array().expect("sites");
        assert_eq!(sites.len(), 1, "only the site that grew: {report}");
        assert_eq!(functions(&sites[0])[0], "slow_leak_step", "{report}");
        let grown_bytes = sites[0]["grown_bytes"].as_i64().expect("growth");
        let then = report["base_in_use_bytes"]
            .as_i64()
            .expect("the base's figure");
        let now = report["in_use_bytes"].as_i64().expect("now");
        assert_eq!(grown_bytes, now - then, "all the growth: {report}");
    }
    let text = heapwatch()
        .args(["snapshot", "--from"])
        .arg(&old_json)
        .output()
        .expect("run heapwatch snapshot");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(": hold (workload.c:"),
        "a saved snapshot shown again: {text}"
    );
    let not_one = heapwatch()
        .args(["snapshot", "--from"])
        .arg(fixture("workload"))
        .output()
        .expect("run heapwatch snapshot");
    let said = String::from_utf8_lossy(&not_one.stderr);
    assert!(
        !not_one.status.success()
            && said.contains("read the saved snapshot")
            && said.contains("--format json or --format pprof"),
        "{said}"
    );
    for path in [old_json, old_pprof, new_pprof] {
        let _ = std::fs::remove_file(path);
    }
    assert!(daemon.stop().success());
}

/// The blocks and bytes a snapshot over the API shows live in `pid`.
fn live_now(socket: &Path, pid: u32) -> (Value, Value) {
    let request = format!("{{\"op\":\"snapshot\",\"pid\":{pid},\"top\":10}}\n");
    let reply: Value =
        serde_json::from_slice(&api_reply(socket, request.as_bytes())).expect("JSON reply");
    assert_eq!(reply["ok"], true, "{reply}");
    (
        reply["data"]["in_use_blocks"].clone(),
        reply["data"]["in_use_bytes"].clone(),
    )
}

#[test]
#[ignore = "needs root"]
fn a_snapshot_shows_every_call_made_before_it_was_asked() {
    let (mut daemon, socket) = start_daemon();
    // Asked the moment each process says it is done, long before the
    // reader's own poll would have drained its records.
    for _ in 0..10 {
        let mut process = Gated::spawn(&fixture("workload"), "release");
        process.read_line("ready\n");
        assert_eq!(
            live_now(&socket, process.pid()),
            (100.into(), 1_000_000.into())
        );
        process.step("released\n");
        assert_eq!(live_now(&socket, process.pid()), (10.into(), 10_000.into()));
    }
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn snapshot_errors_are_clear() {
    let missing = tempfile_path("no-daemon.sock");
    let output = snapshot(&missing, 1, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the heapwatch daemon is not running")
    );
    let (mut daemon, socket) = start_daemon();
    for (pid, message) in [
        (2, "kernel thread"),
        (4_000_000, "no such process: 4000000"),
    ] {
        let output = snapshot(&socket, pid, &[]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{pid}: {stderr}");
    }
    for bad in ["0", "-5", "x", "99999999999"] {
        let output = heapwatch()
            .args(["snapshot", "--pid", bad, "--socket"])
            .arg(&socket)
            .output()
            .expect("run heapwatch");
        assert_eq!(output.status.code(), Some(2), "--pid {bad}");
    }
    daemon.assert_running();
    assert!(daemon.stop().success());
}

/// Sends raw bytes to the API socket and returns the reply.
fn raw_request(socket: &Path, bytes: &[u8], close_write: bool) -> Value {
    let mut stream = UnixStream::connect(socket).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"))
}

#[test]
#[ignore = "needs root"]
fn malformed_oversized_slow_and_half_closed_requests_get_error_replies() {
    let (mut daemon, socket) = start_daemon();
    let malformed = raw_request(&socket, b"{\"op\":\"reboot\"}\n", false);
    assert_eq!(malformed["ok"], false);
    assert!(
        malformed["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed"))
    );
    let oversized = raw_request(&socket, &vec![b'x'; 100_000], false);
    assert!(
        oversized["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{oversized}"
    );
    let half_closed = raw_request(&socket, b"{\"op\":\"health\"}", true);
    assert_eq!(half_closed["ok"], true, "{half_closed}");
    let started = Instant::now();
    let slow = raw_request(&socket, b"{\"op\":", false);
    assert!(
        slow["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{slow}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    daemon.assert_running();
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn a_user_may_snapshot_only_their_own_processes() {
    let user = support::user::TestUser::create();
    let (mut daemon, socket) = start_daemon();
    let workload = fixture("workload");
    let mut own = user.command(&workload);
    own.arg("constant").stdout(std::process::Stdio::piped());
    let own = support::KillOnDrop::new(own.spawn().expect("start the user's workload"));
    let roots = Workload::start(&workload, "constant");
    thread::sleep(Duration::from_secs(3));
    let as_user = |pid: u32| {
        user.command(Path::new(env!("CARGO_BIN_EXE_heapwatch")))
            .args(["snapshot", "--pid", &pid.to_string(), "--socket"])
            .arg(&socket)
            .output()
            .expect("run heapwatch as the test user")
    };
    let allowed = as_user(own.pid());
    assert!(
        allowed.status.success(),
        "own process: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("1,000,000 bytes in 100 blocks"));
    let refused = as_user(roots.pid());
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("permission denied") && stderr.contains("another user"),
        "{stderr}"
    );
    drop((own, roots));
    assert!(daemon.stop().success());
}

/// The service fixtures and the call chain of their leak, immediate caller first.
const SERVICES: [(&str, [&str; 4]); 2] = [
    (
        "service_cpp",
        [
            "make_buffer(unsigned long)",
            "open_session(unsigned int)",
            "handle_request(unsigned int)",
            "main",
        ],
    ),
    (
        "service_rust",
        [
            "service_rust::make_record",
            "service_rust::register",
            "service_rust::serve",
            "service_rust::main",
        ],
    ),
];

/// `heapwatch snapshot --duration 1s`: heapwatch traces the process itself.
fn traced_snapshot(pid: u32, extra: &[&str]) -> Output {
    let output = snapshot(
        &tempfile_path("no-daemon.sock"),
        pid,
        &[&["--duration", "1s"], extra].concat(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
#[ignore = "needs root"]
fn cpp_and_rust_leaks_are_named_with_their_callers_in_every_format_without_a_daemon() {
    let baseline = support::BpfBaseline::take();
    for (name, chain) in SERVICES {
        let binary = fixture(name);
        let build_id = support::readelf_build_id(&binary);
        let service = Workload::start(&binary, "serve");

        let json = traced_snapshot(service.pid(), &["--format", "json"]);
        let json: Value = serde_json::from_slice(&json.stdout).expect("JSON snapshot");
        support::assert_matches_schema(&json);
        assert!(
            json["traced_secs"].as_f64().is_some_and(|s| s >= 1.0),
            "{json}"
        );
        let site = &json["sites"][0];
        assert_eq!(functions(site)[..4], chain, "{name}: {site}");
        assert_eq!(site["stack_status"], "full", "{site}");
        assert_eq!(site["stack"][0]["build_id"], build_id.as_str(), "{site}");
        let blocks = site["live_blocks"].as_u64().expect("blocks");
        assert!(blocks >= 20, "a request every 10 ms for 1 s: {site}");
        assert_eq!(site["live_bytes"].as_u64(), Some(512 * blocks), "{site}");

        let text = traced_snapshot(service.pid(), &[]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("allocations made before tracing began are unseen"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        // The leaf, after the calls inlined into it (the allocator's own,
        // in Rust), each a frame of its own at the same address.
        let leaf = lines
            .iter()
            .position(|l| l.contains(": ") && l.contains(&format!(": {} (", chain[0])))
            .unwrap_or_else(|| panic!("{name}: no site at {}\n{text}", chain[0]));
        let site_start = lines[..leaf]
            .iter()
            .rposition(|l| l.contains("allocated at:"))
            .expect("the site's heading");
        assert!(lines[site_start + 1].contains("    at 0x"), "{text}");
        for (line, function) in lines[leaf + 1..].iter().zip(&chain[1..]) {
            assert!(
                line.contains("    by 0x") && line.contains(function),
                "{line}"
            );
        }

        let pprof_path = tempfile_path("service.pb.gz");
        traced_snapshot(
            service.pid(),
            &[
                "--format",
                "pprof",
                "-o",
                pprof_path.to_str().expect("utf-8"),
            ],
        );
        let profile = support::pprof::Profile::read(&pprof_path);
        let inuse = profile.value_index("inuse_space");
        let sample = profile
            .samples
            .iter()
            .max_by_key(|sample| sample.values[inuse])
            .expect("a sample");
        let functions = profile.functions(sample);
        let leaf = functions
            .iter()
            .position(|f| f == chain[0])
            .unwrap_or_else(|| panic!("{name}: {functions:?}"));
        assert_eq!(
            functions[leaf..leaf + 4],
            chain,
            "after the calls inlined into it"
        );
        let mapping = profile.leaf_mapping(sample).expect("a mapping");
        assert_eq!(
            (Path::new(&mapping.file), mapping.build_id.as_str()),
            (binary.as_path(), build_id.as_str())
        );

        let svg_path = tempfile_path("service.svg");
        traced_snapshot(
            service.pid(),
            &[
                "--format",
                "flamegraph",
                "-o",
                svg_path.to_str().expect("utf-8"),
            ],
        );
        let svg = std::fs::read_to_string(&svg_path).expect("SVG");
        for function in chain {
            assert!(svg.contains(function), "{name}: {function} not in the SVG");
        }
        let _ = std::fs::remove_file(pprof_path);
        let _ = std::fs::remove_file(svg_path);
    }
    baseline.assert_nothing_left();
}

/// heapwatch refuses these before it checks its privileges: no root needed.
#[test]
fn without_a_daemon_a_snapshot_needs_a_live_process_and_a_positive_duration() {
    for (pid, duration, code, message) in [
        ("4000000", "1s", 1, "no such process: 4000000"),
        ("2", "1s", 1, "kernel thread"),
        ("1", "0s", 2, "must be longer than 0"),
        ("1", "soon", 2, "soon"),
    ] {
        let output = heapwatch()
            .args(["snapshot", "--pid", pid, "--duration", duration])
            .output()
            .expect("run heapwatch");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{pid} {duration}: {stderr}"
        );
        assert!(stderr.contains(message), "{pid} {duration}: {stderr}");
    }
}

#[test]
#[ignore = "needs root"]
fn a_million_live_allocations_over_a_thousand_sites_are_snapshotted() {
    let (mut daemon, socket) = start_daemon();
    let rss_before = support::process::status_kib(daemon.pid(), "VmRSS");
    let holder = Workload::start(&fixture("many_sites"), "hold");
    let request = format!(
        "{{\"op\":\"snapshot\",\"pid\":{},\"top\":2000}}\n",
        holder.pid()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let (json, latency) = loop {
        // Timed without parsing: this test's own allocations are traced too.
        let started = Instant::now();
        let reply = api_reply(&socket, request.as_bytes());
        let latency = started.elapsed();
        let reply: Value = serde_json::from_slice(&reply).expect("JSON reply");
        if reply["data"]["in_use_blocks"] == 1_000_000 {
            support::assert_matches_schema(&reply["data"]);
            break (reply["data"].clone(), latency);
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not see 1,000,000 blocks: {}",
            reply["data"]["in_use_blocks"]
        );
        thread::sleep(Duration::from_secs(1));
    };
    let sites = json["sites"].as_array().expect("sites");
    let blocks: u64 = sites.iter().filter_map(|s| s["live_blocks"].as_u64()).sum();
    assert_eq!(blocks, 1_000_000, "every block in a site");
    let full: Vec<&Value> = sites
        .iter()
        .filter(|s| s["stack_status"] == "full")
        .collect();
    // A path whose stack met a full bucket of the kernel's map keeps only its
    // immediate caller (a "not_captured" site); once the bucket is freed, its
    // later blocks get their full stack. Counted and labelled, never merged
    // into another path.
    for site in sites.iter().filter(|s| s["stack_status"] != "full") {
        assert_eq!(site["stack_status"], "not_captured", "{site}");
        assert_eq!(functions(site), ["alloc_block"], "{site}");
    }
    let mut paths = std::collections::HashSet::new();
    for site in &full {
        let blocks = site["live_blocks"].as_u64().expect("blocks");
        assert!(blocks <= 1000, "{site}");
        assert_eq!(site["live_bytes"].as_u64(), Some(32 * blocks), "{site}");
        let names = functions(site);
        assert_eq!(names[0], "alloc_block", "{site}");
        assert!(
            names[1].starts_with("leaf")
                && names[2].starts_with("mid")
                && names[3].starts_with("top"),
            "{site}"
        );
        paths.insert(names[1..4].to_vec());
    }
    assert_eq!(paths.len(), full.len(), "each full stack is its own path");
    let started = Instant::now();
    let top = snapshot(&socket, holder.pid(), &[]);
    let cli_latency = started.elapsed();
    assert!(top.status.success());
    let rss_after = support::process::status_kib(daemon.pid(), "VmRSS");
    eprintln!(
        "1,000,000 live blocks over {} sites ({} with full stacks): API snapshot of every site {latency:?}; `heapwatch snapshot` (top 10, itself traced) {cli_latency:?}; daemon RSS {rss_before} KiB before, {rss_after} KiB after",
        sites.len(),
        full.len()
    );
    drop(holder);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn a_sampled_call_site_shows_the_stack_sampled_most_often_there() {
    let config = support::config_file("stack_sample = 1000000\n");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path").to_owned();
    let mut daemon = Daemon::start(&config, &["--socket", &socket_arg]);
    // 1,000 paths to one call site (alloc_block's malloc), 10 blocks each.
    let holder = Workload::start_with(&fixture("many_sites"), &["hold", "10"]);
    let request = format!(
        "{{\"op\":\"snapshot\",\"pid\":{},\"top\":10}}\n",
        holder.pid()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let json = loop {
        let reply: Value =
            serde_json::from_slice(&api_reply(&socket, request.as_bytes())).expect("JSON reply");
        if reply["data"]["in_use_blocks"] == 10_000 {
            break reply["data"].clone();
        }
        assert!(Instant::now() < deadline, "{reply}");
        thread::sleep(Duration::from_millis(500));
    };
    support::assert_matches_schema(&json);
    let site = json["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|s| s["stack_status"] == "unsampled" && functions(s) == ["alloc_block"])
        .cloned()
        .unwrap_or_else(|| panic!("no unsampled alloc_block site: {json}"));
    assert!(site["live_blocks"].as_u64() >= Some(9_990), "{site}");
    let sampled = sampled_functions(&site);
    assert!(
        sampled.len() >= 5
            && sampled[0] == "alloc_block"
            && sampled[1].starts_with("leaf")
            && sampled[2].starts_with("mid")
            && sampled[3].starts_with("top")
            && sampled[4] == "main",
        "{site}"
    );
    let text = snapshot(&socket, holder.pid(), &[]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("(the callers sampled most often here:)"),
        "{stdout}"
    );
    drop(holder);
    assert!(daemon.stop().success());
}

#[test]
fn the_documented_schema_accepts_a_snapshot_and_refuses_what_heapwatch_never_writes() {
    let valid = serde_json::json!({
        "pid": 42, "exited": false, "in_use_bytes": 1024, "in_use_blocks": 1,
        "allocs": 2, "frees": 1, "bytes_allocated": 2048, "unmatched_frees": 0,
        "thread_cache_frees": 0, "inexact": false, "traced_secs": 1.0,
        "sites": [{
            "live_bytes": 1024, "live_blocks": 1, "allocs": 2, "bytes_allocated": 2048,
            "stack": [{"address": 4096, "module": "/bin/x", "build_id": "ab12",
                       "file_offset": 16, "function": "f", "file": null, "line": null}],
            "stack_status": "full", "oldest_age_secs": 3.5, "leak_suspect": false
        }]
    });
    support::assert_matches_schema(&valid);
    for (pointer, bad) in [
        ("/sites/0/stack_status", serde_json::json!("partial")),
        ("/sites/0/live_bytes", serde_json::json!(-1)),
        ("/sites/0/stack/0/build_id", serde_json::json!("not hex")),
        ("/pid", serde_json::json!("42")),
    ] {
        let mut json = valid.clone();
        *json.pointer_mut(pointer).expect("a field") = bad;
        let refused = std::panic::catch_unwind(|| support::assert_matches_schema(&json));
        assert!(refused.is_err(), "{pointer} accepted: {json}");
    }
}

#[test]
#[ignore = "needs root"]
fn without_a_daemon_a_process_is_traced_through_its_own_allocator() {
    let jemalloc = c_fixture_with(
        "workload",
        "workload_jemalloc",
        "gcc",
        &["-pthread", "-ljemalloc"],
    );
    let static_musl = c_fixture_with(
        "workload",
        "workload_musl_static",
        "musl-gcc",
        &["-pthread", "-static"],
    );
    for binary in [jemalloc, static_musl] {
        let leak = Workload::start(&binary, "leak");
        let json = traced_snapshot(leak.pid(), &["--format", "json"]);
        let json: Value = serde_json::from_slice(&json.stdout).expect("JSON snapshot");
        let site = &json["sites"][0];
        assert_eq!(
            functions(site)[..2],
            ["leak_step", "main"],
            "{binary:?}: {site}"
        );
        let blocks = site["live_blocks"].as_u64().expect("blocks");
        assert!(
            blocks >= 5,
            "a leak every 100 ms for 1 s: {binary:?}: {site}"
        );
        assert_eq!(
            site["live_bytes"].as_u64(),
            Some(1024 * blocks),
            "{binary:?}: {site}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_replaced_or_deleted_binary_is_symbolized_with_the_code_it_runs() {
    let baseline = support::BpfBaseline::take();
    let workload = fixture("workload");
    let other_build = fixture("churn");
    let replaced = tempfile_path("replaced");
    let deleted = tempfile_path("deleted");
    std::fs::copy(&workload, &replaced).expect("copy the workload");
    std::fs::copy(&workload, &deleted).expect("copy the workload");
    let running_replaced = Workload::start(&replaced, "leak");
    let running_deleted = Workload::start(&deleted, "leak");
    // The ordinary deploy: a new build renamed into place.
    let staged = tempfile_path("staged");
    std::fs::copy(&other_build, &staged).expect("copy the new build");
    std::fs::rename(&staged, &replaced).expect("rename the new build into place");
    std::fs::remove_file(&deleted).expect("delete the binary");
    for (what, process) in [
        ("replaced", &running_replaced),
        ("deleted", &running_deleted),
    ] {
        let json = traced_snapshot(process.pid(), &["--format", "json"]);
        let json: Value = serde_json::from_slice(&json.stdout).expect("JSON snapshot");
        let site = &json["sites"][0];
        assert_eq!(
            functions(site)[..2],
            ["leak_step", "main"],
            "{what}: {site}"
        );
    }
    drop((running_replaced, running_deleted));
    let _ = std::fs::remove_file(&replaced);
    baseline.assert_nothing_left();
}
