//! deploy/: the systemd unit, the Prometheus rules, the Grafana dashboard and
//! the Kubernetes manifest, checked by the tools that consume them (and the
//! manifest against the unit, the config and the daemon's flags), and against
//! a real Prometheus server scraping a real daemon in a leak scenario; `cargo
//! xtask install` and the group its sysusers.d entry makes (booted under a
//! real systemd in tests/systemd.rs).

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

use clap::Parser;
use heapwatch::cli::{Cli, Command as Heapwatch};
use serde_json::Value;
use support::{
    Workload,
    daemon::{Daemon, free_port, http_get},
    fixture, tempfile_path, xtask_install,
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

/// A tool of the tests' virtualenv, which `cargo xtask setup` (and so
/// `cargo xtask test`) creates.
fn venv_tool(name: &str) -> PathBuf {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/venv/bin")
        .join(name);
    assert!(
        tool.is_file(),
        "{} is missing: run `cargo xtask test` (or `cargo xtask setup`), which installs it",
        tool.display()
    );
    tool
}

/// The documents of a YAML file as JSON, read by the virtualenv's PyYAML
/// (the project has no YAML crate).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let output = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = yaml.safe_load_all(open(sys.argv[1]))\n\
             json.dump([d for d in docs if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run the virtualenv's python");
    assert!(
        output.status.success(),
        "PyYAML cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let documents: Value = serde_json::from_slice(&output.stdout).expect("PyYAML's JSON");
    documents.as_array().cloned().unwrap_or_default()
}

/// The strings of a JSON array (none if it is not one).
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The oldest Kubernetes the manifest is meant for, and the newest whose
/// schemas kubernetes-validate (pinned by xtask) ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

#[test]
fn kubernetes_validate_accepts_the_kubernetes_manifest() {
    let manifest = deploy("kubernetes/heapwatch.yaml");
    let resources = yaml_documents(&manifest).len();
    assert!(resources >= 3, "{resources} resources in the manifest");
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .arg(&manifest)
            .output()
            .expect("run kubernetes-validate");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // A kind or apiVersion it has no schema for is only a warning to it.
        let passed = said.matches(" passed for resource ").count();
        assert!(
            output.status.success() && passed == resources && !said.contains("WARN"),
            "kubernetes-validate --strict against {version}, {passed} of {resources} resources passed:\n{said}"
        );
    }
}

/// The Kubernetes manifest's resources.
struct Manifest(Vec<Value>);

impl Manifest {
    fn read() -> Self {
        Self(yaml_documents(&deploy("kubernetes/heapwatch.yaml")))
    }

    /// The resource of this kind.
    fn get(&self, kind: &str) -> &Value {
        self.0
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the manifest"))
    }

    /// The DaemonSet's pod template.
    fn pod(&self) -> &Value {
        &self.get("DaemonSet")["spec"]["template"]
    }

    /// The pod's one container.
    fn container(&self) -> &Value {
        match self.pod()["spec"]["containers"]
            .as_array()
            .map(Vec::as_slice)
        {
            Some([container]) => container,
            _ => panic!("the pod has not one container"),
        }
    }

    /// The volume the container mounts at `path`.
    fn volume_at(&self, path: &Path) -> &Value {
        let mount = self.container()["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str().map(Path::new) == Some(path))
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        self.pod()["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]))
    }
}

#[test]
fn the_kubernetes_manifest_runs_the_daemon_as_the_unit_does() {
    let manifest = Manifest::read();
    let spec = &manifest.pod()["spec"];
    let container = manifest.container();
    assert_eq!(
        spec["hostPID"], true,
        "the daemon must see the node's processes"
    );
    let unit = std::fs::read_to_string(deploy("heapwatch.service")).expect("read the unit");
    let unit_key = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
    };
    assert_eq!(
        strings(&container["command"]),
        unit_key("ExecStart").split_whitespace().collect::<Vec<_>>()
    );
    let bounding: Vec<&str> = unit_key("CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").expect("a CAP_ name"))
        .collect();
    let capabilities = &container["securityContext"]["capabilities"];
    assert_eq!(strings(&capabilities["add"]), bounding);
    assert_eq!(strings(&capabilities["drop"]), ["ALL"]);
    let stop: u64 = unit_key("TimeoutStopSec")
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert_eq!(spec["terminationGracePeriodSeconds"], stop);
}

#[test]
fn the_kubernetes_manifest_gives_the_daemon_its_config_its_port_and_its_host_paths() {
    let manifest = Manifest::read();
    let container = manifest.container();
    let shipped = std::fs::read_to_string(deploy("config.toml")).expect("read the config");
    let config_map = manifest.get("ConfigMap");
    assert_eq!(
        config_map["data"]["config.toml"].as_str(),
        Some(shipped.as_str()),
        "the ConfigMap's config.toml is not deploy/config.toml"
    );
    // The container's command line as the daemon parses it, reading the
    // ConfigMap where --config points.
    let argv = [strings(&container["command"]), strings(&container["args"])].concat();
    let Heapwatch::Daemon(args) = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("heapwatch refuses {argv:?}: {e}"))
        .command
    else {
        panic!("{argv:?} is not `heapwatch daemon`");
    };
    let mut source = args.config_source();
    let config_path = source
        .file
        .replace(support::config_file(&shipped))
        .expect("--config FILE");
    let config = source
        .load()
        .expect("the daemon accepts its flags and config");
    let _ = std::fs::remove_file(source.file.unwrap_or_default());
    assert_eq!(config_path.file_name(), Some("config.toml".as_ref()));
    let config_dir = config_path.parent().expect("the config's directory");
    assert_eq!(
        manifest.volume_at(config_dir)["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    for dir in [
        config.state_dir.as_path(),
        args.socket.parent().expect("a socket directory"),
    ] {
        assert_eq!(
            manifest.volume_at(dir)["hostPath"]["path"]
                .as_str()
                .map(Path::new),
            Some(dir),
            "{} is not the host's",
            dir.display()
        );
    }

    // /metrics, reachable from the pod network, on the port every other
    // resource names.
    assert!(
        config.listen.ip().is_unspecified(),
        "/metrics listens on {}",
        config.listen
    );
    let port = config.listen.port();
    let ports = container["ports"].as_array().cloned().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == port),
        "no containerPort metrics {port}: {ports:?}"
    );
    let pod = manifest.pod();
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert!(
            get["port"] == "metrics" && get["path"] == "/metrics",
            "{probe}: {get}"
        );
    }
    let service = manifest.get("Service");
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let monitors = yaml_documents(&deploy("kubernetes/servicemonitor.yaml"));
    let monitor = monitors.first().expect("a ServiceMonitor");
    assert_eq!(
        monitor["metadata"]["namespace"],
        service["metadata"]["namespace"]
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
}

