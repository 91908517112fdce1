//! deploy/: the systemd unit, the Prometheus rules and the Grafana dashboard,
//! checked by the tools that consume them, and against a real Prometheus
//! server scraping a real daemon in a leak scenario; `cargo xtask install`.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Workload,
    daemon::{Daemon, free_port, http_get},
    fixture, tempfile_path,
};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile_path("unit");
    std::fs::create_dir_all(&dir).expect("create a unit directory");
    let unit = std::fs::read_to_string(deploy("heapwatch.service")).expect("read the unit");
    assert!(
        unit.contains("Type=notify")
            && unit.contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN")
    );
    let unit = unit.replace("/usr/local/bin/heapwatch", env!("CARGO_BIN_EXE_heapwatch"));
    let path = dir.join("heapwatch.service");
    std::fs::write(&path, unit).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (cargo xtask setup installs it)");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("heapwatch.service"),
        "warnings about the unit: {said}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus-rules.yml"))
        .output()
        .expect("run promtool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn xtask_install_puts_every_file_in_place() {
    let root = tempfile_path("root");
    let status = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "install",
            "--no-build",
            "--root",
        ])
        .arg(&root)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("run cargo xtask install");
    assert!(status.success());
    for file in [
        "usr/local/bin/heapwatch",
        "etc/systemd/system/heapwatch.service",
        "etc/heapwatch/config.toml",
        "usr/local/share/doc/heapwatch/README.md",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    let _ = std::fs::remove_dir_all(root);
}

/// The dashboard's and the rules' PromQL expressions.
fn expressions() -> (Vec<String>, Vec<String>) {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana-dashboard.json")).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let dashboard_exprs = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let rules = std::fs::read_to_string(deploy("prometheus-rules.yml")).expect("read the rules");
    let rule_exprs = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect();
    (dashboard_exprs, rule_exprs)
}

/// A Prometheus server on loopback scraping `target` every second.
struct Prometheus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile_path("prometheus");
        std::fs::create_dir_all(&dir).expect("create the Prometheus directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: heapwatch\n    static_configs:\n      - targets: ['{target}']\n",
                deploy("prometheus-rules.yml").display()
            ),
        )
        .expect("write the Prometheus config");
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask setup installs it)");
        let server = Self {
            child,
            address,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&server.address).is_err() {
            assert!(Instant::now() < deadline, "Prometheus did not start");
            thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// True once an instant query of `expr` returns data, asked every
    /// second until `within` has passed: a rate needs two scrapes of its
    /// series inside its range, which a scrape that failed or came late
    /// can postpone.
    fn has_data_within(&self, expr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.query(expr).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let body = http_get(
            &self.address,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        );
        let response: Value = serde_json::from_str(&body).expect("a JSON answer");
        assert_eq!(response["status"], "success", "{expr}: {body}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The expression without a trailing comparison (`x > 0` becomes `x`).
fn without_threshold(expr: &str) -> &str {
    [" > ", " == ", " < "]
        .iter()
        .find_map(|op| expr.rsplit_once(op).map(|(lhs, _)| lhs))
        .unwrap_or(expr)
}

#[test]
#[ignore = "needs root"]
fn prometheus_evaluates_the_dashboard_and_the_rules_in_a_leak() {
    // The configuration installed: tiers, so the leak is found by its
    // growth and traced from then on.
    let shipped = std::fs::read_to_string(deploy("config.toml")).expect("read the config");
    let config = support::config_file(&shipped);
    let daemon = Daemon::start(
        &config,
        &["--tick", "1s", "--window", "6s", "--min-age", "3s"],
    );
    let prometheus = Prometheus::start(&daemon.address);
    let _leak = Workload::start(&fixture("workload"), "slow_leak");
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus
        .query("heapwatch_process_leak_suspect_bytes > 0")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the leak suspect"
        );
        thread::sleep(Duration::from_secs(1));
    }
    let (dashboard, rules) = expressions();
    assert!(dashboard.len() >= 10 && rules.len() == 5);
    for expr in &dashboard {
        assert!(
            prometheus.has_data_within(expr, Duration::from_secs(30)),
            "dashboard query without data: {expr}"
        );
    }
    for expr in &rules {
        assert!(
            prometheus.has_data_within(without_threshold(expr), Duration::from_secs(30)),
            "alerting rule without data: {expr}"
        );
    }
    assert!(
        !prometheus.query(&rules[0]).is_empty(),
        "the leak rule fires on the leak"
    );
}
