//! Least privilege: the daemon with only the capabilities its systemd unit
//! grants (under capsh), what it says without them, /metrics on loopback,
//! and process names escaped in label values.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{fs, process::Command, time::Duration};

use support::{
    BpfBaseline, KillOnDrop, Workload, config_file,
    daemon::{Daemon, http_get},
    fixture,
    process::{snapshot_json, workload_named},
    tempfile_path,
    user::TestUser,
};

/// The capabilities `deploy/heapwatch.service` grants, as its
/// `CapabilityBoundingSet=` line names them.
fn unit_capabilities() -> Vec<String> {
    let unit = include_str!("../deploy/heapwatch.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities");
    line.split_whitespace().map(str::to_lowercase).collect()
}

/// Every capability this kernel knows, by capsh's names.
fn every_capability() -> Vec<String> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("read cap_last_cap")
        .trim()
        .parse()
        .expect("a number");
    (0..=last)
        .map(|bit| {
            let output = Command::new("capsh")
                .arg(format!("--decode={:x}", 1u64 << bit))
                .output()
                .expect("run capsh");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.trim()
                .rsplit_once('=')
                .map(|(_, name)| name.to_owned())
                .unwrap_or_else(|| panic!("capsh cannot name capability {bit}: {text}"))
        })
        .collect()
}

/// `heapwatch daemon ARGS` as root without any capability but `keep`: capsh
/// drops the rest from the bounding set, so that the exec'd daemon (uid 0)
/// gets `keep` alone.
fn capsh_daemon(keep: &[String]) -> Vec<String> {
    let drop: Vec<String> = every_capability()
        .into_iter()
        .filter(|cap| !keep.contains(cap))
        .collect();
    vec![
        format!("--drop={}", drop.join(",")),
        "--".to_owned(),
        "-c".to_owned(),
        format!("exec {} \"$@\"", env!("CARGO_BIN_EXE_heapwatch")),
        "heapwatch".to_owned(),
    ]
}

/// `CapEff` of process `pid`, as capsh names its capabilities.
fn effective_capabilities(pid: u32) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read the status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim()
        .to_owned();
    let output = Command::new("capsh")
        .arg(format!("--decode={mask}"))
        .output()
        .expect("run capsh");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let names = text.trim().rsplit_once('=').map_or("", |(_, n)| n);
    let mut names: Vec<String> = names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[test]
#[ignore = "needs root"]
fn the_daemon_runs_with_only_the_units_capabilities() {
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let mut granted = unit_capabilities();
    granted.sort();
    let daemon = Daemon::start_program(
        "capsh",
        &capsh_daemon(&granted),
        &config_file(""),
        &["--tick", "1s", "--socket", socket.to_str().expect("utf-8")],
    );
    assert_eq!(effective_capabilities(daemon.pid()), granted);
    // A process of root's and one of another user's, each read through /proc.
    let user = TestUser::create();
    let workload = fixture("workload");
    let roots = Workload::start(&workload, "constant");
    let mut users = user.command(&workload);
    users.arg("constant").stdout(std::process::Stdio::piped());
    let users = KillOnDrop::new(users.spawn().expect("start the user's workload"));
    for pid in [roots.pid(), users.pid()] {
        let m = daemon.scrape_until(Duration::from_secs(10), |m| {
            m.process("heapwatch_process_live_bytes", pid) == Some(1_000_000.0)
        });
        assert_eq!(
            m.process("heapwatch_process_live_bytes", pid),
            Some(1_000_000.0)
        );
        let json = snapshot_json(&socket, pid).expect("a snapshot");
        let site = &json["sites"][0];
        assert_eq!(site["live_bytes"], 1_000_000, "{json}");
        assert_eq!(
            support::functions(site).first().map(String::as_str),
            Some("hold"),
            "{json}"
        );
    }
    drop((roots, users));
    daemon.signal(libc::SIGTERM);
    drop(daemon);
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn without_a_needed_capability_the_daemon_names_it() {
    let baseline = BpfBaseline::take();
    let config = config_file("");
    for missing in unit_capabilities() {
        let keep: Vec<String> = unit_capabilities()
            .into_iter()
            .filter(|cap| *cap != missing)
            .collect();
        let output = Command::new("capsh")
            .args(capsh_daemon(&keep))
            .args(["daemon", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .output()
            .expect("run capsh");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&missing.to_uppercase()),
            "{missing} not named: {stderr}"
        );
    }
    baseline.assert_nothing_left();
}

/// Whether a socket listens on exactly `ip:port` (IPv4, as /proc/net/tcp
/// writes it: the address's bytes in host order, hex).
fn listens_on(ip: [u8; 4], port: u16) -> bool {
    let local = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip));
    fs::read_to_string("/proc/net/tcp")
        .expect("read /proc/net/tcp")
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1] == local && fields[3] == "0A"
        })
}

#[test]
#[ignore = "needs root"]
fn metrics_listen_on_loopback_by_default() {
    let mut daemon = Daemon::start_default_listen(&config_file(""), &[]);
    assert!(listens_on([127, 0, 0, 1], 9465), "not on 127.0.0.1:9465");
    assert!(!listens_on([0, 0, 0, 0], 9465), "on every address");
    assert!(http_get("127.0.0.1:9465", "/metrics").contains("heapwatch_build_info"));
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root"]
fn process_names_are_escaped_in_label_values() {
    let mut daemon = Daemon::start(&config_file(""), &["--tick", "1s", "--top", "1000"]);
    // A command name of quotes, a backslash and a newline (15 bytes at most).
    let odd = workload_named("a\"b\\c\nd}e{");
    let constant = Workload::start(&odd, "constant");
    let m = daemon.scrape_until(Duration::from_secs(10), |m| {
        m.process("heapwatch_process_live_bytes", constant.pid())
            .is_some()
    });
    assert!(
        m.process("heapwatch_process_live_bytes", constant.pid())
            .is_some()
    );
    let text = http_get(&daemon.address, "/metrics");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("heapwatch_process_live_bytes{")
                && l.contains(&format!("pid=\"{}\"", constant.pid()))
        })
        .expect("the process's series");
    assert!(line.contains(r#"comm="a\"b\\c\nd}e{""#), "{line}");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool refused the exposition: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    drop(constant);
    assert!(daemon.stop().success());
}
