//! Bad input: every flag of every subcommand with wrong values, malformed
//! configuration files, missing commands. Each gets a clear error (the flag
//! or key named, and what is valid) in a few lines, a non-zero exit, and
//! leaves nothing behind: no process, no file, no BPF program. The flags are
//! read from `--help`, so that a flag added without a case here fails.
//!
//! The tables are kept one case a line (`rustfmt::skip`): read as lists,
//! they show what each flag refuses at a glance.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    cell::Cell,
    collections::BTreeMap,
    fs,
    net::TcpListener,
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{BpfBaseline, heapwatch, tempfile_path};

/// Subcommands `heapwatch --help` does not list.
const HIDDEN_SUBCOMMANDS: [&str; 1] = ["floor"];
/// The most lines an error takes: clap's error, tip, usage and pointer to --help.
const MAX_ERROR_LINES: usize = 5;
/// How long a refusal may take: it comes before any tracing.
const DEADLINE: Duration = Duration::from_secs(10);
/// Environment variable marking the processes of one case, to find any left behind.
const CASE_MARKER: &str = "HEAPWATCH_CLI_TEST_CASE";
/// Numbers the cases' markers, unique across this binary's tests.
static NEXT_MARKER: AtomicUsize = AtomicUsize::new(0);
/// Held while cases run: one test's BPF baseline must not see another's case.
static ONE_TABLE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// How a duration is written, as heapwatch says when it refuses one.
const DURATION_SYNTAX: &str = "a whole number and a unit, ms, s, m or h";
/// What `snapshot` and `ps` say without a daemon.
const NOT_RUNNING: [&str; 2] = [
    "the heapwatch daemon is not running",
    "start it with `heapwatch daemon`",
];

/// One wrong command line and the answer it must get.
#[derive(Clone)]
struct Case {
    /// heapwatch's arguments, the subcommand first.
    args: Vec<String>,
    /// 2 for a usage error (clap's), 1 for heapwatch's, 127 for a command that cannot run.
    code: i32,
    /// What the error must say: the flag or key, and what is wrong or valid.
    words: Vec<String>,
    /// Run as user nobody (a file of mode 000 is unreadable only to others than root).
    as_nobody: bool,
}

fn case(args: &[&str], code: i32, words: &[&str]) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        code,
        words: words.iter().map(|w| w.to_string()).collect(),
        as_nobody: false,
    }
}

/// `heapwatch SUB FLAG VALUE REST...` for each value, each refused alike.
fn each(
    [sub, flag]: [&str; 2],
    values: &[&str],
    rest: &[&str],
    code: i32,
    words: &[&str],
) -> Vec<Case> {
    values
        .iter()
        .map(|value| case(&[&[sub, flag, value], rest].concat(), code, words))
        .collect()
}

/// Files and sockets the cases point at, in a directory of their own.
struct Scratch {
    dir: PathBuf,
    configs: Cell<usize>,
    busy_port: TcpListener,
    _live_socket: UnixListener,
}

impl Scratch {
    fn create() -> Self {
        let dir = tempfile_path("cli");
        fs::create_dir(&dir).expect("create the scratch directory");
        let busy_port = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let live_socket = UnixListener::bind(dir.join("live.sock")).expect("bind a socket");
        let scratch = Self {
            dir,
            configs: Cell::new(0),
            busy_port,
            _live_socket: live_socket,
        };
        scratch.file("precious", b"keep me", 0o644);
        scratch.file("loopback.toml", b"listen = \"127.0.0.1:0\"\n", 0o644);
        scratch.file("unreadable.toml", b"tick = \"5s\"\n", 0o000);
        scratch.file("not-executable", b"#!/bin/sh\n", 0o644);
        scratch.file("no-shebang", b"echo hi\n", 0o755);
        scratch
    }

    /// `name` in the scratch directory (nothing need be there).
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn file(&self, name: &str, contents: &[u8], mode: u32) -> String {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write a scratch file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path.display().to_string()
    }

    /// A configuration file holding `contents`.
    fn config(&self, contents: &str) -> String {
        self.configs.set(self.configs.get() + 1);
        let name = format!("config-{}.toml", self.configs.get());
        self.file(&name, contents.as_bytes(), 0o644)
    }

    fn busy_address(&self) -> String {
        self.busy_port
            .local_addr()
            .expect("its address")
            .to_string()
    }

