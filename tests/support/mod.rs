//! Shared helpers of the integration tests: fixture builds, running
//! heapwatch and valgrind, and the kernel's listing of BPF programs.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod daemon;
pub mod pprof;
pub mod process;
pub mod user;

/// Names (as the kernel keeps them, cut to 15 bytes) of heapwatch's programs.
const PROGRAM_NAMES: [&str; 14] = [
    "floor_entry",
    "floor_return",
    "cxx_new_entry",
    "size_arg0_entry",
    "size_arg1_entry",
    "calloc_entry",
    "realloc_entry",
    "reallocarray_en",
    "posix_memalign_",
    "free_entry",
    "alloc_return",
    "process_exec",
    "process_exit",
    "new_task",
];

/// The heapwatch binary under test.
pub fn heapwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_heapwatch"))
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds tests/fixtures/NAME.{c,cpp,rs} with frame pointers and debug info
/// and returns the binary's path.
pub fn fixture(name: &str) -> PathBuf {
    let (_, compiler) = compiler_for(&fixture_sources(), name);
    fixture_built_by(name, name, compiler, &[])
}

/// Builds the C fixture NAME with `compiler` (`gcc`, `musl-gcc`) and the
/// extra arguments `args` (after the source: libraries to link), frame
/// pointers and debug info as every fixture, into a binary named `binary`.
pub fn c_fixture_with(name: &str, binary: &str, compiler: &str, args: &[&str]) -> PathBuf {
    let mut command = Command::new(compiler);
    command.args(["-O1", "-g", "-fno-omit-frame-pointer"]);
    fixture_built_by(name, binary, command, args)
}

/// Builds the C fixture NAME as a distribution builds programs: -O2,
/// without frame pointers (gcc's default there), with debug info.
pub fn c_fixture_without_frame_pointers(name: &str) -> PathBuf {
    let mut command = Command::new("gcc");
    command.args(["-O2", "-g", "-fomit-frame-pointer"]);
    fixture_built_by(name, &format!("{name}-no-fp"), command, &[])
}

fn fixture_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn fixture_built_by(name: &str, binary: &str, mut compiler: Command, args: &[&str]) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&out_dir).expect("create the fixtures' build directory");
    let binary = out_dir.join(binary);
    let (source, _) = compiler_for(&fixture_sources(), name);
    let status = compiler
        .arg(&source)
        .args(args)
        .arg("-o")
        .arg(&binary)
        .status()
        .unwrap_or_else(|e| panic!("run the compiler for {}: {e}", source.display()));
    assert!(
        status.success(),
        "building fixture {} failed",
        source.display()
    );
    binary
}

fn compiler_for(sources: &Path, name: &str) -> (PathBuf, Command) {
    let c_flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];
    for (ext, program) in [("c", "gcc"), ("cpp", "g++")] {
        let source = sources.join(format!("{name}.{ext}"));
        if source.exists() {
            let mut cmd = Command::new(program);
            cmd.args(c_flags);
            return (source, cmd);
        }
    }
    let source = sources.join(format!("{name}.rs"));
    assert!(source.exists(), "no fixture named {name}");
    let mut cmd = Command::new("rustc");
    cmd.args([
        "-C",
        "opt-level=2",
        "-C",
        "force-frame-pointers=yes",
        "-g",
        "--edition",
        "2021",
    ]);
    (source, cmd)
}

/// valgrind's five heap-summary figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Summary {
    pub in_use_bytes: u64,
    pub in_use_blocks: u64,
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
}

impl Summary {
    /// The figures of one process of a heapwatch JSON report.
    pub fn of_process(process: &Value) -> Self {
        let field = |name: &str| {
            process[name]
                .as_u64()
                .unwrap_or_else(|| panic!("report lacks {name}: {process}"))
        };
        Self {
            in_use_bytes: field("in_use_bytes"),
            in_use_blocks: field("in_use_blocks"),
            allocs: field("allocs"),
            frees: field("frees"),
            bytes_allocated: field("bytes_allocated"),
        }
    }
}

/// A finished `heapwatch record` run.
pub struct Recorded {
    pub output: Output,
    pub report: Value,
}

impl Recorded {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Heap summaries of every process, main process first.
    pub fn summaries(&self) -> Vec<Summary> {
        self.processes().iter().map(Summary::of_process).collect()
    }

    pub fn processes(&self) -> Vec<Value> {
        self.report["processes"]
            .as_array()
            .unwrap_or_else(|| panic!("report without processes: {}", self.report))
            .clone()
    }

    /// Asserts that the kernel lost nothing and every call was paired.
    pub fn assert_exact(&self) {
        for counter in ["lost_records", "unpaired_calls", "malformed_records"] {
            assert_eq!(self.report[counter], 0, "{counter} in {}", self.report);
        }
    }
}

