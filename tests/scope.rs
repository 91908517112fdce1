//! `heapwatch daemon --scope`: selected processes get probes of their own,
//! found when they start; every other process runs without a breakpoint.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use object::{Object, ObjectSymbol};
use serde_json::Value;
use support::{
    BpfBaseline, KillOnDrop, config_file, daemon::Daemon, fixture, have_root, heapwatch,
    tempfile_path,
};

/// The byte x86 breakpoints are made of.
const INT3: u8 = 0xcc;

/// The workload fixture under another name (the command name selectors see).
fn workload_named(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scope");
    fs::create_dir_all(&dir).expect("create the scope fixtures' directory");
    let path = dir.join(name);
    fs::copy(fixture("workload"), &path).expect("copy the workload");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("make it executable");
    path
}

/// A `workload gated` process: it allocates when told to.
struct Gated {
    stdin: Option<ChildStdin>,
    child: Child,
    _kill: KillOnDrop,
}

impl Gated {
    fn spawn(binary: &Path) -> Self {
        let mut child = Command::new(binary)
            .arg("gated")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gated workload");
        let kill = KillOnDrop::pid_only(child.id() as i32);
        Self {
            stdin: child.stdin.take(),
            child,
            _kill: kill,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it allocate; waits for its "ready" line.
    fn allocate(&mut self) {
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(b"g")
            .expect("tell the workload to allocate");
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line, "ready\n");
    }

    /// Closes its stdin: it exits.
    fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().expect("wait for the workload").success());
    }
}

/// The first byte of the C library's malloc as process `pid` has it in
/// memory; `None` until the dynamic loader has mapped the C library.
fn first_byte_of_malloc(pid: u32) -> Option<u8> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("read the maps");
    let (base, libc) = maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, offset, path) = (fields[0], fields[2], *fields.get(5)?);
        (path.contains("/libc.so") && u64::from_str_radix(offset, 16).ok()? == 0).then(|| {
            let start = range.split('-').next().expect("range");
            (
                u64::from_str_radix(start, 16).expect("hex"),
                path.to_owned(),
            )
        })
    })?;
    let data = fs::read(&libc).expect("read the C library");
    let file = object::File::parse(&*data).expect("parse the C library");
    let malloc = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("malloc"))
        .expect("malloc is exported")
        .address();
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open the process's memory");
    mem.seek(SeekFrom::Start(base + malloc))
        .expect("seek to malloc");
    let mut byte = [0u8];
    mem.read_exact(&mut byte).expect("read malloc's first byte");
    Some(byte[0])
}

/// Waits until `check` holds (or 10 s pass); returns whether it did.
fn eventually(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `heapwatch snapshot` of `pid` as JSON, or its error text.
fn snapshot(socket: &Path, pid: u32) -> Result<Value, String> {
    let output = heapwatch()
        .args(["snapshot", "--format", "json", "--socket"])
        .arg(socket)
        .args(["--pid", &pid.to_string()])
        .output()
        .expect("run heapwatch snapshot");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("JSON snapshot"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn only_selected_processes_get_breakpoints_and_they_are_traced_exactly() {
    if !have_root("only_selected_processes_get_breakpoints_and_they_are_traced_exactly") {
        return;
    }
    let baseline = BpfBaseline::take();
    let chosen = workload_named("hw_chosen");
    let other = workload_named("hw_other");
    let running_before = Gated::spawn(&chosen);
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(
        &config_file(""),
        &["--scope", "comm:hw_chosen", "--socket", socket_arg],
    );
    let started_after = Gated::spawn(&chosen);
    let mut unselected = Gated::spawn(&other);
    for (gated, when) in [(&running_before, "before"), (&started_after, "after")] {
        assert!(
            eventually(|| first_byte_of_malloc(gated.pid()) == Some(INT3)),
            "the selected process started {when} the daemon has no breakpoint at malloc"
        );
    }
    let mut selected = [running_before, started_after];
    for gated in &mut selected {
        gated.allocate();
    }
    unselected.allocate();
    // It has allocated: the C library is mapped.
    assert_ne!(
        first_byte_of_malloc(unselected.pid()).expect("the C library is mapped"),
        INT3,
        "the kernel put a breakpoint into a process no selector picks"
    );
    // 100 blocks of 10,000 bytes each, and nothing else (the fixture uses no stdio).
    for gated in &selected {
        let json = snapshot(&socket, gated.pid()).expect("a snapshot of a selected process");
        assert_eq!(json["in_use_bytes"], 1_000_000, "{json}");
        assert_eq!(json["in_use_blocks"], 100, "{json}");
    }
    let refused = snapshot(&socket, unselected.pid()).expect_err("an unselected process");
    assert!(
        refused.contains("made no allocation heapwatch saw"),
        "{refused}"
    );
    for gated in selected {
        gated.finish();
    }
    unselected.finish();
    assert!(daemon.stop().success());
    baseline.assert_nothing_left();
}
