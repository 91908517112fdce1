//! `cargo xtask bench`: what heapwatch costs the programs it traces, measured
//! in one run against the bare program and against the floor (probes whose
//! programs do nothing, at heapwatch's placements and at +0 as other tools
//! place them), with bpftrace, heaptrack and valgrind for reference. Runs are
//! interleaved round by round so that drift hits every configuration alike.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{packages, run::workspace_root, toolchain};

mod lifecycle;
mod programs;

/// What to measure.
pub struct BenchOptions {
    /// malloc(64)+free pairs per thread and run.
    pub pairs: u64,
    /// Runs of each configuration (the median is reported).
    pub runs: usize,
}

/// How a churn run is wrapped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrapper {
    Bare,
    FloorPlaced,
    FloorEntry,
    Record,
    RecordCallSites,
    Daemon,
    DaemonCallSites,
    Bpftrace,
    Heaptrack,
    Valgrind,
}

const WRAPPERS: [(Wrapper, &str); 10] = [
    (Wrapper::Bare, "bare"),
    (Wrapper::FloorPlaced, "floor (heapwatch's placements)"),
    (Wrapper::FloorEntry, "floor at +0"),
    (Wrapper::Record, "heapwatch record"),
    (
        Wrapper::RecordCallSites,
        "heapwatch record, call sites (--stack-sample 1000)",
    ),
    (Wrapper::Daemon, "heapwatch daemon --scope all"),
    (
        Wrapper::DaemonCallSites,
        "heapwatch daemon --scope all, call sites (--stack-sample 1000)",
    ),
    (Wrapper::Bpftrace, "bpftrace, empty programs at +0"),
    (Wrapper::Heaptrack, "heaptrack"),
    (Wrapper::Valgrind, "valgrind"),
];

/// One churn run's result.
#[derive(Default, Clone)]
struct Run {
    ns_per_pair: f64,
    pairs: Option<f64>,
    counted: Option<u64>,
    lost: Option<u64>,
    daemon_cpu_secs: Option<f64>,
    daemon_peak_rss_kib: Option<u64>,
}

/// Everything the bench needs to find.
struct Tools {
    heapwatch: PathBuf,
    churn: PathBuf,
    many_sites: PathBuf,
    /// The seed's leak (tests/fixtures/leak.c).
    leak: PathBuf,
    libc: String,
    dir: PathBuf,
}

/// Builds, measures, prints the table and writes target/bench.json.
pub fn bench(options: &BenchOptions) -> Result<()> {
    toolchain::ensure()?;
    packages::ensure(packages::TEST_PACKAGES)?;
    packages::ensure(&["bpftrace", "heaptrack", "perl", "python3"])?;
    crate::run::build()?;
    let tools = prepare()?;
    refuse_foreign_uprobes()?;
    let mut results: BTreeMap<(usize, &str), Vec<Run>> = BTreeMap::new();
    for round in 0..options.runs {
        for threads in [1, 2] {
            for (wrapper, name) in WRAPPERS {
                eprintln!(
                    "round {}/{}: {threads} thread(s), {name}",
                    round + 1,
                    options.runs
                );
                let run = churn_under(wrapper, &tools, threads, options.pairs)
                    .with_context(|| format!("{name}, {threads} thread(s)"))?;
                results.entry((threads, name)).or_default().push(run);
            }
        }
    }
    let scope = unselected_under_scope(&tools, options)?;
    let sustained = sustained_churn(&tools)?;
    let live = [1_000_000u64, 10_000_000]
        .into_iter()
        .map(|blocks| live_allocations(&tools, blocks))
        .collect::<Result<Vec<_>>>()?;
    let mut report = summarize(&results, options, &[scope, sustained], &live);
    report["lifecycle"] = lifecycle::lifecycle(&tools, options.runs)?;
    report["programs"] = programs::programs(&tools, options.runs)?;
    print_table(&report);
    lifecycle::print(&report["lifecycle"]);
    programs::print(&report["programs"]);
    let path = workspace_root().join("target/bench.json");
    fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nJSON: {}", path.display());
    Ok(())
}

fn prepare() -> Result<Tools> {
    let root = workspace_root();
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let compile = |name: &str| -> Result<PathBuf> {
        let out = dir.join(name);
        crate::toolchain::run(
            Command::new("gcc")
                .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"])
                .arg(root.join(format!("tests/fixtures/{name}.c")))
                .arg("-o")
                .arg(&out),
        )?;
        Ok(out)
    };
    let maps = fs::read_to_string("/proc/self/maps")?;
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .context("no C library in xtask's own maps")?
        .to_owned();
    Ok(Tools {
        heapwatch: root.join("target/release/heapwatch"),
        churn: compile("churn")?,
        many_sites: compile("many_sites")?,
        leak: compile("leak")?,
        libc,
        dir,
    })
}

