//! Every process on the host, whatever its allocator and wherever its
//! libc: the daemon at its defaults traces programs linked with jemalloc,
//! under a preloaded tcmalloc or mimalloc, static musl builds and a
//! container's own copy of libc (a chroot), exactly; it lists what it
//! cannot trace, and why.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    BpfBaseline, Workload, c_fixture_with, config_file,
    daemon::{Daemon, Metrics},
    fixture, functions, heapwatch,
    process::{Gated, breakpoint_in, eventually, snapshot_json},
    tempfile_path,
};

/// The leak rule's settings for tests: seconds, not minutes.
const FAST: [&str; 6] = ["--tick", "1s", "--window", "6s", "--min-age", "3s"];

/// A root of its own, as a container image has: a copy of the workload
/// and of the C library and dynamic linker it needs (other inodes than the
/// host's). Removed when dropped.
struct OwnRoot(PathBuf);

impl OwnRoot {
    fn with_program(program: &Path) -> Self {
        let root = tempfile_path("root");
        fs::create_dir_all(&root).expect("create the root");
        let own = Self(root);
        own.copy(program, Path::new("/workload"));
        for library in libraries_of(program) {
            own.copy(&library, &library);
        }
        own
    }

    fn copy(&self, from: &Path, to: &Path) {
        let target = self.0.join(to.strip_prefix("/").unwrap_or(to));
        fs::create_dir_all(target.parent().expect("a parent")).expect("create the directory");
        fs::copy(from, &target).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for OwnRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The libraries `ldd` says `program` loads, by absolute path.
fn libraries_of(program: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(program).output().expect("run ldd");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// One way of running the workload: a name, the command before the
/// workload's mode, and the environment added.
struct Case {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

impl Case {
    fn start(&self, mode: &str) -> Workload {
        let mut args: Vec<&str> = self.command[1..].iter().map(String::as_str).collect();
        args.push(mode);
        Workload::start_env(Path::new(&self.command[0]), &args, &self.env)
    }
}

fn cases(root: &OwnRoot) -> Vec<Case> {
    let path = |p: PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let glibc = path(fixture("workload"));
    let jemalloc = path(c_fixture_with(
        "workload",
        "workload_jemalloc",
        "gcc",
        &["-pthread", "-ljemalloc"],
    ));
    let musl = path(c_fixture_with(
        "workload",
        "workload_musl_static",
        "musl-gcc",
        &["-pthread", "-static"],
    ));
    let plain = |name, program: &String, env| Case {
        name,
        command: vec![program.clone()],
        env,
    };
    vec![
        plain("glibc", &glibc, vec![]),
        plain("jemalloc", &jemalloc, vec![]),
        plain(
            "tcmalloc",
            &glibc,
            vec![("LD_PRELOAD", "libtcmalloc_minimal.so.4")],
        ),
        plain("mimalloc", &glibc, vec![("LD_PRELOAD", "libmimalloc.so.2")]),
        plain("static musl", &musl, vec![]),
        Case {
            name: "own root",
            command: vec![
                "chroot".to_owned(),
                root.path().to_owned(),
                "/workload".to_owned(),
            ],
            env: vec![],
        },
    ]
}

/// The site holding exactly `blocks` blocks in a snapshot, if any.
fn site_with_blocks(snapshot: &Value, blocks: u64) -> Option<&Value> {
    snapshot["sites"]
        .as_array()?
        .iter()
        .find(|site| site["live_blocks"].as_u64() == Some(blocks))
}

#[test]
#[ignore = "needs root"]
fn every_allocator_and_a_roots_own_libc_are_traced_exactly() {
    let root = OwnRoot::with_program(&fixture("workload"));
    let cases = cases(&root);
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(
        &config_file(""),
        &[&FAST[..], &["--socket", socket_arg, "--top", "100"]].concat(),
    );
    let started = Instant::now();
    // The leak first: the first process of a file heapwatch has not seen
    // may be traced from a little after it starts (and says so); the
    // others then find the file attached.
    let leaks: Vec<Workload> = cases.iter().map(|case| case.start("leak")).collect();
    thread::sleep(Duration::from_millis(500));
    let constants: Vec<Workload> = cases.iter().map(|case| case.start("constant")).collect();
    let freed: Vec<Workload> = cases.iter().map(|case| case.start("freed")).collect();
    thread::sleep(Duration::from_secs(2));

    for (i, case) in cases.iter().enumerate() {
        let name = case.name;
        let leak = snapshot_json(&socket, leaks[i].pid()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Not always the first site: a C++ runtime the allocator loads
        // holds its exception pool (jemalloc, tcmalloc).
        let site = leak["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|site| functions(site).first().is_some_and(|f| f == "leak_step"))
            .unwrap_or_else(|| panic!("{name}: no site in leak_step: {leak}"));
        assert_eq!(
            functions(site)[..2],
            ["leak_step", "main"],
            "{name}: {site}"
        );
        let blocks = site["live_blocks"].as_u64().expect("blocks");
        assert!(blocks >= 10, "{name}: a leak every 100 ms for 2 s: {site}");
        assert_eq!(
            site["live_bytes"].as_u64(),
            Some(1024 * blocks),
            "{name}: {site}"
        );

        let constant =
            snapshot_json(&socket, constants[i].pid()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            constant["attached_late"], false,
            "{name}: traced from its start"
        );
        let held = site_with_blocks(&constant, 100)
            .unwrap_or_else(|| panic!("{name}: no site of 100 blocks: {constant}"));
        assert_eq!(
            held["live_bytes"].as_u64(),
            Some(1_000_000),
            "{name}: {held}"
        );
        assert!(
            functions(held).iter().any(|f| f == "main"),
            "{name}: {held}"
        );

        let gone = snapshot_json(&socket, freed[i].pid()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            gone["allocs"].as_u64().is_some_and(|n| n >= 100),
            "{name}: the frees were traced: {gone}"
        );
        let of_main = gone["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|site| functions(site).iter().any(|f| f == "main"))
            .count();
        assert_eq!(
            of_main, 0,
            "{name}: everything the program allocated is freed: {gone}"
        );
    }

    // Past a window and the minimum age: the leaks are suspects, nothing else is.
    let remaining = Duration::from_secs(10).saturating_sub(started.elapsed());
    thread::sleep(remaining);
    let m: Metrics = daemon.scrape_until(Duration::from_secs(6), |m| {
        leaks.iter().all(|w| {
            m.process("heapwatch_process_leak_suspect_bytes", w.pid())
                .unwrap_or(0.0)
                > 0.0
        })
    });
    let suspect = |pid| {
        m.process("heapwatch_process_leak_suspect_bytes", pid)
            .unwrap_or(0.0)
    };
    for (i, case) in cases.iter().enumerate() {
        assert!(
            suspect(leaks[i].pid()) > 0.0,
            "{}: the leak is suspect",
            case.name
        );
        assert_eq!(
            suspect(constants[i].pid()),
            0.0,
            "{}: holding is not leaking",
            case.name
        );
        assert_eq!(
            suspect(freed[i].pid()),
            0.0,
            "{}: freed is not leaking",
            case.name
        );
    }
    assert_eq!(
        m.labelled("heapwatch_processes", "reason", "attach_failed"),
        0.0
    );

    drop((leaks, constants, freed));
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn what_cannot_be_traced_is_listed_with_its_reason() {
    let stripped = c_fixture_with(
        "workload",
        "workload_musl_stripped",
        "musl-gcc",
        &["-pthread", "-static", "-s"],
    );
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(&config_file(""), &["--socket", socket_arg, "--tick", "1s"]);
    let untraced = Workload::start(&stripped, "constant");
    let traced = Workload::start(&fixture("workload"), "constant");
    let ps = |all: bool| {
        let mut command = heapwatch();
        command.args(["ps", "--socket", socket_arg]);
        if all {
            command.arg("--all");
        }
        let output = command.output().expect("run heapwatch ps");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let line_of = |text: &str, pid: u32| {
        text.lines()
            .find(|line| line.split_whitespace().next() == Some(&pid.to_string()))
            .map(str::to_owned)
    };
    let all = ps(true);
    let listed = line_of(&all, untraced.pid()).unwrap_or_else(|| panic!("not listed:\n{all}"));
    assert!(listed.contains("stripped_static"), "{listed}");
    assert!(
        line_of(&ps(false), untraced.pid()).is_none(),
        "not among the traced"
    );
    assert!(
        line_of(&all, traced.pid()).is_some_and(|l| l.contains("1000000")),
        "{all}"
    );
    let m = daemon.scrape_until(Duration::from_secs(5), |m| {
        m.labelled("heapwatch_processes", "reason", "stripped_static") >= 1.0
    });
    assert!(m.labelled("heapwatch_processes", "reason", "stripped_static") >= 1.0);
    assert!(m.labelled("heapwatch_processes", "state", "traced") >= 1.0);
    drop((untraced, traced));
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

/// podman, run in a mount namespace of its own: its state under /tmp, its
/// runtime's under a private /run and /var/lib, so nothing outlives the
/// test. The script builds an image from `context` and runs one container
/// a mode, printing "MODE PID" as each says it is ready, then "started";
/// at end of input it removes them and the image.
const PODMAN_SESSION: &str = r#"
set -eu
mount -t tmpfs heapwatch-test /run
mount -t tmpfs heapwatch-test /var/lib
P="podman --root $DIR/root --runroot $DIR/runroot --tmpdir $DIR/tmp --network-config-dir $DIR/net --cgroup-manager=cgroupfs --events-backend=file --storage-driver=overlay --runtime=runc"
$P build -q --network none -t localhost/heapwatch-test:workload "$DIR/context" >/dev/null
for mode in $MODES; do
  $P run -d --name "hw-$mode" --network none --cgroup-parent "$CGROUP" \
    --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" \
    localhost/heapwatch-test:workload "$mode" >/dev/null
  until $P logs "hw-$mode" 2>/dev/null | grep -q ready; do sleep 0.05; done
  echo "$mode $($P inspect --format '{{.State.Pid}}' "hw-$mode")"
done
echo started
cat >/dev/null
for mode in $MODES; do $P rm -f -t 0 "hw-$mode" >/dev/null; done
$P rmi -af >/dev/null
$P system reset -f >/dev/null 2>&1
"#;

/// Containers of an image holding the workload and its own libc, run by podman.
struct Containers {
    session: std::process::Child,
    dir: PathBuf,
    cgroup: String,
    /// (mode, host PID) of each container's process.
    pids: Vec<(String, u32)>,
}

impl Containers {
    fn run(modes: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = tempfile_path("podman");
        let context = OwnRoot::with_program(&fixture("workload"));
        fs::create_dir_all(&dir).expect("create podman's directory");
        fs::rename(&context.0, dir.join("context")).expect("move the image's context");
        fs::write(
            dir.join("context/Containerfile"),
            "FROM scratch\nCOPY . /\nENTRYPOINT [\"/workload\"]\n",
        )
        .expect("write the Containerfile");
        let cgroup = format!("heapwatch-test-{}", std::process::id());
        let limit = |resource, cap: u64| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct it is given.
            unsafe { libc::getrlimit(resource, &mut limit) };
            limit.rlim_max.min(cap).to_string()
        };
        let mut session = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                PODMAN_SESSION,
            ])
            .env("DIR", &dir)
            .env("MODES", modes.join(" "))
            .env("CGROUP", format!("/{cgroup}"))
            .env("NOFILE", limit(libc::RLIMIT_NOFILE, 1 << 20))
            // podman lowers its own hard limit of processes to this.
            .env("NPROC", limit(libc::RLIMIT_NPROC, 32_768))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run podman in a mount namespace of its own");
        let stdout = session.stdout.take().expect("piped stdout");
        let mut pids = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read podman's session");
            if line == "started" {
                break;
            }
            let (mode, pid) = line.split_once(' ').expect("MODE PID");
            pids.push((mode.to_owned(), pid.parse().expect("a PID")));
        }
        let containers = Self {
            session,
            dir,
            cgroup,
            pids,
        };
        assert_eq!(
            containers.pids.len(),
            modes.len(),
            "every container started"
        );
        containers
    }

    fn pid(&self, mode: &str) -> u32 {
        self.pids
            .iter()
            .find(|(m, _)| m == mode)
            .map(|&(_, pid)| pid)
            .unwrap_or_else(|| panic!("no container runs {mode}"))
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        drop(self.session.stdin.take());
        let _ = self.session.wait();
        let _ = fs::remove_dir_all(&self.dir);
        // podman leaves its cgroup parent (and conmon's) in each hierarchy.
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = hierarchy.path().join(&self.cgroup);
            let _ = fs::remove_dir(parent.join("conmon"));
            let _ = fs::remove_dir(&parent);
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup));
    }
}

#[test]
#[ignore = "needs root"]
fn podman_containers_with_their_own_libc_are_traced_and_named() {
    let baseline = BpfBaseline::take();
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(
        &config_file(""),
        &["--socket", socket_arg, "--top", "100", "--tick", "1s"],
    );
    let containers = Containers::run(&["leak", "constant", "freed"]);
    thread::sleep(Duration::from_secs(1));

    let leak = snapshot_json(&socket, containers.pid("leak")).expect("the leak's snapshot");
    let site = leak["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|site| functions(site).first().is_some_and(|f| f == "leak_step"))
        .unwrap_or_else(|| panic!("no site in leak_step: {leak}"));
    assert_eq!(functions(site)[..2], ["leak_step", "main"], "{site}");
    let blocks = site["live_blocks"].as_u64().expect("blocks");
    assert_eq!(site["live_bytes"].as_u64(), Some(1024 * blocks), "{site}");

    // A second container of the image finds its libc (one layer file for
    // both) attached: traced from its start, each block counted once.
    let constant = snapshot_json(&socket, containers.pid("constant")).expect("a snapshot");
    assert_eq!(constant["attached_late"], false, "{constant}");
    let held = site_with_blocks(&constant, 100).unwrap_or_else(|| panic!("{constant}"));
    assert_eq!(held["live_bytes"].as_u64(), Some(1_000_000), "{held}");
    assert_eq!(
        constant["in_use_bytes"].as_u64(),
        Some(1_000_000),
        "{constant}"
    );
    let freed = snapshot_json(&socket, containers.pid("freed")).expect("a snapshot");
    assert_eq!(freed["in_use_bytes"].as_u64(), Some(0), "{freed}");
    assert!(
        freed["allocs"].as_u64().is_some_and(|n| n >= 100),
        "{freed}"
    );

    let pid = containers.pid("constant").to_string();
    let m = daemon.scrape_until(Duration::from_secs(15), |m| {
        m.process("heapwatch_process_live_bytes", containers.pid("constant"))
            .is_some()
    });
    let series = m
        .family("heapwatch_process_live_bytes")
        .into_iter()
        .find(|s| s.labels.get("pid") == Some(&pid))
        .unwrap_or_else(|| panic!("no series of the container's process"));
    assert_eq!(
        series.labels.get("runtime").map(String::as_str),
        Some("podman")
    );
    assert_eq!(
        series.labels.get("unit").map(String::len),
        Some(64),
        "the container's id"
    );
    let ps = heapwatch()
        .args(["ps", "--socket", socket_arg])
        .output()
        .expect("run ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    let line = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("not listed:\n{ps}"));
    let short_id = &series.labels["unit"][..12];
    assert!(line.contains(short_id), "{line}");

    drop(containers);
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn record_of_a_command_that_execs_into_its_own_root_matches_valgrind() {
    let leak = fixture("leak");
    let root = OwnRoot::with_program(&leak);
    let baseline = BpfBaseline::take();
    // valgrind cannot follow a program into a root without its own files:
    // the same program on the host's byte-identical libc gives the figures.
    let theirs = support::valgrind(&[leak.to_str().expect("utf-8 path")]);
    let recorded = support::record(&[], &["chroot", root.path(), "/workload"]);
    recorded.assert_exact();
    assert_eq!(recorded.summaries(), theirs, "{}", recorded.stderr());
    let others = recorded.report["other_allocators"].to_string();
    assert!(
        others.contains(root.path()),
        "the root's libc probed: {others}"
    );
    let site = &recorded.processes()[0]["sites"][0];
    assert_eq!(functions(site)[..2], ["leak", "main"], "{site}");
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn a_selected_process_is_traced_through_its_own_allocator() {
    let jemalloc = c_fixture_with(
        "workload",
        "workload_jemalloc",
        "gcc",
        &["-pthread", "-ljemalloc"],
    );
    let baseline = BpfBaseline::take();
    let running_before = Gated::spawn(&jemalloc, "gated");
    let socket = tempfile_path("api.sock");
    let socket_arg = socket.to_str().expect("utf-8 path");
    // comm is the executable's name cut to 15 bytes.
    let mut daemon = Daemon::start(
        &config_file(""),
        &["--scope", "comm:workload_jemall", "--socket", socket_arg],
    );
    let started_after = Gated::spawn(&jemalloc, "gated");
    let mut selected = [running_before, started_after];
    for gated in &mut selected {
        // Its probes are attached link by link: wait for the whole set.
        let traced = format!("scope: tracing pid={}", gated.pid());
        assert!(
            eventually(|| daemon.plain_log().contains(&traced)),
            "not traced:\n{}",
            daemon.log()
        );
        assert!(
            eventually(|| breakpoint_in(gated.pid(), "/libjemalloc.so", "malloc")),
            "no breakpoint in jemalloc's malloc of a selected process:\n{}",
            daemon.log()
        );
        gated.allocate();
    }
    for gated in &selected {
        let json =
            snapshot_json(&socket, gated.pid()).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        let held = site_with_blocks(&json, 100).unwrap_or_else(|| {
            panic!(
                "{} of {:?}: {json}\n{}",
                gated.pid(),
                selected.iter().map(Gated::pid).collect::<Vec<_>>(),
                daemon.log()
            )
        });
        assert_eq!(held["live_bytes"].as_u64(), Some(1_000_000), "{held}");
    }
    for gated in selected {
        gated.finish();
    }
    daemon.stop_cleanly();
    baseline.assert_nothing_left();
}
