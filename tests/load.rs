//! The daemon under load: /metrics scraped 50 times a second and snapshots
//! asked for in a loop while two threads churn flat out.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    config_file,
    daemon::{Daemon, api_reply, http_get},
    fixture,
    process::{churn_pairs, is_running, status_kib},
    tempfile_path,
};

/// How long the churn runs.
const CHURN_SECS: u64 = 20;
/// One scrape every this long: 50 a second.
const SCRAPE_EVERY: Duration = Duration::from_millis(20);

/// Scrapes `address` every [`SCRAPE_EVERY`] until `done`; returns each
/// scrape's latency (a scrape running late starts the next at once, never two).
fn scrape_at_50_per_second(address: &str, done: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut next = Instant::now();
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let body = http_get(address, "/metrics");
        latencies.push(started.elapsed());
        assert!(body.contains("heapwatch_events_total"), "{body}");
        next += SCRAPE_EVERY;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
    latencies
}

/// Asks the API for snapshots of `pid` one after another until `done`;
/// returns how many were answered with a report. Until the daemon has seen
/// the process allocate, the reply is an error; after, only once it is gone.
fn snapshot_in_a_loop(socket: &std::path::Path, pid: u32, done: &AtomicBool) -> u64 {
    let request = format!("{{\"op\":\"snapshot\",\"pid\":{pid},\"top\":10}}\n");
    let mut answered = 0;
    while !done.load(Ordering::Relaxed) {
        let reply: Value =
            serde_json::from_slice(&api_reply(socket, request.as_bytes())).expect("JSON reply");
        if reply["ok"] == true {
            answered += 1;
        } else if answered > 0 {
            // The churn has ended: it is gone, or a zombie the daemon has let go.
            assert!(!is_running(pid), "{reply}");
            break;
        } else {
            thread::sleep(Duration::from_millis(10));
        }
    }
    answered
}

/// How far the daemon's RSS rose from the early samples to the last ones,
/// each side by its median: a transient peak (a table being resized, a
/// snapshot being written) is not growth, a rising level is. The first
/// three samples are left out: they fill the daemon's tables.
fn rss_growth_kib(samples_kib: &[u64]) -> i64 {
    let median = |window: &[u64]| {
        let mut sorted = window.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2] as i64
    };
    let settled = &samples_kib[3..];
    let early = &settled[..5];
    let late = &settled[settled.len() - 5..];
    median(late) - median(early)
}

/// The `q`-quantile of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
#[ignore = "needs root"]
fn scrapes_at_50_per_second_and_snapshots_in_a_loop_while_two_threads_churn() {
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--socket", socket_arg]);
    let before = daemon.scrape();
    let churn = Command::new(fixture("churn"))
        .args(["2", &CHURN_SECS.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the churn");
    let churn_pid = churn.id();
    let _guard = support::KillOnDrop::pid_only(churn_pid as i32);
    let done = AtomicBool::new(false);
    let (latencies, snapshots, rss, output) = thread::scope(|s| {
        let scraper = s.spawn(|| scrape_at_50_per_second(&daemon.address, &done));
        let snapshotter = s.spawn(|| snapshot_in_a_loop(&socket, churn_pid, &done));
        let mut rss = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(CHURN_SECS - 1) {
            thread::sleep(Duration::from_secs(1));
            rss.push(status_kib(daemon.pid(), "VmRSS"));
        }
        let output = churn.wait_with_output().expect("wait for the churn");
        done.store(true, Ordering::Relaxed);
        let latencies = scraper.join().expect("the scraper");
        let snapshots = snapshotter.join().expect("the snapshot loop");
        (latencies, snapshots, rss, output)
    });
    let pairs = churn_pairs(&output.stdout);
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.events("free") - before.events("free") >= pairs
    });
    let counted =
        m.events("alloc") + m.events("free") - before.events("alloc") - before.events("free");
    let lost = m.dropped("ring_full");
    let mut sorted = latencies.clone();
    sorted.sort();
    let growth_kib = rss_growth_kib(&rss);
    eprintln!(
        "load: {} scrapes in {CHURN_SECS} s (p50 {:?}, p99 {:?}, max {:?}), {snapshots} snapshots; churn {pairs} pairs, {} events generated, {counted} counted (the machine's), {lost} lost; daemon RSS {:?} KiB, {growth_kib} KiB of growth (median of the last 5 s against 3–8 s)",
        latencies.len(),
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.99),
        sorted.last().unwrap(),
        2.0 * pairs,
        rss,
    );
    assert_eq!(lost, 0.0, "the daemon fell behind");
    assert!(
        counted >= 2.0 * pairs,
        "{counted} of {} counted",
        2.0 * pairs
    );
    assert!(
        latencies.len() as u64 >= 45 * (CHURN_SECS - 1),
        "only {} scrapes",
        latencies.len()
    );
    assert!(snapshots >= CHURN_SECS, "only {snapshots} snapshots");
    assert!(quantile(&sorted, 0.99) < Duration::from_millis(250));
    assert!(*sorted.last().unwrap() < Duration::from_secs(2));
    assert!(
        growth_kib < 16 * 1024,
        "RSS grew by {growth_kib} KiB: {rss:?}"
    );
    assert!(daemon.stop().success());
}