/// A timing is worth nothing while someone else's uprobes sit in libc.
fn refuse_foreign_uprobes() -> Result<()> {
    let output = Command::new("bpftool").args(["perf", "show"]).output()?;
    let listing = String::from_utf8_lossy(&output.stdout);
    if listing.contains("uprobe") || listing.contains("uretprobe") {
        bail!(
            "uprobes are attached already (bpftool perf show):\n{listing}\nstop what attached them, then bench"
        );
    }
    Ok(())
}

fn churn_under(wrapper: Wrapper, tools: &Tools, threads: usize, pairs: u64) -> Result<Run> {
    let churn_args = [
        tools.churn.display().to_string(),
        threads.to_string(),
        "3600".to_owned(),
        pairs.to_string(),
    ];
    let heapwatch = tools.heapwatch.display().to_string();
    let report = tools.dir.join("record.json");
    let mut argv: Vec<String> = match wrapper {
        Wrapper::Bare | Wrapper::Daemon | Wrapper::DaemonCallSites => vec![],
        Wrapper::FloorPlaced => vec![heapwatch, "floor".into(), "--".into()],
        Wrapper::FloorEntry => vec![heapwatch, "floor".into(), "--at-entry".into(), "--".into()],
        Wrapper::Record | Wrapper::RecordCallSites => {
            let mut argv = vec![heapwatch, "record".into()];
            if wrapper == Wrapper::RecordCallSites {
                argv.extend(CALL_SITES.map(String::from));
            }
            argv.extend(["--json".into(), report.display().to_string(), "--".into()]);
            argv
        }
        Wrapper::Bpftrace => {
            let libc = &tools.libc;
            let program = format!(
                "uprobe:{libc}:malloc {{}} uretprobe:{libc}:malloc {{}} uprobe:{libc}:free {{}}"
            );
            let line = churn_args.join(" ");
            let argv = ["bpftrace".into(), "-e".into(), program, "-c".into(), line];
            return Ok(timed(run_churn(&argv, threads)?.0));
        }
        Wrapper::Heaptrack => vec![
            "heaptrack".into(),
            "-o".into(),
            tools.dir.join("heaptrack").display().to_string(),
        ],
        Wrapper::Valgrind => vec![
            "valgrind".into(),
            "--run-libc-freeres=no".into(),
            "--run-cxx-freeres=no".into(),
        ],
    };
    argv.extend(churn_args);
    match wrapper {
        Wrapper::Daemon => return churn_under_daemon(tools, &EVERY_PROCESS, &argv, threads),
        Wrapper::DaemonCallSites => {
            let flags = [&EVERY_PROCESS[..], &CALL_SITES[..]].concat();
            return churn_under_daemon(tools, &flags, &argv, threads);
        }
        _ => {}
    }
    let (ns, _) = run_churn(&argv, threads)?;
    if !matches!(wrapper, Wrapper::Record | Wrapper::RecordCallSites) {
        return Ok(timed(ns));
    }
    let json: Value = serde_json::from_slice(&fs::read(&report)?)?;
    let process = &json["processes"][0];
    let counted = process["allocs"].as_u64().unwrap_or(0) + process["frees"].as_u64().unwrap_or(0);
    Ok(Run {
        counted: Some(counted),
        lost: json["lost_records"].as_u64(),
        ..timed(ns)
    })
}

/// A run of which only the time is known.
fn timed(ns_per_pair: f64) -> Run {
    Run {
        ns_per_pair,
        ..Run::default()
    }
}

