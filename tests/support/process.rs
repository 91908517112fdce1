//! Processes under test: workloads steered through stdin, renamed copies,
//! and what the kernel shows of them (a breakpoint in malloc).

use std::{
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use object::{Object, ObjectSection, ObjectSymbol};
use serde_json::Value;

use super::{KillOnDrop, fixture, heapwatch};

/// The byte x86 breakpoints are made of.
pub const INT3: u8 = 0xcc;

/// The workload fixture under another name (the command name selectors see).
pub fn workload_named(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scope");
    fs::create_dir_all(&dir).expect("create the scope fixtures' directory");
    let path = dir.join(name);
    fs::copy(fixture("workload"), &path).expect("copy the workload");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("make it executable");
    path
}

/// A workload process steered through its stdin (`gated`, `release`).
pub struct Gated {
    stdin: Option<ChildStdin>,
    child: Child,
    _kill: KillOnDrop,
}

impl Gated {
    pub fn spawn(binary: &Path, mode: &str) -> Self {
        let mut child = Command::new(binary)
            .arg(mode)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets `workload gated` allocate; waits for its "ready" line.
    pub fn allocate(&mut self) {
        self.step("ready\n");
    }

    /// Sends it a byte and waits for the line `expected`.
    pub fn step(&mut self, expected: &str) {
        self.poke();
        self.read_line(expected);
    }

    /// Sends it a byte: it goes on.
    pub fn poke(&mut self) {
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(b"g")
            .expect("tell the workload to go on");
    }

    /// Waits for the line `expected` on its stdout.
    pub fn read_line(&mut self, expected: &str) {
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read a line from the workload");
        assert_eq!(line, expected);
    }

    /// Closes its stdin: it exits.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().expect("wait for the workload").success());
    }

    /// Waits for its end; returns the signal that killed it, if one did.
    pub fn killing_signal(mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.child.wait().expect("wait for the workload").signal()
    }
}

/// The first byte of the C library's malloc as process `pid` has it in
/// memory; `None` until the dynamic loader has mapped the C library.
pub fn first_byte_of_malloc(pid: u32) -> Option<u8> {
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

/// True when the kernel has put a breakpoint into the first bytes of
/// `symbol` in the library whose path holds `library`, as process `pid` has
/// them in memory (a byte that differs from the file's and is `int3`: a
/// probe may sit past the first instruction).
pub fn breakpoint_in(pid: u32, library: &str, symbol: &str) -> bool {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let Some((base, path)) = maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, offset, path) = (fields[0], fields[2], *fields.get(5)?);
        (path.contains(library) && u64::from_str_radix(offset, 16).ok()? == 0).then(|| {
            let start = range.split('-').next().expect("range");
            (
                u64::from_str_radix(start, 16).expect("hex"),
                path.to_owned(),
            )
        })
    }) else {
        return false;
    };
    let data = fs::read(&path).expect("read the library");
    let file = object::File::parse(&*data).expect("parse the library");
    let found = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(symbol))
        .expect("the symbol is exported");
    let section = file
        .section_by_index(found.section_index().expect("a defined symbol"))
        .expect("its section");
    let on_disk = section
        .data_range(found.address(), 16)
        .ok()
        .flatten()
        .expect("the symbol's first bytes");
    let mut in_memory = [0u8; 16];
    let mut mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open the process's memory");
    mem.seek(SeekFrom::Start(base + found.address()))
        .expect("seek to the symbol");
    mem.read_exact(&mut in_memory)
        .expect("read the symbol's first bytes");
    in_memory
        .iter()
        .zip(on_disk)
        .any(|(&now, &was)| now == INT3 && was != INT3)
}

/// Waits until `check` holds (or 10 s pass); returns whether it did.
pub fn eventually(check: impl Fn() -> bool) -> bool {
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
pub fn snapshot_json(socket: &Path, pid: u32) -> Result<Value, String> {
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

/// A `/proc/PID/status` field given in kB (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read the status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(!stat.rsplit_once(") ")?.1.starts_with('Z')))
        .unwrap_or(false)
}

/// The pairs a `churn` fixture reports having made ("N pairs in T ns").
pub fn churn_pairs(stdout: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("churn printed no count: {text}"))
}