    /// Every entry of the scratch directory and the contents of its files.
    fn listing(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        fs::read_dir(&self.dir)
            .expect("list the scratch directory")
            .map(|entry| {
                let entry = entry.expect("a scratch entry");
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                let contents = is_file.then(|| fs::read(entry.path()).ok()).flatten();
                (entry.file_name().to_string_lossy().into_owned(), contents)
            })
            .collect()
    }

    /// The flags a case gets unless it gives them, so that no case depends on
    /// the machine: its /etc/heapwatch/config.toml, a daemon at the default
    /// socket, port 9465 in use (the configuration listens on any free port,
    /// and a case's own configuration is refused before listening).
    fn defaults(&self, subcommand: &str) -> Vec<(&'static str, String)> {
        match subcommand {
            "daemon" => vec![
                ("--config", self.path("loopback.toml")),
                ("--socket", self.path("daemon.sock")),
            ],
            "snapshot" | "ps" => vec![("--socket", self.path("absent.sock"))],
            _ => Vec::new(),
        }
    }

    /// The case's arguments with the defaults it does not override.
    fn command_line(&self, case: &Case) -> Vec<String> {
        let Some((subcommand, rest)) = case.args.split_first() else {
            return Vec::new();
        };
        let mut line = vec![subcommand.clone()];
        for (flag, value) in self.defaults(subcommand) {
            if !rest.iter().any(|a| names_flag(a, flag)) {
                line.extend([flag.to_owned(), value]);
            }
        }
        line.extend(rest.iter().cloned());
        line
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the argument `arg` is the flag `name` (`--top`, `--top=0`, `-o`).
fn names_flag(arg: &str, name: &str) -> bool {
    arg == name
        || arg
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('='))
}

#[rustfmt::skip]
fn top_level_cases() -> Vec<Case> {
    let mut cases = vec![
        case(&["frobnicate"], 2, &["unrecognized subcommand 'frobnicate'"]),
        case(&["--frobnicate"], 2, &["unexpected argument '--frobnicate'"]),
        case(&["--help=yes"], 2, &["unexpected value 'yes' for '--help'"]),
        case(&["--version=yes"], 2, &["unexpected value 'yes' for '--version'"]),
        case(&["help", "frobnicate"], 2, &["unrecognized subcommand 'frobnicate'"]),
    ];
    for sub in ["daemon", "snapshot", "ps", "record", "floor"] {
        cases.push(case(&[sub, "--help=yes"], 2, &["unexpected value 'yes' for '--help'"]));
        cases.push(case(&[sub, "--frobnicate"], 2, &["unexpected argument '--frobnicate'"]));
    }
    cases
}

#[rustfmt::skip]
fn daemon_cases(s: &Scratch) -> Vec<Case> {
    let (absent, dir, precious) = (s.path("absent.toml"), s.path(""), s.path("precious"));
    let busy = s.busy_address();
    let long_socket = s.path(&"s".repeat(108));
    let under_a_file = s.path("precious/api.sock");
    let window = ["window: must span from 3 to 1000 ticks", "change tick or window"];
    let listen = ["listen: `", "is not IP:PORT (for example 127.0.0.1:9465"];
    [
        vec![
            case(&["daemon", "--config", &absent], 1, &[&absent, "No such file or directory"]),
            case(&["daemon", "--config", &dir], 1, &["read the configuration", "Is a directory"]),
            case(&["daemon", "--config"], 2, &["a value is required for '--config <FILE>'"]),
            case(&["daemon", "--listen", &busy], 1, &[&busy, "Address already in use", "--listen ADDR:PORT"]),
            case(&["daemon", "--listen", "192.0.2.1:9465"], 1, &["Cannot assign requested address"]),
            case(&["daemon", "--listen", "localhost:9465"], 1, &["host names are not looked up"]),
            case(&["daemon", "--tick", "0s"], 1, &["tick: must be longer than 0"]),
            case(&["daemon", "--tick", "1ms"], 1, &window),
            case(&["daemon", "--tick", "18446744073709551615s"], 1, &["tick: ", "is too long (at most 5124095h"]),
            case(&["daemon", "--tick", "1s", "--window", "2h"], 1, &window),
            case(&["daemon", "--window", "99999999999999999999h"], 1, &["window: ", "is too long"]),
            case(&["daemon", "--scope", "all", "--scope", "comm:x"], 1, &["cannot be combined"]),
            case(&["daemon", "--check=yes"], 2, &["unexpected value 'yes' for '--check'"]),
            case(&["daemon", "--libc"], 2, &["a value is required for '--libc <PATH>'"]),
            case(&["daemon", "--socket", &precious], 1, &["bind the API socket", "not a socket", "--socket PATH"]),
            case(&["daemon", "--socket", &dir], 1, &["not a socket"]),
            case(&["daemon", "--state-dir", &precious], 1, &["state_dir: `", "is not a directory"]),
            case(&["daemon", "--socket", &s.path("live.sock")], 1, &["a heapwatch daemon already answers there"]),
            case(&["daemon", "--socket", &long_socket], 1, &["at most 107 bytes"]),
            case(&["daemon", "--socket", &under_a_file], 1, &["Not a directory"]),
        ],
        each(["daemon", "--listen"], &["localhost", "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1", "[::1]", ""], &[], 1, &listen),
        each(["daemon", "--tick"], &["0", "-1s", "fast", "1.5s", "5 s"], &[], 1, &["tick: `", DURATION_SYNTAX]),
        each(["daemon", "--window"], &["10", "-10m", "ten"], &[], 1, &["window: `", DURATION_SYNTAX]),
        each(["daemon", "--window"], &["0s", "20s"], &[], 1, &window),
        each(["daemon", "--min-age"], &["abc", "-5m", "5", "5d"], &[], 1, &["min_age: `", DURATION_SYNTAX]),
        each(["daemon", "--top"], &["0", "-1", "x", "1.5", "4294967296"], &[], 2, &["'--top <K>'", "must be a whole number from 1 to 4294967295"]),
        each(["daemon", "--max-allocations"], &["0", "-1", "x", "18446744073709551616"], &[], 2, &["'--max-allocations <N>'", "from 1 to 18446744073709551615"]),
        each(["daemon", "--max-allocations-per-process"], &["0", "-5", "1e6"], &[], 2, &["'--max-allocations-per-process <N>'", "from 1 to"]),
        each(["daemon", "--ring-kib"], &["1000", "2", "0", "2097152", "4294967296", "-4", "x"], &[], 2, &["'--ring-kib <KIB>'", "power of two from 4 to 1048576"]),
        each(["daemon", "--stack-sample"], &["0", "1000001", "-1", "x", "4294967296"], &[], 2, &["'--stack-sample <N>'", "from 1 (every allocation) to 1000000"]),
        each(["daemon", "--thread-slots"], &["0", "3", "131072", "-1", "x", "4294967296"], &[], 2, &["'--thread-slots <N>'", "power of two from 1 to 65536"]),
        each(["daemon", "--scope"], &["nginx", ""], &[], 1, &["scope: scope `", "is not `all`, `tiered`, `pid:N`, `comm:NAME`"]),
        each(["daemon", "--scope"], &["tiered"], &["--scope", "all"], 1, &["cannot be combined with `tiered`"]),
        each(["daemon", "--trace-for"], &["ten", "-5m", "5"], &[], 1, &["trace_for: `", DURATION_SYNTAX]),
        each(["daemon", "--trace-for"], &["500ms", "0s"], &[], 1, &["trace_for: must be at least a tick"]),
        each(["daemon", "--max-overhead"], &["0", "-5", "1001", "NaN", "inf"], &[], 1, &["max_overhead: must be a percentage above 0 and at most 1000"]),
        each(["daemon", "--max-overhead"], &["x", "5%"], &[], 2, &["'--max-overhead <PERCENT>'"]),
        each(["daemon", "--state-dir"], &["var/lib/heapwatch", "."], &[], 1, &["state_dir: must be an absolute path"]),
        each(["daemon", "--scope"], &["pid:0", "pid:x", "pid:-1", "pid:4294967296"], &[], 1, &["a PID is a whole number from 1"]),
        each(["daemon", "--scope"], &["comm:"], &[], 1, &["the command name is empty"]),
        each(["daemon", "--scope"], &["comm:sixteen_bytes_xx"], &[], 1, &["at most 15 bytes"]),
        each(["daemon", "--scope"], &["unit:"], &[], 1, &["the unit name is empty"]),
        each(["daemon", "--scope"], &["cgroup:system.slice"], &[], 1, &["a cgroup is an absolute path"]),
    ]
    .concat()
}

/// `heapwatch daemon --config FILE` for files that are not TOML, or not
/// heapwatch's: a file the parser refuses is named with the line at fault
/// (and so its key); a value out of range is named by its key.
#[rustfmt::skip]
fn config_cases(s: &Scratch) -> Vec<Case> {
    let not_utf8 = s.file("not-utf8.toml", b"\xff\xfe", 0o644);
    let mut cases = vec![case(&["daemon", "--config", &not_utf8], 1, &[&not_utf8, "valid UTF-8"])];
    for (contents, says) in [
        ("tick = \"5s", &["line 1, `tick = \"5s`", "expected `\"`"][..]),
        ("tikc = \"5s\"", &["line 1", "unknown field `tikc`, expected one of `listen`"]),
        ("[daemon]\ntick = \"5s\"", &["line 1, `[daemon]`", "unknown field `daemon`"]),
        ("tick = 5", &["line 1, `tick = 5`", "expected a string"]),
        ("top_processes = \"20\"", &["line 1, `top_processes = \"20\"`", "invalid type"]),
        ("top_processes = -1", &["line 1, `top_processes = -1`", "invalid value"]),
        ("ring_kib = 4294967296", &["line 1, `ring_kib = 4294967296`", "invalid value"]),
        ("max_allocations = 1e9", &["line 1, `max_allocations = 1e9`", "invalid type"]),
        ("max_allocations = 99999999999999999999", &["line 1, `max_allocations = 99999999999999999999`"]),
        ("scope = \"all\"", &["line 1, `scope = \"all\"`", "expected a sequence"]),
        ("libc = 5", &["line 1, `libc = 5`", "invalid type"]),
        ("tick = \"1s\"\ntick = \"2s\"", &["line 2, `tick = \"2s\"`", "duplicate key"]),
    ] {
        let path = s.config(contents);
        cases.push(case(&["daemon", "--config", &path], 1, &[&[path.as_str()][..], says].concat()));
    }
    for (contents, says) in [
        ("top_processes = 0", "top_processes: must be at least 1"),
        ("max_allocations = 0", "max_allocations: must be at least 1"),
        ("max_allocations_per_process = 0", "max_allocations_per_process: must be at least 1"),
        ("ring_kib = 3", "ring_kib: must be a power of two from 4 to 1048576"),
        ("ring_kib = 2097152", "ring_kib: must be a power of two from 4 to 1048576"),
        ("stack_sample = 0", "stack_sample: must be a whole number from 1 (every allocation) to 1000000"),
        ("stack_sample = 1000001", "stack_sample: must be a whole number from 1 (every allocation) to 1000000"),
        ("thread_slots = 0", "thread_slots: must be a power of two from 1 to 65536"),
        ("thread_slots = 100", "thread_slots: must be a power of two from 1 to 65536"),
        ("tick = \"0s\"", "tick: must be longer than 0"),
        ("tick = \"fast\"", "tick: `fast` does not start with a whole number"),
        ("window = \"99999999999999999999h\"", "window: `99999999999999999999h` is too long"),
        ("window = \"10s\"", "window: must span from 3 to 1000 ticks"),
        ("min_age = \"5 days\"", "min_age: `5 days`: unknown unit ` days`"),
        ("listen = \"localhost\"", "listen: `localhost` is not IP:PORT"),
        ("scope = [\"nginx\"]", "scope: scope `nginx` is not `all`"),
        ("scope = [\"all\", \"comm:x\"]", "scope: scope `all` cannot be combined with selectors"),
    ] {
        let path = s.config(contents);
        cases.push(case(&["daemon", "--config", &path], 1, &["invalid configuration", says]));
    }
    cases
}

#[rustfmt::skip]
fn snapshot_cases(s: &Scratch) -> Vec<Case> {
    let (absent_pid, kthread) = (pid_max().to_string(), kernel_thread().to_string());
    let (no_dir, dir, absent) = (s.path("absent/out"), s.path(""), s.path("absent.sock"));
    let no_such_process = format!("no such process: {absent_pid}");
    let pid = ["--pid", "1"];
    [
        vec![
            case(&["snapshot"], 2, &["required arguments were not provided", "--pid <PID>"]),
            case(&["snapshot", "--pid"], 2, &["a value is required for '--pid <PID>'"]),
            case(&["snapshot", "--pid", &absent_pid], 1, &[&no_such_process]),
            case(&["snapshot", "--pid", &absent_pid, "--duration", "1s"], 1, &[&no_such_process]),
            case(&["snapshot", "--pid", &kthread], 1, &[&format!("process {kthread} is a kernel thread: it has no heap")]),
            case(&["snapshot", "--pid", &kthread, "--duration", "1s"], 1, &["is a kernel thread: it has no heap"]),
            case(&["snapshot", "--pid", "1", "--format", "pprof"], 2, &["--format pprof needs -o FILE"]),
            case(&["snapshot", "--pid", "1", "-o", &no_dir], 1, &[&format!("write to {no_dir}"), "No such file or directory"]),
            case(&["snapshot", "--pid", "1", "-o", &dir], 1, &["it is a directory: name a file"]),
            case(&["snapshot", "--pid", "1", "--socket", &absent], 1, &[&absent, NOT_RUNNING[0], NOT_RUNNING[1]]),
            case(&["snapshot", "--pid", "1", "--socket", &s.path("precious")], 1, &NOT_RUNNING),
            case(&["snapshot", "--pid", "1", "--socket"], 2, &["a value is required for '--socket <PATH>'"]),
        ],
        each(["snapshot", "--pid"], &["0", "-1", "abc", "1.5", "4294967296", "99999999999999999999999"], &[], 2, &["'--pid <PID>'", "must be a whole number from 1 to 4294967295"]),
        each(["snapshot", "--top"], &["0", "-1", "x", "4294967296"], &pid, 2, &["'--top <K>'", "must be a whole number from 1 to 4294967295"]),
        each(["snapshot", "--min-age"], &["x", "-5m", "5", "5d"], &pid, 2, &["'--min-age <DURATION>'", DURATION_SYNTAX]),
        each(["snapshot", "--min-age"], &["99999999999999999999h"], &pid, 2, &["'--min-age <DURATION>'", "is too long (at most 5124095h"]),
        each(["snapshot", "--duration"], &["0s", "0ms"], &pid, 2, &["'--duration <DURATION>'", "must be longer than 0"]),
        each(["snapshot", "--duration"], &["0", "-1s", "soon", "1.5s"], &pid, 2, &["'--duration <DURATION>'", DURATION_SYNTAX]),
        each(["snapshot", "--duration"], &["18446744073709551615s"], &pid, 2, &["'--duration <DURATION>'", "is too long"]),
        each(["snapshot", "--format"], &["svg", "JSON", ""], &pid, 2, &["'--format <FORMAT>'", "[possible values: text, json, pprof, flamegraph]"]),
        each(["snapshot", "--since"], &["0s"], &pid, 2, &["'--since <DURATION>'", "must be longer than 0"]),
        each(["snapshot", "--since"], &["0", "-1s", "soon"], &pid, 2, &["'--since <DURATION>'", DURATION_SYNTAX]),
        vec![
            case(&["snapshot", "--pid", "1", "--since", "1m", "--duration", "1s"], 2, &["'--since <DURATION>' cannot be used with '--duration <DURATION>'"]),
            case(&["snapshot", "--pid", "1", "--since", "1m", "--socket", &absent], 1, &[&absent, NOT_RUNNING[0]]),
            case(&["snapshot", "--pid", "1", "--from", &absent], 2, &["'--pid <PID>' cannot be used with '--from <FILE>'"]),
            case(&["snapshot", "--from", &absent, "--since", "1m"], 2, &["'--from <FILE>' cannot be used with '--since <DURATION>'"]),
            case(&["snapshot", "--from", &absent], 1, &[&format!("read the saved snapshot {absent}"), "No such file or directory"]),
            case(&["snapshot", "--pid", "1", "--base", &absent], 1, &[&format!("read the saved snapshot {absent}"), "No such file or directory"]),
            case(&["snapshot", "--from", &s.path("precious")], 1, &["read the saved snapshot", "--format json or --format pprof"]),
            case(&["snapshot", "--from"], 2, &["a value is required for '--from <FILE>'"]),
        ],
    ]
    .concat()
}

#[rustfmt::skip]
fn ps_cases(s: &Scratch) -> Vec<Case> {
    vec![
        case(&["ps", "--socket", &s.path("absent.sock")], 1, &NOT_RUNNING),
        case(&["ps", "--socket", &s.path("precious")], 1, &NOT_RUNNING),
        case(&["ps", "--socket", &s.path("")], 1, &NOT_RUNNING),
        case(&["ps", "--socket"], 2, &["a value is required for '--socket <PATH>'"]),
        case(&["ps", "123"], 2, &["unexpected argument '123'"]),
        case(&["ps", "--all", "--socket", &s.path("absent.sock")], 1, &NOT_RUNNING),
        case(&["ps", "--all=yes"], 2, &["unexpected value 'yes' for '--all'"]),
    ]
}

#[rustfmt::skip]
fn record_cases(s: &Scratch) -> Vec<Case> {
    let (no_dir, dir, not_executable) = (s.path("absent/report"), s.path(""), s.path("not-executable"));
    let cannot_write = [&format!("write the report to {no_dir}"), "No such file or directory"];
    let run = ["--", "true"];
    [
        vec![
            case(&["record"], 2, &["required arguments were not provided", "<CMD>"]),
            case(&["record", "--"], 2, &["required arguments were not provided", "<CMD>"]),
            case(&["record", "true"], 2, &["unexpected argument 'true'", "-- <CMD>..."]),
            case(&["record", "--", "no-such-command-heapwatch"], 127, &["no-such-command-heapwatch: command not found"]),
            case(&["record", "--", ""], 127, &["the command is an empty string"]),
            case(&["record", "--", &not_executable], 127, &[&format!("{not_executable}: not an executable file")]),
            case(&["record", "--", &dir], 127, &["not an executable file"]),
            case(&["record", "--follow-forks=yes", "--", "true"], 2, &["unexpected value 'yes' for '--follow-forks'"]),
            case(&["record", "--json", &no_dir, "--", "true"], 1, &cannot_write),
            case(&["record", "--json", &dir, "--", "true"], 1, &["write the report to", "it is a directory: name a file"]),
            case(&["record", "-o", &no_dir, "--", "true"], 1, &cannot_write),
            case(&["record", "-o", &dir, "--", "true"], 1, &["it is a directory: name a file"]),
            case(&["record", "--format", "json", "--", "true"], 2, &["--format json needs -o FILE"]),
            case(&["record", "--libc", "--", "true"], 2, &["a value is required for '--libc <PATH>'"]),
        ],
        each(["record", "--format"], &["svg", "html"], &run, 2, &["'--format <FORMAT>'", "[possible values: text, json, pprof, flamegraph]"]),
        each(["record", "--top"], &["0", "-1", "x", "99999999999"], &run, 2, &["'--top <K>'", "must be a whole number from 1 to 4294967295"]),
        each(["record", "--ring-kib"], &["1000", "2", "2097152", "-4", "x", "4294967296"], &run, 2, &["'--ring-kib <KIB>'", "power of two from 4 to 1048576"]),
        each(["record", "--stack-sample"], &["0", "1000001", "-1", "x"], &run, 2, &["'--stack-sample <N>'", "from 1 (every allocation) to 1000000"]),
        each(["record", "--thread-slots"], &["0", "6", "65537", "-2", "x"], &run, 2, &["'--thread-slots <N>'", "power of two from 1 to 65536"]),
    ]
    .concat()
}

#[rustfmt::skip]
fn floor_cases() -> Vec<Case> {
    vec![
        case(&["floor"], 2, &["required arguments were not provided", "<CMD>"]),
        case(&["floor", "--", "no-such-command-heapwatch"], 127, &["no-such-command-heapwatch: command not found"]),
        case(&["floor", "--at-entry=yes", "--", "true"], 2, &["unexpected value 'yes' for '--at-entry'"]),
        case(&["floor", "--libc", "--", "true"], 2, &["a value is required for '--libc <PATH>'"]),
    ]
}

/// Cases that get past heapwatch's check of its privileges (or run as
/// another user): they need root.
#[rustfmt::skip]
fn root_cases(s: &Scratch) -> Vec<Case> {
    let (absent, dir, not_elf) = (s.path("absent.so"), s.path(""), s.path("precious"));
    let libc_in_config = s.config(&format!("libc = \"{absent}\""));
    let missing = [&format!("allocator library {absent} does not exist"), "--libc PATH"];
    let not_a_file = ["is not a file", "--libc PATH"];
    let unreadable = Case {
        as_nobody: true,
        ..case(&["daemon", "--config", &s.path("unreadable.toml")], 1, &["read the configuration", "Permission denied"])
    };
    vec![
        unreadable,
        case(&["daemon", "--libc", &absent], 1, &missing),
        case(&["daemon", "--libc", &dir], 1, &not_a_file),
        case(&["daemon", "--config", &libc_in_config], 1, &missing),
        case(&["record", "--libc", &absent, "--", "true"], 1, &missing),
        case(&["record", "--libc", &dir, "--", "true"], 1, &not_a_file),
        case(&["record", "--libc", &not_elf, "--", "true"], 1, &["read the symbols of", "ELF shared object"]),
        case(&["record", "--", &s.path("no-shebang")], 127, &["Exec format error"]),
        case(&["floor", "--libc", &absent, "--", "true"], 1, &missing),
    ]
}

/// Every case that needs no privilege: heapwatch refuses them first.
fn unprivileged_cases(s: &Scratch) -> Vec<Case> {
    [
        top_level_cases(),
        daemon_cases(s),
        config_cases(s),
        snapshot_cases(s),
        ps_cases(s),
        record_cases(s),
        floor_cases(),
    ]
    .concat()
}

/// The highest PID plus one: no process has it.
fn pid_max() -> u32 {
    let text = fs::read_to_string("/proc/sys/kernel/pid_max").expect("read pid_max");
    text.trim().parse().expect("pid_max is a number")
}

/// A kernel thread: kthreadd (PID 2) where it is visible, else the first found.
fn kernel_thread() -> u32 {
    let is_kernel_thread = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(") ")?
                    .1
                    .split(' ')
                    .nth(6)?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|flags| flags & PF_KTHREAD != 0)
    };
    let pids = fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok());
    std::iter::once(2)
        .chain(pids)
        .find(|&pid| is_kernel_thread(pid))
        .expect("no kernel thread in /proc")
}