/// Runs `heapwatch record [flags] -- command...` with a JSON report.
pub fn record(flags: &[&str], command: &[&str]) -> Recorded {
    record_with_env(flags, command, &[])
}

/// As [`record`], with extra environment variables.
pub fn record_with_env(flags: &[&str], command: &[&str], env: &[(&str, &str)]) -> Recorded {
    let baseline = BpfBaseline::take();
    let json = tempfile_path("report.json");
    let output = heapwatch()
        .envs(env.iter().copied())
        .arg("record")
        .args(flags)
        .arg("--json")
        .arg(&json)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run heapwatch record");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); heapwatch said: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    let report = serde_json::from_str(&text).expect("the JSON report parses");
    assert_matches_schema(&report);
    baseline.assert_nothing_left();
    Recorded { output, report }
}

/// valgrind's summaries of `command`, one per process, in the order printed.
pub fn valgrind(command: &[&str]) -> Vec<Summary> {
    valgrind_with(&[], &[], command)
}

/// As [`valgrind`], with extra valgrind options (`--soname-synonyms`) and
/// environment variables (`LD_PRELOAD`).
pub fn valgrind_with(options: &[&str], env: &[(&str, &str)], command: &[&str]) -> Vec<Summary> {
    let output = Command::new("valgrind")
        .envs(env.iter().copied())
        .args(["--run-libc-freeres=no", "--run-cxx-freeres=no"])
        .args(options)
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&output.stderr);
    let summaries = parse_valgrind(&text);
    assert!(
        !summaries.is_empty(),
        "no heap summary from valgrind:\n{text}"
    );
    summaries
}

fn parse_valgrind(text: &str) -> Vec<Summary> {
    let numbers = |line: &str| -> Vec<u64> {
        line.split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').replace(',', "").parse().ok())
            .collect()
    };
    let mut summaries = Vec::new();
    let mut in_use = None;
    for line in text.lines() {
        let body = line.splitn(3, "==").nth(2).unwrap_or("");
        if body.contains("in use at exit:") {
            in_use = Some(numbers(body));
        } else if body.contains("total heap usage:") {
            let usage = numbers(body);
            let in_use = in_use.take().expect("in use line before heap usage");
            summaries.push(Summary {
                in_use_bytes: in_use[0],
                in_use_blocks: in_use[1],
                allocs: usage[0],
                frees: usage[1],
                bytes_allocated: usage[2],
            });
        }
    }
    summaries
}

/// heapwatch's programs and links that exist before a test, so that the test
/// checks only what it made itself (another heapwatch may be running).
pub struct BpfBaseline {
    programs: Vec<u64>,
    links: Vec<u64>,
}

impl BpfBaseline {
    /// Notes what exists now.
    pub fn take() -> Self {
        Self {
            programs: heapwatch_programs().into_iter().map(|(id, _)| id).collect(),
            links: link_ids(&heapwatch_links()),
        }
    }

    /// heapwatch links attached since the baseline.
    pub fn new_links(&self) -> Vec<u64> {
        link_ids(&heapwatch_links())
            .into_iter()
            .filter(|id| !self.links.contains(id))
            .collect()
    }

    /// The kinds (`bpftool link show`'s `type`) of the heapwatch links
    /// attached since the baseline, sorted, each once.
    pub fn new_link_types(&self) -> Vec<String> {
        let mut types: Vec<String> = heapwatch_links()
            .into_iter()
            .filter(|link| {
                link["id"]
                    .as_u64()
                    .is_some_and(|id| !self.links.contains(&id))
            })
            .filter_map(|link| link_type(&link["type"]))
            .collect();
        types.sort();
        types.dedup();
        types
    }

