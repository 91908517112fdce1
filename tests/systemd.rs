//! heapwatch.service under a real systemd: a container (systemd-nspawn) boots
//! Debian's systemd as PID 1 on a root where only `cargo xtask install` put
//! heapwatch, so the unit's group can come only from the sysusers entry at
//! boot; there the unit is started, scraped, reloaded and stopped.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use support::{
    BpfBaseline,
    daemon::{free_port, scrape},
    process::is_running,
    xtask_install,
};

/// The listen line of deploy/config.toml, which the test moves to a free port.
const SHIPPED_LISTEN: &str = "listen = \"127.0.0.1:9465\"";

/// A container's root, made afresh by each run (so that no group made by a
/// previous boot survives in its /etc): an /etc with only os-release and a
/// machine id, an empty /var, and a /usr
/// that is the host's with the root's own `usr` laid over it (overlayfs,
/// read-only), which holds what `cargo xtask install` put there. The host's
/// /usr is Debian 12 with its systemd (a test package), so this boots what
/// a Debian host boots, in under a second and without a download.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn make() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("systemd-{}-{n}", std::process::id()))
            .join("root");
        let _ = fs::remove_dir_all(&dir);
        for sub in ["etc", "usr", "var", "tmp", "root"] {
            fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|e| panic!("create {}/{sub}: {e}", dir.display()));
        }
        // Debian 12 has merged /usr: /bin, /lib, ... are links into it.
        for link in ["bin", "sbin", "lib", "lib64"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), dir.join(link))
                .unwrap_or_else(|e| panic!("link {}/{link}: {e}", dir.display()));
        }
        // systemd-nspawn looks for os-release before it mounts /usr.
        fs::copy("/usr/lib/os-release", dir.join("etc/os-release"))
            .expect("copy /usr/lib/os-release into the root");
        // A machine id: not a first boot, so no presets enable the host's
        // services (a Prometheus, a database) and no wizard waits for input.
        let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").expect("a random uuid");
        fs::write(
            dir.join("etc/machine-id"),
            uuid.trim().replace('-', "") + "\n",
        )
        .expect("write the root's machine id");
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

/// A booted container. Dropped, it is halted (nspawn's SIGTERM) or, past a
/// while, killed with its whole PID namespace; its mounts live in a mount
/// namespace of its own, which goes with it.
struct Machine {
    nspawn: Option<Child>,
    leader: u32,
    console: PathBuf,
}

impl Machine {
    /// Boots `root` and waits until systemd has finished booting.
    fn boot(root: &Root) -> Self {
        let console = root.dir.with_file_name("console.log");
        let log = fs::File::create(&console).expect("create the console log");
        let usr = root.path("usr");
        let nspawn = nspawn(root)
            .args([
                "--boot",
                "--machine",
                "heapwatch-test",
                "--console=read-only",
            ])
            .arg(format!("--overlay-ro=/usr:{}:/usr", usr.display()))
            // What the unit grants the daemon (nspawn keeps CAP_SYS_ADMIN
            // already), and the two system calls its filter refuses.
            .args(["--capability=CAP_BPF,CAP_PERFMON"])
            .args(["--system-call-filter=bpf perf_event_open"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the console log"))
            .stderr(log)
            .spawn()
            .expect("run systemd-nspawn (cargo xtask setup installs systemd-container)");
        let mut machine = Self {
            leader: 0,
            nspawn: Some(nspawn),
            console,
        };
        machine.leader = machine.wait_for_leader();
        machine.wait_for_boot();
        machine
    }

    /// The container's PID 1 (as the host numbers it): nspawn's child once
    /// it has become systemd.
    fn wait_for_leader(&mut self) -> u32 {
        let nspawn = self.nspawn.as_ref().map_or(0, Child::id);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = child_named(nspawn, "systemd") {
                return pid;
            }
            if let Some(status) = self.nspawn.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console_tail());
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 30 s:\n{}",
                self.console_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `systemctl is-system-running` says the boot is over.
    fn wait_for_boot(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            // degraded: a unit of the host's other than heapwatch failed.
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd is still {state:?} after 60 s:\n{}",
                self.console_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `args` run in the container (all its namespaces).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string(), "--all", "--"])
            .args(args)
            .output()
            .expect("run nsenter (util-linux)")
    }