#[test]
fn xtask_install_puts_every_file_in_place() {
    let root = tempfile_path("root");
    let said = String::from_utf8_lossy(&xtask_install(&root).stdout).into_owned();
    for file in [
        "usr/local/bin/heapwatch",
        "etc/systemd/system/heapwatch.service",
        "usr/lib/sysusers.d/heapwatch.conf",
        "etc/heapwatch/config.toml",
        "usr/local/share/doc/heapwatch/README.md",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
        assert!(
            said.contains(&format!("installed {}", root.join(file).display())),
            "cargo xtask install does not say it installed {file}: {said}"
        );
    }
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn the_installed_sysusers_entry_makes_the_units_group() {
    let unit = std::fs::read_to_string(deploy("heapwatch.service")).expect("read the unit");
    let group = unit
        .lines()
        .find_map(|line| line.strip_prefix("Group="))
        .expect("the unit sets Group=");
    let root = tempfile_path("sysusers-root");
    xtask_install(&root);
    // systemd-sysusers as at boot, on the root alone (it reads the root's
    // sysusers.d and writes the root's /etc/group): no root privilege needed.
    let output = Command::new("systemd-sysusers")
        .arg("--root")
        .arg(&root)
        .output()
        .expect("run systemd-sysusers (cargo xtask setup installs systemd)");
    assert!(
        output.status.success(),
        "systemd-sysusers --root: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let groups = std::fs::read_to_string(root.join("etc/group"))
        .expect("systemd-sysusers wrote no /etc/group under the root");
    let gid: u32 = groups
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{group}:x:")))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no group {group} in the root's /etc/group: {groups}"));
    // Debian's system groups are below 1000 (SYS_GID_MAX in login.defs).
    assert!(gid < 1000, "group {group} is not a system group: gid {gid}");
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