/// Runs heapwatch (as user nobody if asked), killing it if it has not
/// answered by the deadline.
fn run(args: &[String], as_nobody: bool, marker: &str) -> Output {
    let mut command = if as_nobody {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_heapwatch"));
        setpriv
    } else {
        heapwatch()
    };
    let mut child = command
        .args(args)
        .env(CASE_MARKER, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run heapwatch");
    let started = Instant::now();
    while child.try_wait().expect("wait for heapwatch").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("heapwatch {args:?} did not answer within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("heapwatch's output")
}

/// Processes still carrying a case's marker in their environment: heapwatch
/// itself, a child it forked, a command it started.
fn left_behind(marker: &str) -> Vec<u32> {
    let entry = format!("{CASE_MARKER}={marker}");
    fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

/// Asserts heapwatch's answer: the exit code, the words, no panic, a few
/// lines of error and nothing on stdout.
fn assert_refused(case: &Case, output: &Output) {
    let shown = format!("heapwatch {:?}", case.args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(case.code),
        "{shown}: {}:\n{stderr}",
        output.status
    );
    for sign in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(sign), "{shown}: {sign}:\n{stderr}");
    }
    for word in &case.words {
        assert!(
            stderr.contains(word.as_str()),
            "{shown}: the error does not say `{word}`:\n{stderr}"
        );
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("error: ") || l.starts_with("heapwatch: ")),
        "{shown}: the error does not come first:\n{stderr}"
    );
    assert!(
        lines.len() <= MAX_ERROR_LINES,
        "{shown}: {} lines of error:\n{stderr}",
        lines.len()
    );
    assert!(
        output.stdout.is_empty(),
        "{shown}: printed {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Runs every case and checks that each left nothing behind: no process, no
/// change in the scratch directory, and (as root) no BPF program or link.
/// One table runs at a time.
fn refuse_all(cases: &[Case], scratch: &Scratch) {
    let _alone = ONE_TABLE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let bpf = root.then(BpfBaseline::take);
    let files = scratch.listing();
    for case in cases {
        let marker = format!(
            "{}-{}",
            std::process::id(),
            NEXT_MARKER.fetch_add(1, Ordering::Relaxed)
        );
        let output = run(&scratch.command_line(case), case.as_nobody, &marker);
        assert_refused(case, &output);
        let processes = left_behind(&marker);
        assert!(
            processes.is_empty(),
            "heapwatch {:?} left processes {processes:?}",
            case.args
        );
        assert_eq!(
            scratch.listing(),
            files,
            "heapwatch {:?} changed the scratch files",
            case.args
        );
        if let Some(bpf) = &bpf {
            bpf.assert_nothing_left();
        }
    }
}

#[test]
fn bad_input_is_refused_clearly_before_anything_is_traced() {
    let scratch = Scratch::create();
    let started = Instant::now();
    let cases = unprivileged_cases(&scratch);
    refuse_all(&cases, &scratch);
    eprintln!("{} cases refused in {:?}", cases.len(), started.elapsed());
}

#[test]
#[ignore = "needs root"]
fn bad_input_past_the_privilege_check_is_refused_and_leaves_nothing_attached() {
    let scratch = Scratch::create();
    refuse_all(&root_cases(&scratch), &scratch);
}

#[test]
fn heapwatch_alone_shows_its_usage() {
    let output = heapwatch().output().expect("run heapwatch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Usage: heapwatch <COMMAND>") && stderr.contains("Commands:"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// mimalloc commits arena memory as it is used (what it frees then leaves
/// the resident set): the option is set, under its name, before mimalloc
/// reserves its first arena.
#[test]
fn heapwatch_has_its_allocator_commit_memory_on_use() {
    let output = heapwatch()
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .expect("run heapwatch --version");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let option = stderr
        .find("option 'arena_eager_commit': 0")
        .unwrap_or_else(|| panic!("eager commit still on: {stderr}"));
    let reserved = stderr
        .find("mimalloc: reserved")
        .unwrap_or_else(|| panic!("no arena reserved: {stderr}"));
    assert!(
        option < reserved,
        "the option came after the first arena: {stderr}"
    );
}

/// heapwatch's subcommands: those `--help` lists and the hidden ones.
fn subcommands() -> Vec<String> {
    let help = help_text("");
    let listed = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned));
    listed
        .chain(HIDDEN_SUBCOMMANDS.map(str::to_owned))
        .collect()
}

/// `heapwatch SUBCOMMAND --help` (`heapwatch --help` for "").
fn help_text(subcommand: &str) -> String {
    let output = heapwatch()
        .args((!subcommand.is_empty()).then_some(subcommand))
        .arg("--help")
        .output()
        .expect("run heapwatch --help");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The options a help text lists, each as its names (`-o`, `--output`): the
/// lines indented at most 6 columns that start with a dash (descriptions are
/// indented further).
fn options(help: &str) -> Vec<Vec<String>> {
    help.lines()
        .filter(|line| line.len() - line.trim_start().len() <= 6)
        .filter_map(|line| {
            let names: Vec<String> = line
                .trim_start()
                .split("  ")
                .next()?
                .split(", ")
                .filter_map(|name| name.split(' ').next())
                .filter(|name| is_flag_name(name))
                .map(str::to_owned)
                .collect();
            (!names.is_empty()).then_some(names)
        })
        .collect()
}

/// Whether the case gives the flag by any of its names.
fn gives_flag(case: &Case, names: &[String]) -> bool {
    case.args
        .iter()
        .any(|arg| names.iter().any(|name| names_flag(arg, name)))
}

fn is_flag_name(name: &str) -> bool {
    let bare = name.trim_start_matches('-');
    let dashes = name.len() - bare.len();
    matches!(dashes, 1 | 2) && bare.starts_with(|c: char| c.is_ascii_alphabetic())
}

#[test]
fn every_flag_of_every_subcommand_has_a_case() {
    let scratch = Scratch::create();
    let cases = [unprivileged_cases(&scratch), root_cases(&scratch)].concat();
    let subcommands = subcommands();
    let subcommand_of = |case: &Case| match case.args.first() {
        Some(first) if subcommands.contains(first) => first.clone(),
        _ => String::new(),
    };
    let mut missing = Vec::new();
    for sub in std::iter::once(String::new()).chain(subcommands.iter().cloned()) {
        let mine: Vec<&Case> = cases.iter().filter(|c| subcommand_of(c) == sub).collect();
        if mine.is_empty() {
            missing.push(format!("heapwatch {sub} (no case at all)"));
        }
        for names in options(&help_text(&sub)) {
            let covered = mine.iter().any(|case| gives_flag(case, &names));
            if !covered {
                missing.push(format!("heapwatch {sub} {}", names.join(", ")));
            }
        }
    }
    assert!(
        subcommands.len() > HIDDEN_SUBCOMMANDS.len(),
        "no subcommand found in heapwatch --help"
    );
    assert!(
        missing.is_empty(),
        "flags without a bad-input case in tests/cli.rs: {missing:?}"
    );
}

#[test]
fn a_daemon_that_may_open_too_few_files_refuses_to_start_in_one_line() {
    let s = Scratch::create();
    let output = Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_heapwatch"))
        .args(s.command_line(&case(&["daemon"], 1, &[])))
        .output()
        .expect("run prlimit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    for words in ["needs at least 1024 open files", "only 64", "LimitNOFILE="] {
        assert!(stderr.contains(words), "{words:?} in {stderr}");
    }
}