    /// `systemctl ARGS` in the container, which must succeed; its stdout.
    fn systemctl(&self, args: &[&str]) -> String {
        let output = self.run(&[&["systemctl"], args].concat());
        assert!(
            output.status.success(),
            "systemctl {} in the container: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.journal("heapwatch.service")
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A property of heapwatch.service (`systemctl show -P`).
    fn property(&self, name: &str) -> String {
        self.systemctl(&["show", "--property", name, "--value", "heapwatch.service"])
            .trim()
            .to_owned()
    }

    /// The journal of `unit` in the container.
    fn journal(&self, unit: &str) -> String {
        let output = self.run(&["journalctl", "--no-pager", "--quiet", "--unit", unit]);
        format!(
            "journal of {unit}:\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    }

    /// Waits until `unit`'s journal contains `text`.
    fn wait_for_journal(&self, unit: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let journal = self.journal(unit);
            if journal.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} after 20 s in the {journal}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines the container wrote on its console.
    fn console_tail(&self) -> String {
        let text = fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "console ({}):\n{}",
            self.console.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Powers the container off from inside and returns nspawn's status.
    fn power_off(&mut self) -> ExitStatus {
        // nsenter may be cut off as the container goes down: its own status
        // says nothing.
        let _ = self.run(&["systemctl", "poweroff", "--no-block"]);
        self.wait_for_exit(Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "still running 60 s after poweroff:\n{}",
                    self.console_tail()
                )
            })
    }

    /// nspawn's status once it has exited, or None after `within`.
    fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let nspawn = self.nspawn.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = nspawn.try_wait() {
                self.nspawn = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let Some(nspawn) = &self.nspawn else { return };
        let pid = nspawn.id() as i32;
        // SAFETY: signals the nspawn this test started (still our child,
        // not reaped): it halts the container.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if self.wait_for_exit(Duration::from_secs(30)).is_some() {
            return;
        }
        if self.leader != 0 {
            // SAFETY: the container's PID 1, whose parent (our nspawn) has
            // not exited: killing it kills every process of its namespace.
            unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.wait_for_exit(Duration::from_secs(10));
    }
}

/// systemd-nspawn on `root`, without a host systemd to register with.
fn nspawn(root: &Root) -> Command {
    let mut command = Command::new("unshare");
    // nspawn keeps locks and a propagation directory under
    // /run/systemd/nspawn and refuses to remove them where /run is not a
    // tmpfs (as here, PID 1 not being systemd): a private mount namespace
    // with a tmpfs on /run keeps them, and every mount nspawn makes, away
    // from the host.
    command
        .args(["--mount", "--propagation", "private", "--"])
        .args([
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$@\"",
            "sh",
        ])
        .arg("systemd-nspawn")
        .arg("--directory")
        .arg(&root.dir)
        // No machined nor D-Bus on a host whose PID 1 is not systemd.
        .args(["--register=no", "--keep-unit"]);
    command
}

/// The child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

#[test]
#[ignore = "needs root"]
fn the_unit_runs_under_systemd_with_the_group_its_sysusers_entry_makes() {
    let root = Root::make();
    xtask_install(&root.dir);
    // The binary under test (target/release/heapwatch too when the tests
    // run in release, as `cargo xtask test` runs them).
    fs::copy(
        env!("CARGO_BIN_EXE_heapwatch"),
        root.path("usr/local/bin/heapwatch"),
    )
    .expect("copy the heapwatch under test into the root");
    let address = format!("127.0.0.1:{}", free_port());
    let config_path = root.path("etc/heapwatch/config.toml");
    let config = fs::read_to_string(&config_path).expect("read the installed config");
    assert!(
        config.contains(SHIPPED_LISTEN),
        "the installed config has no {SHIPPED_LISTEN}"
    );
    // The container shares the host's network: a port of its own.
    fs::write(
        &config_path,
        config.replace(SHIPPED_LISTEN, &format!("listen = \"{address}\"")),
    )
    .expect("write the config");

    let mut machine = Machine::boot(&root);
    let group = machine.run(&["getent", "group", "heapwatch"]);
    assert!(
        group.status.success(),
        "no group heapwatch after boot: systemd-sysusers did not make it\n{}",
        machine.journal("systemd-sysusers.service")
    );
    let sysusers = machine.journal("systemd-sysusers.service");
    assert!(
        sysusers.contains("Creating group 'heapwatch'"),
        "the group was not made by systemd-sysusers at boot: {sysusers}"
    );

    let bpf = BpfBaseline::take();
    // Type=notify: start returns once the daemon has sent READY=1.
    machine.systemctl(&["start", "heapwatch.service"]);
    assert_eq!(machine.property("ActiveState"), "active");
    let main_pid = machine.property("MainPID");
    let owner = machine.run(&["stat", "--format", "%G", "/run/heapwatch"]);
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        "heapwatch",
        "RuntimeDirectory /run/heapwatch is not the unit's group's"
    );
    let metrics = scrape(&address);
    assert_eq!(
        metrics.total("heapwatch_build_info"),
        1.0,
        "no heapwatch_build_info at {address}"
    );

    // A reload re-reads the config (tick may change on SIGHUP) in the same
    // process.
    fs::write(
        &config_path,
        fs::read_to_string(&config_path)
            .expect("read the config")
            .replace("tick = \"10s\"", "tick = \"5s\""),
    )
    .expect("write the config");
    machine.systemctl(&["reload", "heapwatch.service"]);
    machine.wait_for_journal("heapwatch.service", "configuration reloaded tick=5s");
    assert_eq!(machine.property("ActiveState"), "active");
    assert_eq!(
        machine.property("MainPID"),
        main_pid,
        "a reload restarted it"
    );
    assert_eq!(scrape(&address).total("heapwatch_build_info"), 1.0);

    machine.systemctl(&["stop", "heapwatch.service"]);
    let stopped = [
        machine.property("ActiveState"),
        machine.property("Result"),
        machine.property("ExecMainStatus"),
    ];
    assert_eq!(
        stopped,
        ["inactive", "success", "0"],
        "not stopped cleanly (ActiveState, Result, ExecMainStatus)\n{}",
        machine.journal("heapwatch.service")
    );
    machine.wait_for_journal("heapwatch.service", "detached; exiting");
    bpf.assert_nothing_left();

    let leader = machine.leader;
    let status = machine.power_off();
    assert!(
        status.success(),
        "systemd-nspawn exited with {status} (signal {:?}) after poweroff:\n{}",
        status.signal(),
        machine.console_tail()
    );
    assert!(!is_running(leader), "the container's PID 1 outlived it");
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let root_dir = root.dir.display().to_string();
    assert!(
        !mounts.contains(&root_dir),
        "mounts of the container left on the host: {mounts}"
    );
}

/// The accounts files of a host (root alone), which groupadd needs to exist.
const ACCOUNTS: [(&str, &str); 4] = [
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
    ("etc/group", "root:x:0:\n"),
    ("etc/gshadow", "root:*::\n"),
];

/// `cargo xtask install` on the machine itself (root "/"), run as the only
/// command of a container: it makes the unit's group with systemd-sysusers
/// or, where that program is absent, with groupadd, and run again it makes
/// no second one.
#[test]
#[ignore = "needs root"]
fn xtask_install_on_the_machine_makes_the_group_once() {
    // Builds xtask (cargo's dev profile), which the containers then run.
    let scratch = Root::make();
    xtask_install(&scratch.dir);
    drop(scratch);
    let xtask = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../debug/xtask");
    assert!(xtask.is_file(), "no xtask at {}", xtask.display());
    // xtask reads the files it installs from the workspace it was built in.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cases = [
        (
            false,
            [
                "group heapwatch in place (systemd-sysusers",
                "group heapwatch in place (systemd-sysusers",
            ],
        ),
        (
            true,
            [
                "created the group heapwatch (groupadd",
                "kept the group heapwatch (it exists)",
            ],
        ),
    ];
    for (without_sysusers, says) in cases {
        let root = Root::make();
        for (file, text) in ACCOUNTS {
            fs::write(root.path(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
        }
        for expected in says {
            let mut command = nspawn(&root);
            command
                .arg("--quiet")
                // Writable: xtask installs under /usr/local and /usr/lib.
                .arg(format!(
                    "--overlay=/usr:{}:/usr",
                    root.path("usr").display()
                ))
                .arg(format!(
                    "--bind-ro={}",
                    fs::canonicalize(&workspace)
                        .expect("the workspace")
                        .display()
                ))
                .arg(format!(
                    "--bind-ro={}",
                    fs::canonicalize(&xtask).expect("xtask").display()
                ));
            if without_sysusers {
                // Not a file: xtask looks for systemd-sysusers and finds none.
                command.arg("--bind-ro=/dev/null:/usr/bin/systemd-sysusers");
            }
            let output = command
                .arg("--")
                .arg(fs::canonicalize(&xtask).expect("xtask"))
                .args(["install", "--root", "/", "--no-build"])
                .stdin(Stdio::null())
                .output()
                .expect("run systemd-nspawn (cargo xtask setup installs systemd-container)");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success() && said.contains(expected),
                "cargo xtask install --root / ({}) did not say {expected:?}: {said}",
                output.status
            );
        }
        let groups =
            fs::read_to_string(root.path("etc/group")).expect("read the root's /etc/group");
        let heapwatch: Vec<&str> = groups
            .lines()
            .filter(|l| l.starts_with("heapwatch:"))
            .collect();
        let [line] = heapwatch.as_slice() else {
            panic!("not one group heapwatch in /etc/group: {groups}");
        };
        let gid: u32 = line
            .split(':')
            .nth(2)
            .and_then(|gid| gid.parse().ok())
            .unwrap_or_else(|| panic!("a group line without a gid: {line}"));
        assert!(gid < 1000, "group heapwatch is not a system group: {line}");
    }
}