/// Raises this test process's soft limit of open files to `at_least`.
fn raise_own_open_files(at_least: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit touch only the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(at_least.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// CPU seconds, user and system, process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Connections made and held, each given `within` (a listener that accepts
/// nothing leaves a connection pending past its backlog).
fn idle_tcp_connections(address: &str, count: usize, within: Duration) -> Vec<std::net::TcpStream> {
    let address = address.parse().expect("an address");
    (0..count)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&address, within).ok())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn idle_connections_take_neither_the_descriptors_nor_the_answers() {
    const IDLE: usize = 1_100;
    raise_own_open_files(4 * IDLE as u64);
    let config = config_file("");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path").to_owned();
    // The usual limit, which the daemon cannot raise: fewer descriptors
    // than connections.
    let mut daemon = Daemon::start_program(
        "prlimit",
        &[
            "--nofile=1024:1024".to_owned(),
            env!("CARGO_BIN_EXE_heapwatch").to_owned(),
        ],
        &config,
        &["--socket", &socket_arg],
    );

    // Unix connections block past a backlog nobody accepts: made on a
    // thread, counted as they come.
    let (sender, made) = std::sync::mpsc::channel();
    let api_path = socket.clone();
    let holder = thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..IDLE {
            let Ok(stream) = std::os::unix::net::UnixStream::connect(&api_path) else {
                break;
            };
            held.push(stream);
            let _ = sender.send(held.len());
        }
        // Held until the daemon is gone (a read then ends).
        for stream in &mut held {
            let _ = std::io::Read::read(stream, &mut [0; 1]);
        }
    });
    let idle_http = idle_tcp_connections(&daemon.address, IDLE, Duration::from_secs(3));
    let mut api_made = 0;
    while let Ok(n) = made.recv_timeout(Duration::from_secs(5)) {
        api_made = n;
        if n == IDLE {
            break;
        }
    }
    assert_eq!(idle_http.len(), IDLE, "every /metrics connection made");
    assert_eq!(api_made, IDLE, "every API connection made");

    // Answered at once, idle ones notwithstanding, and the daemon idle.
    let cpu_before = cpu_secs(daemon.pid());
    let started = Instant::now();
    let body = http_get(&daemon.address, "/metrics");
    let scraped_in = started.elapsed();
    assert!(body.contains("heapwatch_events_total"), "{body}");
    let started = Instant::now();
    let reply = api_reply(&socket, b"{\"op\":\"health\"}\n");
    let asked_in = started.elapsed();
    assert!(
        String::from_utf8_lossy(&reply).contains("\"ok\":true"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    eprintln!(
        "with {IDLE} idle connections each: /metrics in {scraped_in:?}, the API in {asked_in:?}"
    );
    // Without room made, both wait for idle ones to time out (5 s).
    assert!(scraped_in < Duration::from_secs(1), "{scraped_in:?}");
    assert!(asked_in < Duration::from_secs(1), "{asked_in:?}");
    thread::sleep(Duration::from_secs(2));
    let cpu = cpu_secs(daemon.pid()) - cpu_before;
    assert!(
        cpu < 0.3,
        "the daemon used {cpu} s of CPU in 2 s: its accept loops spin"
    );

    drop(idle_http);
    daemon.stop_cleanly();
    holder.join().expect("the holder ends with the daemon");
}