/// Runs the churn command line; returns nanoseconds per pair per thread,
/// and the pairs made.
fn run_churn(argv: &[String], threads: usize) -> Result<(f64, f64)> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", argv[0]))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains(" pairs in "))
        .with_context(|| {
            format!(
                "{:?} printed no churn figures: {stdout}{}",
                argv,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [pairs, ns] = numbers[..] else {
        bail!("unreadable churn line: {line}");
    };
    Ok((ns * threads as f64 / pairs, pairs))
}

/// heapwatch's flags for call sites alone: the caller of every allocation,
/// the full stack of one in 1,000 (and of each call site's first).
const CALL_SITES: [&str; 2] = ["--stack-sample", "1000"];

/// The daemon tracing every process exactly: what the per-pair rows measure.
const EVERY_PROCESS: [&str; 2] = ["--scope", "all"];

/// A scope that selects no process the bench runs.
const NOBODY_SCOPE: [&str; 2] = ["--scope", "comm:hw-nobody"];

/// A daemon at defaults but a 1 s tick (metrics on a free loopback port)
/// and `extra`, stopped by Drop.
struct Daemon {
    child: Child,
    address: String,
}

impl Daemon {
    fn start(tools: &Tools, extra: &[&str]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(&tools.heapwatch)
            .args(["daemon", "--tick", "1s", "--listen", &address, "--socket"])
            .arg(tools.dir.join("api.sock"))
            .args(extra)
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("tracing every process")
                || line.contains("tracing the selected")
                || line.contains("watching every process")
            {
                thread::spawn(move || lines.for_each(drop));
                return Ok(Self { child, address });
            }
        }
        bail!("the daemon ended before it was ready")
    }

    fn scrape(&self) -> Result<String> {
        let mut stream = TcpStream::connect(&self.address)?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    /// (user + system CPU seconds, peak RSS KiB) so far.
    fn usage(&self) -> Result<(f64, u64)> {
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok((ticks / 100.0, status_kib(pid, "VmHWM")?))
    }
}

impl Drop for Daemon {
    /// SIGTERM: the daemon detaches everything and exits.
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

/// Sends signal `name` (TERM, INT, ...) to process `pid`.
fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// The sum of a metric family's samples in a /metrics text.
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn churn_under_daemon(
    tools: &Tools,
    extra: &[&str],
    argv: &[String],
    threads: usize,
) -> Result<Run> {
    let daemon = Daemon::start(tools, extra)?;
    let events = |text: &str| {
        metric(text, "heapwatch_events_total", "kind=\"alloc\"")
            + metric(text, "heapwatch_events_total", "kind=\"free\"")
    };
    let (before, lost_before) = {
        let text = daemon.scrape()?;
        (
            events(&text),
            metric(
                &text,
                "heapwatch_events_dropped_total",
                "reason=\"ring_full\"",
            ),
        )
    };
    let (cpu_before, _) = daemon.usage()?;
    let (ns, pairs) = run_churn(argv, threads)?;
    // Metrics move once a tick: wait until two ticks agree.
    let mut text = daemon.scrape()?;
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(1100));
        let next = daemon.scrape()?;
        // A scope that selects nothing counts nothing.
        let selects_nothing = extra == NOBODY_SCOPE;
        let settled = events(&next) == events(&text) && (events(&next) > before || selects_nothing);
        text = next;
        if settled {
            break;
        }
    }
    let (cpu_after, hwm) = daemon.usage()?;
    Ok(Run {
        ns_per_pair: ns,
        pairs: Some(pairs),
        counted: Some(events(&text) - before),
        lost: Some(
            metric(
                &text,
                "heapwatch_events_dropped_total",
                "reason=\"ring_full\"",
            ) - lost_before,
        ),
        daemon_cpu_secs: Some(cpu_after - cpu_before),
        daemon_peak_rss_kib: Some(hwm),
    })
}

/// Churn bare and as a process a daemon's scope does not select, each long
/// enough (100 × the pairs) to tell nanoseconds apart, interleaved.
fn unselected_under_scope(tools: &Tools, options: &BenchOptions) -> Result<Value> {
    let pairs = options.pairs * 100;
    let argv = [
        tools.churn.display().to_string(),
        "1".to_owned(),
        "3600".to_owned(),
        pairs.to_string(),
    ];
    let (mut bare, mut unselected, mut counted) = (Vec::new(), Vec::new(), 0);
    for round in 0..options.runs {
        eprintln!(
            "round {}/{}: unselected under a scope",
            round + 1,
            options.runs
        );
        bare.push(run_churn(&argv, 1)?.0);
        let run = churn_under_daemon(tools, &NOBODY_SCOPE, &argv, 1)?;
        unselected.push(run.ns_per_pair);
        counted += run.counted.unwrap_or(0);
    }
    let (bare, unselected) = (median(&mut bare), median(&mut unselected));
    Ok(json!({
        "pairs": pairs,
        "runs": options.runs,
        "bare_ns_per_pair": bare,
        "unselected_ns_per_pair": unselected,
        "ratio_to_bare": unselected / bare,
        "events_counted": counted,
    }))
}

/// How long the sustained churn runs.
const SUSTAINED_SECS: u32 = 60;

/// Two threads churning flat out for [`SUSTAINED_SECS`] under the daemon
/// tracing every process: whether it keeps up, and what it costs.
fn sustained_churn(tools: &Tools) -> Result<Value> {
    eprintln!("sustained: 2 threads for {SUSTAINED_SECS} s under the daemon");
    let argv = [
        tools.churn.display().to_string(),
        "2".to_owned(),
        SUSTAINED_SECS.to_string(),
    ];
    let run = churn_under_daemon(tools, &EVERY_PROCESS, &argv, 2)?;
    Ok(json!({
        "seconds": SUSTAINED_SECS,
        "pairs": run.pairs,
        "ns_per_pair": run.ns_per_pair,
        "events_counted": run.counted,
        "events_lost": run.lost,
        "daemon_cpu_secs": run.daemon_cpu_secs,
        "daemon_peak_rss_kib": run.daemon_peak_rss_kib,
    }))
}

/// Daemon memory per live allocation and snapshot latency with `blocks` live.
///
/// The memory is anonymous RSS (the daemon's own pages, not the files it has
/// mapped to symbolize) over a warm baseline: the daemon tracking the same
/// 1,000 sites, one block each, so stacks and mappings are not counted.
fn live_allocations(tools: &Tools, blocks: u64) -> Result<Value> {
    let daemon = Daemon::start(tools, &EVERY_PROCESS)?;
    let socket = tools.dir.join("api.sock");
    let (warm_blocks, warm_rss) = {
        let warm = Holder::start(tools, 1)?;
        let seen = settled_live_blocks(tools, &socket, warm.pid())?;
        (seen, status_kib(daemon.child.id(), "RssAnon")?)
    };
    let holder = Holder::start(tools, blocks / 1000)?;
    let pid = holder.pid().to_string();
    let seen = settled_live_blocks(tools, &socket, holder.pid())?;
    let held_rss = status_kib(daemon.child.id(), "RssAnon")?;
    let lost = metric(
        &daemon.scrape()?,
        "heapwatch_events_dropped_total",
        "reason=\"ring_full\"",
    );
    let snapshot = || -> Result<f64> {
        let started = Instant::now();
        let output = Command::new(&tools.heapwatch)
            .args(["snapshot", "--pid", &pid, "--socket"])
            .arg(&socket)
            .args(["--top", "1000", "--format", "json", "-o", "/dev/null"])
            .output()?;
        if !output.status.success() {
            bail!("snapshot: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    let mut latencies: Vec<f64> = (0..5).map(|_| snapshot()).collect::<Result<_>>()?;
    drop(holder);
    let (_, peak) = daemon.usage()?;
    let added = seen.saturating_sub(warm_blocks).max(1);
    Ok(json!({
        "live_blocks": blocks,
        "live_blocks_tracked": seen,
        "events_lost": lost,
        "daemon_anon_rss_warm_kib": warm_rss,
        "daemon_anon_rss_holding_kib": held_rss,
        "daemon_peak_rss_kib": peak,
        "bytes_per_live_allocation": (held_rss.saturating_sub(warm_rss) * 1024) as f64 / added as f64,
        "snapshot_top_1000_json_ms_median": median(&mut latencies),
    }))
}

/// `many_sites hold N`: N blocks on each of 1,000 paths, held until dropped.
struct Holder(Child);

impl Holder {
    /// Starts it and waits until it has allocated every block.
    fn start(tools: &Tools, per_path: u64) -> Result<Self> {
        let mut child = Command::new(&tools.many_sites)
            .args(["hold", &per_path.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("the holder's stdout")?;
        let holder = Self(child);
        let mut ready = String::new();
        BufReader::new(stdout).read_line(&mut ready)?;
        Ok(holder)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The live blocks `heapwatch ps` shows for `pid`, once that count stops
/// moving (records the ring could not hold are lost, and counted).
fn settled_live_blocks(tools: &Tools, socket: &Path, pid: u32) -> Result<u64> {
    let pid = pid.to_string();
    let live_blocks = || -> Result<u64> {
        let output = Command::new(&tools.heapwatch)
            .args(["ps", "--socket"])
            .arg(socket)
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(0))
    };
    let mut seen = 0;
    loop {
        thread::sleep(Duration::from_secs(2));
        let now = live_blocks()?;
        if now == seen && now > 0 {
            return Ok(seen);
        }
        seen = now;
    }
}

/// A `/proc/PID/status` field given in kB, in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn summarize(
    results: &BTreeMap<(usize, &str), Vec<Run>>,
    options: &BenchOptions,
    [scope, sustained]: &[Value; 2],
    live: &[Value],
) -> Value {
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let ns = |name: &str| {
            let mut values: Vec<f64> = results[&(threads, name)]
                .iter()
                .map(|r| r.ns_per_pair)
                .collect();
            median(&mut values)
        };
        let (bare, floor, floor_entry) = (ns("bare"), ns(WRAPPERS[1].1), ns(WRAPPERS[2].1));
        for (_, name) in WRAPPERS {
            let runs = &results[&(threads, name)];
            let last = runs.last().cloned().unwrap_or_default();
            let value = ns(name);
            rows.push(json!({
                "threads": threads,
                "configuration": name,
                "ns_per_pair": value,
                "ratio_to_bare": value / bare,
                "ratio_to_floor": value / floor,
                "ratio_to_floor_at_entry": value / floor_entry,
                "events_generated": 2 * options.pairs * threads as u64,
                "events_counted": last.counted,
                "events_lost": last.lost,
                "daemon_cpu_secs": last.daemon_cpu_secs,
                "daemon_peak_rss_kib": last.daemon_peak_rss_kib,
            }));
        }
    }
    json!({
        "pairs_per_thread": options.pairs,
        "runs": options.runs,
        "churn": rows,
        "unselected_under_scope": scope,
        "sustained_churn": sustained,
        "live_allocations": live,
    })
}

fn print_table(report: &Value) {
    println!(
        "\nchurn: malloc(64)+free, {} pairs per thread, median of {} runs (ns per pair per thread)\n",
        report["pairs_per_thread"], report["runs"]
    );
    println!(
        "| threads | configuration | ns/pair | × bare | × floor | × floor at +0 | events generated | counted | lost | daemon CPU s | daemon peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let show = |v: &Value| {
        if v.is_null() {
            "".to_owned()
        } else {
            v.to_string()
        }
    };
    for row in report["churn"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            row["threads"],
            row["configuration"].as_str().unwrap_or(""),
            row["ns_per_pair"].as_f64().unwrap_or(0.0),
            row["ratio_to_bare"].as_f64().unwrap_or(0.0),
            row["ratio_to_floor"].as_f64().unwrap_or(0.0),
            row["ratio_to_floor_at_entry"].as_f64().unwrap_or(0.0),
            row["events_generated"],
            show(&row["events_counted"]),
            show(&row["events_lost"]),
            row["daemon_cpu_secs"]
                .as_f64()
                .map_or(String::new(), |s| format!("{s:.2}")),
            row["daemon_peak_rss_kib"]
                .as_u64()
                .map_or(String::new(), |k| format!("{} MB", k / 1024)),
        );
    }
    let scope = &report["unselected_under_scope"];
    println!(
        "\nunselected under a scope: churn, 1 thread, {} pairs, median of {} runs, bare and under `heapwatch daemon --scope comm:hw-nobody`\n",
        scope["pairs"], scope["runs"]
    );
    println!("| bare ns/pair | unselected ns/pair | × bare | events counted |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {:.2} | {:.2} | {:.3} | {} |",
        scope["bare_ns_per_pair"].as_f64().unwrap_or(0.0),
        scope["unselected_ns_per_pair"].as_f64().unwrap_or(0.0),
        scope["ratio_to_bare"].as_f64().unwrap_or(0.0),
        scope["events_counted"],
    );
    let sustained = &report["sustained_churn"];
    println!(
        "\nsustained: churn, 2 threads flat out for {} s under `heapwatch daemon`\n",
        SUSTAINED_SECS
    );
    println!(
        "| pairs | ns/pair per thread | events counted | lost | daemon CPU s | daemon peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {:.0} | {:.0} | {} | {} | {:.1} | {} MB |",
        sustained["pairs"].as_f64().unwrap_or(0.0),
        sustained["ns_per_pair"].as_f64().unwrap_or(0.0),
        sustained["events_counted"],
        sustained["events_lost"],
        sustained["daemon_cpu_secs"].as_f64().unwrap_or(0.0),
        sustained["daemon_peak_rss_kib"].as_u64().unwrap_or(0) / 1024,
    );
    println!(
        "\n| live blocks made | tracked | events lost | daemon anon RSS, 1,000 blocks | holding | bytes per live allocation | daemon peak RSS | snapshot (top 1000, JSON) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in report["live_allocations"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} MB | {} MB | {:.0} | {} MB | {:.1} ms |",
            row["live_blocks"],
            row["live_blocks_tracked"],
            row["events_lost"],
            row["daemon_anon_rss_warm_kib"].as_u64().unwrap_or(0) / 1024,
            row["daemon_anon_rss_holding_kib"].as_u64().unwrap_or(0) / 1024,
            row["bytes_per_live_allocation"].as_f64().unwrap_or(0.0),
            row["daemon_peak_rss_kib"].as_u64().unwrap_or(0) / 1024,
            row["snapshot_top_1000_json_ms_median"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
}
