//! A `heapwatch daemon` under test: started with a notify socket, scraped
//! over loopback, stopped by signal.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixDatagram, UnixStream},
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::{heapwatch, process::is_running, tempfile_path};

/// A running daemon; killed if the test ends without stopping it.
pub struct Daemon {
    child: Option<Child>,
    pub address: String,
    log: Arc<Mutex<String>>,
    notify: UnixDatagram,
    notify_path: std::path::PathBuf,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Daemon {
    /// Starts `heapwatch daemon` with `args` (plus `--listen` and `--config`)
    /// and waits for its READY=1.
    pub fn start(config: &Path, args: &[&str]) -> Self {
        Self::start_with_env(config, args, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let listen = ["daemon", "--listen", &address];
        Self::launch(
            heapwatch(),
            &[&listen[..], args].concat(),
            config,
            env,
            address.clone(),
        )
    }

    /// As [`Daemon::start`], through `program PROGRAM_ARGS` (capsh, for one),
    /// which is to exec heapwatch with the arguments that follow.
    pub fn start_program(
        program: &str,
        program_args: &[String],
        config: &Path,
        args: &[&str],
    ) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let listen = ["daemon", "--listen", &address];
        let mut command = std::process::Command::new(program);
        command.args(program_args);
        Self::launch(
            command,
            &[&listen[..], args].concat(),
            config,
            &[],
            address.clone(),
        )
    }

    /// As [`Daemon::start`], without `--listen`: /metrics where the default puts it.
    pub fn start_default_listen(config: &Path, args: &[&str]) -> Self {
        let daemon = [&["daemon"][..], args].concat();
        Self::launch(
            heapwatch(),
            &daemon,
            config,
            &[],
            "127.0.0.1:9465".to_owned(),
        )
    }

    /// Runs `command ARGS --config CONFIG` with a notify socket and waits for
    /// READY=1. The daemon traces every process exactly (`--scope all`)
    /// unless the arguments or the config name a scope, and keeps its state
    /// in a directory of the test's own unless they name one.
    fn launch(
        mut command: std::process::Command,
        args: &[&str],
        config: &Path,
        env: &[(&str, &str)],
        address: String,
    ) -> Self {
        let socket_path = tempfile_path("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("socket timeout");
        let names_scope = args.contains(&"--scope")
            || std::fs::read_to_string(config)
                .is_ok_and(|text| text.lines().any(|l| l.trim_start().starts_with("scope")));
        command.args(args);
        if !names_scope {
            command.args(["--scope", "all"]);
        }
        if !args.contains(&"--state-dir") {
            command.arg("--state-dir").arg(tempfile_path("state"));
        }
        let mut child = command
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("HEAPWATCH_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start heapwatch daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut daemon = Self {
            child: Some(child),
            address,
            log,
            notify: socket,
            notify_path: socket_path,
        };
        daemon.wait_for_notification("READY=1");
        daemon.assert_running();
        daemon
    }

    /// Waits for a datagram to the notify socket containing `state`.
    pub fn wait_for_notification(&self, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut buf = [0u8; 256];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains(state) => return,
                Ok(_) => {}
                Err(e) => assert!(
                    Instant::now() < deadline && is_running(self.pid()),
                    "no {state} from the daemon ({e}); it logged:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log so far, without its terminal colours.
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|&c| c == 'm');
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// Waits until the log, without its colours, contains `text`.
    pub fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.plain_log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in the log:\n{}",
                self.plain_log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not stopped").id()
    }

    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("daemon not stopped");
        let status = child.try_wait().expect("poll the daemon");
        assert!(
            status.is_none(),
            "the daemon exited ({status:?}):\n{}",
            self.log()
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("daemon not stopped").id() as i32;
        // SAFETY: signals the daemon this test started.
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends SIGTERM and waits for the exit.
    /// SIGTERM, and the daemon must exit 0.
    pub fn stop_cleanly(&mut self) {
        let status = self.stop();
        assert!(status.success(), "SIGTERM exits 0:\n{}", self.log());
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.stop_after_signal()
    }

    /// Waits for the exit of a daemon already signalled.
    pub fn stop_after_signal(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not stopped");
        child.wait().expect("wait for the daemon")
    }

    /// GET /metrics.
    pub fn scrape(&self) -> Metrics {
        let body = http_get(&self.address, "/metrics");
        Metrics::parse(&body)
    }

    /// Scrapes until `check` passes or `within` passes; returns the last scrape.
    pub fn scrape_until(&self, within: Duration, check: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + within;
        loop {
            let metrics = self.scrape();
            if check(&metrics) || Instant::now() > deadline {
                return metrics;
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.notify_path);
    }
}

/// The metrics `address` serves, for a daemon this test did not start itself
/// (one under systemd).
pub fn scrape(address: &str) -> Metrics {
    Metrics::parse(&http_get(address, "/metrics"))
}

/// The body of GET `path` from `address`.
pub fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the daemon");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// One sample of a scrape.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A parsed /metrics text.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, HashMap::new()),
                };
                Sample {
                    name: name.to_owned(),
                    labels,
                    value: value.parse().expect("a numeric value"),
                }
            })
            .collect();
        Self { samples }
    }

    /// The samples of metric `name`.
    pub fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of `name` for process `pid`, if it has a series.
    pub fn process(&self, name: &str, pid: u32) -> Option<f64> {
        self.process_labelled(name, &pid.to_string())
    }

    /// The value of `name` for the series whose `pid` label is `pid`.
    pub fn process_labelled(&self, name: &str, pid: &str) -> Option<f64> {
        self.family(name)
            .into_iter()
            .find(|s| s.labels.get("pid").map(String::as_str) == Some(pid))
            .map(|s| s.value)
    }

    /// The value of the series of `name` whose label `key` is `value` (0 when absent).
    pub fn labelled(&self, name: &str, key: &str, value: &str) -> f64 {
        self.family(name)
            .iter()
            .find(|s| s.labels.get(key).map(String::as_str) == Some(value))
            .map_or(0.0, |s| s.value)
    }

    /// `heapwatch_events_dropped_total{reason}`.
    pub fn dropped(&self, reason: &str) -> f64 {
        self.labelled("heapwatch_events_dropped_total", "reason", reason)
    }

    /// `heapwatch_events_total{kind}`.
    pub fn events(&self, kind: &str) -> f64 {
        self.labelled("heapwatch_events_total", "kind", kind)
    }

    /// The value of an unlabelled metric, or the sum of a labelled one.
    pub fn total(&self, name: &str) -> f64 {
        self.family(name).iter().map(|s| s.value).sum()
    }
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((
                key.trim().to_owned(),
                value.trim_end_matches('"').to_owned(),
            ))
        })
        .collect()
}

/// Sends one request line to the API socket at `socket` and returns the
/// reply's bytes.
pub fn api_reply(socket: &Path, request: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).expect("connect to the API");
    stream.write_all(request).expect("send the request");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read the reply");
    reply
}