    /// Asserts that no heapwatch link or program made since the baseline is
    /// left in the kernel. The kernel frees a detached raw tracepoint's
    /// link and program after a grace period, on its own time: they are
    /// given a little while to go.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let links = self.new_links();
            let programs: Vec<(u64, String)> = heapwatch_programs()
                .into_iter()
                .filter(|(id, _)| !self.programs.contains(id))
                .collect();
            if links.is_empty() && programs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "heapwatch links still attached: {links:?}; programs still loaded: {programs:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A link's kind as `bpftool link show` gives it. Debian 12's bpftool lists
/// the kinds its own kernel headers lacked by number: a multi-uprobe link
/// (`BPF_LINK_TYPE_UPROBE_MULTI`) is 12.
fn link_type(kind: &Value) -> Option<String> {
    match kind {
        Value::String(name) => Some(name.clone()),
        Value::Number(n) if n.as_u64() == Some(12) => Some("uprobe_multi".to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn link_ids(links: &[Value]) -> Vec<u64> {
    links.iter().filter_map(|l| l["id"].as_u64()).collect()
}

/// heapwatch's programs the kernel lists (`bpftool prog show`): (id, name).
fn heapwatch_programs() -> Vec<(u64, String)> {
    bpftool(&["prog", "show"])
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .filter(|(_, name)| PROGRAM_NAMES.contains(&name.as_str()))
        .collect()
}

/// BPF links the kernel lists (`bpftool link show`) whose program is heapwatch's.
fn heapwatch_links() -> Vec<Value> {
    let ids: Vec<u64> = heapwatch_programs().into_iter().map(|(id, _)| id).collect();
    bpftool(&["link", "show"])
        .into_iter()
        .filter(|link| link["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .collect()
}

fn bpftool(args: &[&str]) -> Vec<Value> {
    let output = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "bpftool {args:?} failed");
    let listing: Value = serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    listing.as_array().cloned().unwrap_or_default()
}

/// Asserts that `json` is valid under docs/report.schema.json.
pub fn assert_matches_schema(json: &Value) {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = SCHEMA.get_or_init(|| {
        let text = include_str!("../../docs/report.schema.json");
        let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is valid")
    });
    let errors: Vec<String> = validator.iter_errors(json).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "not as docs/report.schema.json says: {errors:?}\n{json}"
    );
}

/// The function names of a JSON report site's stack, immediate caller first.
pub fn functions(site: &Value) -> Vec<String> {
    frame_functions(&site["stack"])
}

/// The function names of a JSON report site's `sampled_stack` (none without one).
pub fn sampled_functions(site: &Value) -> Vec<String> {
    frame_functions(&site["sampled_stack"])
}

fn frame_functions(frames: &Value) -> Vec<String> {
    frames
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("???").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The GNU build id of an ELF file as `readelf -n` prints it.
pub fn readelf_build_id(binary: &Path) -> String {
    let output = Command::new("readelf")
        .arg("-n")
        .arg(binary)
        .output()
        .expect("run readelf");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build id", binary.display()))
        .to_owned()
}

/// Runs `cargo xtask install --no-build --root ROOT`, as a user would
/// (the binary from target/release).
pub fn xtask_install(root: &Path) -> Output {
    let output = Command::new(env!("CARGO"))
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
        .arg(root)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run cargo xtask install");
    assert!(
        output.status.success(),
        "cargo xtask install --root {} failed (it installs target/release/heapwatch: \
         build it with cargo build --release): {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A path under /tmp unique to this test process.
pub fn tempfile_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("heapwatch-test-{}-{n}-{name}", std::process::id()))
}

/// A process killed (and, if it is our child, reaped) when the test ends,
/// whether it passes or panics.
pub struct KillOnDrop {
    child: Option<Child>,
    pid: i32,
}

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        let pid = child.id() as i32;
        Self {
            child: Some(child),
            pid,
        }
    }

    /// A process that is not our child.
    pub fn pid_only(pid: i32) -> Self {
        Self { child: None, pid }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub fn kill_now(&mut self) {
        // SAFETY: signals a process this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A `workload MODE` process (tests/fixtures/workload.c), killed when dropped.
pub struct Workload(KillOnDrop);

impl Workload {
    /// Starts `workload MODE` and waits for its "ready" line.
    pub fn start(binary: &Path, mode: &str) -> Self {
        Self::start_with(binary, &[mode])
    }

    /// Starts `binary ARGS` and waits for its "ready" line.
    pub fn start_with(binary: &Path, args: &[&str]) -> Self {
        Self::start_env(binary, args, &[])
    }

    /// Starts `binary ARGS` with `env` added and waits for its "ready" line.
    pub fn start_env(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the workload");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(
            line,
            "ready\n",
            "{} {args:?} did not start",
            binary.display()
        );
        Self(KillOnDrop::new(child))
    }

    /// Starts `workload MODE` without waiting (modes that exec say nothing).
    pub fn spawn(binary: &Path, mode: &str) -> Self {
        let child = Command::new(binary)
            .arg(mode)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload");
        Self(KillOnDrop::new(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }
}

/// A daemon configuration file under /tmp holding `text`.
pub fn config_file(text: &str) -> PathBuf {
    let path = tempfile_path("config.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// The `sigalloc` fixture's own count, from its line "live B blocks N
/// bytes, S signals handled": (blocks, bytes, signals).
pub fn sigalloc_count(stdout: &[u8]) -> (u64, u64, u64) {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with("live "))
        .unwrap_or_else(|| panic!("no count in {text:?}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [blocks, bytes, signals] => (blocks, bytes, signals),
        _ => panic!("not a count: {line:?}"),
    }
}
