//! Reports of a recording: the data (serializable as JSON), built from a
//! session in one place ([`draft`]), and its renderings: text in valgrind's
//! words, JSON, pprof and flame graphs.

mod diff;
mod draft;
mod flamegraph;
mod pprof;
mod pprof_read;
mod sampled;

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

pub use diff::grown_since;
pub use draft::{ReportDraft, SiteSelection, draft, draft_of};
pub use flamegraph::{folded_stacks, render_flamegraph};
pub use pprof::{ProfileTime, SAMPLE_TYPES, render_pprof};
pub use pprof_read::{PprofError, read_pprof};
pub use sampled::SampledStacks;

use serde::Serialize;

use crate::{
    stacks::{StackStatus, SymFrame},
    tracker::{ProcessState, SiteStats},
};

/// Everything `heapwatch record` found.
#[derive(Clone, Debug, Serialize)]
pub struct RecordReport {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// How the command ended.
    pub status: CommandStatus,
    /// The allocator library probed.
    pub allocator_library: String,
    /// Optional allocator functions the library lacks (not probed).
    pub absent_functions: Vec<String>,
    /// Other allocators' files probed: in the command's reach, or in the
    /// reach of a program it exec'd (a root's own libc).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_allocators: Vec<String>,
    /// Allocators' files found but not probed, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unprobed_allocators: Vec<String>,
    /// The command's process first, then any followed children.
    pub processes: Vec<ProcessReport>,
    /// How long the command ran, in seconds.
    pub duration_secs: f64,
    /// Records the kernel could not write (ring buffer full): figures are inexact when non-zero.
    pub lost_records: u64,
    /// Allocations whose entry could not be paired with their return (thread state refused).
    pub unpaired_calls: u64,
    /// Records that could not be decoded.
    pub malformed_records: u64,
}

/// How the recorded command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

/// One process's heap summary.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Its command name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// False when it was still running as the recording ended (a followed child).
    pub exited: bool,
    /// Bytes still allocated at exit.
    pub in_use_bytes: u64,
    /// Blocks still allocated at exit.
    pub in_use_blocks: u64,
    /// Successful allocating calls.
    pub allocs: u64,
    /// Frees of allocated blocks.
    pub frees: u64,
    /// Bytes allocated in all.
    pub bytes_allocated: u64,
    /// Frees of blocks allocated before tracing began.
    pub unmatched_frees: u64,
    /// Frees by exiting threads of blocks the program had freed already:
    /// glibc emptying its per-thread cache (not a miss, not in `frees`).
    #[serde(default)]
    pub thread_cache_frees: u64,
    /// True when the figures are not exact (blocks refused past a cap, frees
    /// or allocations missed).
    #[serde(default)]
    pub inexact: bool,
    /// True when its allocator was attached after it had started using it
    /// (the first process of an allocator's file heapwatch had not seen):
    /// blocks allocated before are unseen.
    #[serde(default)]
    pub attached_late: bool,
    /// Set when the sites count only blocks at least this many seconds old (`--min-age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_older_than_secs: Option<f64>,
    /// Set when the sites are those whose live bytes grew over the last
    /// this many seconds (`--since`), by growth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_secs: Option<f64>,
    /// Set when the sites are those whose live bytes grew since a base
    /// snapshot (`--base`): its bytes in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_in_use_bytes: Option<u64>,
    /// Set when heapwatch traced the process itself for only this many
    /// seconds (no daemon): allocations made before are unseen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traced_secs: Option<f64>,
    /// Sites still holding memory, largest first.
    pub sites: Vec<SiteReport>,
}

/// An allocation site still holding memory.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SiteReport {
    /// Bytes it still holds.
    pub live_bytes: u64,
    /// Blocks it still holds.
    pub live_blocks: u64,
    /// Allocations it made.
    pub allocs: u64,
    /// Bytes it allocated.
    pub bytes_allocated: u64,
    /// Its stack, immediate caller first.
    pub stack: Vec<SymFrame>,
    /// How much of the stack is known.
    #[serde(default)]
    pub stack_status: StackStatus,
    /// For a site whose callers were not sampled: the full stack sampled
    /// most often at the same call site, when one was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sampled_stack: Vec<SymFrame>,
    /// Age in seconds of its oldest live block (snapshots of a running process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_secs: Option<f64>,
    /// Growth of its live bytes over the leak window, bytes per second (snapshots from the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_sec: Option<f64>,
    /// True when the leak rule flags the site (snapshots from the daemon).
    #[serde(default)]
    pub leak_suspect: bool,
    /// How much its live bytes grew over the span asked (`--since`), or
    /// since the base snapshot (`--base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grown_bytes: Option<i64>,
}

impl ProcessReport {
    /// The heap summary of a process's state, without its sites.
    pub fn summary(pid: u32, state: &ProcessState, exited: bool) -> Self {
        let c = state.counters();
        Self {
            pid,
            comm: None,
            exited,
            in_use_bytes: state.live_bytes(),
            in_use_blocks: state.live_blocks(),
            allocs: c.allocs,
            frees: c.frees,
            bytes_allocated: c.bytes_allocated,
            unmatched_frees: c.unmatched_frees,
            thread_cache_frees: c.thread_cache_frees,
            inexact: state.inexact(),
            attached_late: c.attached_late,
            only_older_than_secs: None,
            since_secs: None,
            base_in_use_bytes: None,
            traced_secs: None,
            sites: Vec::new(),
        }
    }
}

impl SiteReport {
    /// A site's figures and its stack (no age, no growth, not suspect).
    pub fn new(stats: &SiteStats, stack: Vec<SymFrame>, stack_status: StackStatus) -> Self {
        Self {
            live_bytes: stats.live_bytes,
            live_blocks: stats.live_blocks,
            allocs: stats.allocs,
            bytes_allocated: stats.bytes_allocated,
            stack_status,
            ..Self::with_stack(stack)
        }
    }

    /// A site with this full stack and no figures yet.
    pub fn with_stack(stack: Vec<SymFrame>) -> Self {
        Self {
            live_bytes: 0,
            live_blocks: 0,
            allocs: 0,
            bytes_allocated: 0,
            stack,
            stack_status: StackStatus::Full,
            sampled_stack: Vec::new(),
            oldest_age_secs: None,
            growth_bytes_per_sec: None,
            leak_suspect: false,
            grown_bytes: None,
        }
    }

    /// Takes in the figures of `other`, a site found to have the same stack
    /// (two walks that differed only past where the stack is cut).
    pub fn absorb(&mut self, other: &SiteReport) {
        // Saturating: the figures may come from a file (`--base`).
        self.live_bytes = self.live_bytes.saturating_add(other.live_bytes);
        self.live_blocks = self.live_blocks.saturating_add(other.live_blocks);
        self.allocs = self.allocs.saturating_add(other.allocs);
        self.bytes_allocated = self.bytes_allocated.saturating_add(other.bytes_allocated);
        self.oldest_age_secs = match (self.oldest_age_secs, other.oldest_age_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.growth_bytes_per_sec = match (self.growth_bytes_per_sec, other.growth_bytes_per_sec) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.leak_suspect |= other.leak_suspect;
        self.grown_bytes = match (self.grown_bytes, other.grown_bytes) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The renderings of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// valgrind's heap summary and the sites, as text.
    Text,
    /// The whole report as JSON.
    Json,
    /// A gzipped pprof profile (inuse/alloc space and objects).
    Pprof,
    /// An SVG flame graph of live bytes by stack.
    Flamegraph,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
            Self::Pprof => "pprof",
            Self::Flamegraph => "flamegraph",
        })
    }
}

/// The report in `format`.
pub fn render(report: &RecordReport, format: Format, top: usize) -> std::io::Result<Vec<u8>> {
    match format {
        Format::Text => Ok(render_text(report, top).into_bytes()),
        Format::Json => to_json(report),
        Format::Pprof => render_pprof(
            &report.processes,
            ProfileTime {
                taken: SystemTime::now(),
                duration: Some(Duration::from_secs_f64(report.duration_secs)),
            },
        ),
        Format::Flamegraph => render_flamegraph(&report.processes),
    }
}

/// A saved snapshot read back: a process report as `snapshot --format
/// json` writes it, the first process of `record`'s JSON report, or a pprof
/// profile (gzipped or not).
pub fn parse_saved(bytes: &[u8]) -> Result<ProcessReport, String> {
    let text_start = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if text_start != Some(&b'{') {
        return read_pprof(bytes).map_err(|e| e.to_string());
    }
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not JSON: {e}"))?;
    let process = match json.get("processes") {
        Some(processes) => processes
            .get(0)
            .cloned()
            .ok_or("its report has no process")?,
        None => json,
    };
    serde_json::from_value(process).map_err(|e| format!("it is not a heapwatch report: {e}"))
}

/// A snapshot of one running process in `format` (JSON: the process report).
pub fn render_snapshot(
    process: &ProcessReport,
    format: Format,
    top: usize,
) -> std::io::Result<Vec<u8>> {
    let processes = std::slice::from_ref(process);
    match format {
        Format::Text => Ok(render_snapshot_text(process, top).into_bytes()),
        Format::Json => to_json(process),
        Format::Pprof => render_pprof(
            processes,
            ProfileTime {
                taken: SystemTime::now(),
                duration: process.traced_secs.map(Duration::from_secs_f64),
            },
        ),
        Format::Flamegraph => render_flamegraph(processes),
    }
}

/// A snapshot as text: what was traced, then the heap summary and the sites.
fn render_snapshot_text(process: &ProcessReport, top: usize) -> String {
    let mut out = String::new();
    let tag = format!("=={}==", process.pid);
    if let Some(secs) = process.traced_secs {
        let _ = writeln!(
            out,
            "{tag} heapwatch: no daemon: traced process {} for {secs:.1} s; allocations made before tracing began are unseen",
            process.pid
        );
    }
    if let Some(secs) = process.only_older_than_secs {
        let _ = writeln!(
            out,
            "{tag} heapwatch: sites count only blocks allocated at least {secs:.0} s ago"
        );
    }
    if let Some(base) = process.base_in_use_bytes {
        let _ = writeln!(
            out,
            "{tag} heapwatch: the sites whose live bytes grew since the base snapshot (which had {} bytes in use), most first",
            thousands(base)
        );
    }
    if let Some(secs) = process.since_secs {
        let _ = writeln!(
            out,
            "{tag} heapwatch: the sites whose live bytes grew over the last {secs:.0} s, most first"
        );
    }
    if process.attached_late {
        let _ = writeln!(
            out,
            "{tag} heapwatch: traced from when its allocator was attached, after it started: blocks allocated before are unseen"
        );
    }
    if process.inexact {
        let _ = writeln!(
            out,
            "{tag} heapwatch: figures are inexact (frees or allocations were missed, or blocks refused past a cap)"
        );
    }
    render_process(&mut out, process, top, "now");
    out
}

fn to_json(value: &impl Serialize) -> std::io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

/// Renders the report as valgrind's heap summary, `top` sites per process.
pub fn render_text(report: &RecordReport, top: usize) -> String {
    let mut out = String::new();
    let tag = report.processes.first().map_or(0, |p| p.pid);
    let _ = write!(
        out,
        "=={tag}== heapwatch: traced the malloc family of {}",
        report.allocator_library
    );
    if !report.absent_functions.is_empty() {
        let _ = write!(out, " (absent: {})", report.absent_functions.join(", "));
    }
    if !report.other_allocators.is_empty() {
        let _ = write!(out, ", and of {}", report.other_allocators.join(", "));
    }
    for unprobed in &report.unprobed_allocators {
        let _ = write!(
            out,
            "\n=={tag}== heapwatch: not probed, the figures of processes using it are incomplete: {unprobed}"
        );
    }
    let _ = writeln!(out, "\n=={tag}==");
    for process in &report.processes {
        let when = if process.exited {
            "at exit"
        } else {
            "when recording ended"
        };
        render_process(&mut out, process, top, when);
    }
    for (count, what) in [
        (
            report.lost_records,
            "records lost (ring buffer full): the figures above are inexact",
        ),
        (
            report.unpaired_calls,
            "allocations unpaired (thread state refused): the figures above are inexact",
        ),
        (report.malformed_records, "malformed records ignored"),
    ] {
        if count > 0 {
            let _ = writeln!(out, "=={tag}== heapwatch: {} {what}", thousands(count));
        }
    }
    out
}

fn render_process(out: &mut String, p: &ProcessReport, top: usize, when: &str) {
    let tag = format!("=={}==", p.pid);
    let _ = writeln!(out, "{tag} HEAP SUMMARY:");
    let _ = writeln!(
        out,
        "{tag}     in use {when}: {} bytes in {} blocks",
        thousands(p.in_use_bytes),
        thousands(p.in_use_blocks)
    );
    let _ = writeln!(
        out,
        "{tag}   total heap usage: {} allocs, {} frees, {} bytes allocated",
        thousands(p.allocs),
        thousands(p.frees),
        thousands(p.bytes_allocated)
    );
    if p.unmatched_frees > 0 {
        let _ = writeln!(
            out,
            "{tag}   {} frees of blocks not seen allocated (allocated before tracing began)",
            thousands(p.unmatched_frees)
        );
    }
    let _ = writeln!(out, "{tag}");
    for site in p.sites.iter().take(top) {
        render_site(out, &tag, site, when);
    }
    if p.sites.len() > top {
        let rest = &p.sites[top..];
        let bytes: u64 = rest.iter().map(|s| s.live_bytes).sum();
        let _ = writeln!(
            out,
            "{tag} ... and {} more sites holding {} bytes (raise --top to see them)",
            thousands(rest.len() as u64),
            thousands(bytes)
        );
        let _ = writeln!(out, "{tag}");
    }
    if p.in_use_blocks == 0 {
        let _ = writeln!(
            out,
            "{tag} All heap blocks were freed -- no leaks are possible"
        );
        let _ = writeln!(out, "{tag}");
    }
}

fn render_site(out: &mut String, tag: &str, site: &SiteReport, when: &str) {
    let mut facts = String::new();
    if let Some(age) = site.oldest_age_secs {
        let _ = write!(facts, " (oldest {age:.0} s old)");
    }
    if let Some(rate) = site.growth_bytes_per_sec {
        let _ = write!(facts, " (growing {rate:.0} B/s)");
    }
    if site.leak_suspect {
        facts.push_str(" [LEAK SUSPECT]");
    }
    if let Some(grown) = site.grown_bytes {
        let sign = if grown < 0 { "-" } else { "+" };
        let _ = write!(facts, " ({sign}{} bytes)", thousands(grown.unsigned_abs()));
    }
    let _ = writeln!(
        out,
        "{tag} {} bytes in {} blocks still in use {when}{facts}, allocated at:",
        thousands(site.live_bytes),
        thousands(site.live_blocks)
    );
    for (i, line) in site.stack.iter().flat_map(describe).enumerate() {
        let lead = if i == 0 { "at" } else { "by" };
        let _ = writeln!(out, "{tag}    {lead} {line}");
    }
    match (site.stack.is_empty(), site.stack_status) {
        (true, StackStatus::NotCaptured) => {
            let _ = writeln!(
                out,
                "{tag}    (stack lost: the ring buffer was full when it was first seen)"
            );
        }
        (true, _) => {
            let _ = writeln!(out, "{tag}    (no stack captured)");
        }
        (false, StackStatus::Unsampled) => {
            let _ = writeln!(out, "{tag}    (callers not sampled: --stack-sample)");
            if let Some(callers) = site.sampled_stack.get(1..).filter(|c| !c.is_empty()) {
                let _ = writeln!(out, "{tag}    (the callers sampled most often here:)");
                for line in callers.iter().flat_map(describe) {
                    let _ = writeln!(out, "{tag}    by {line}");
                }
            }
        }
        (false, _) => {}
    }
    let _ = writeln!(out, "{tag}");
}

/// A frame's lines as valgrind writes them: one per call, inlined ones
/// first, all at the frame's address.
fn describe(frame: &SymFrame) -> Vec<String> {
    frame
        .calls()
        .map(|(function, file, line)| {
            let place = match (file, line, &frame.module) {
                (Some(file), Some(line), _) => format!(" ({}:{line})", basename(file)),
                (_, _, Some(module)) => format!(" (in {module})"),
                _ => String::new(),
            };
            let function = function.unwrap_or("???");
            format!("0x{:X}: {function}{place}", frame.address)
        })
        .collect()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `1234567` as `1,234,567`, as valgrind prints numbers.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: u32) -> SymFrame {
        SymFrame {
            address: 0x1136,
            module: Some("/tmp/leak".to_owned()),
            build_id: None,
            file_offset: Some(0x1136),
            function: Some(function.to_owned()),
            file: Some("/src/leak.c".to_owned()),
            line: Some(line),
            mapping: None,
            inlined: Vec::new(),
        }
    }

    fn process(in_use_blocks: u64, sites: Vec<SiteReport>) -> ProcessReport {
        ProcessReport {
            pid: 42,
            comm: Some("leak".to_owned()),
            exited: true,
            in_use_bytes: in_use_blocks * 4000,
            in_use_blocks,
            allocs: 100_000,
            frees: 100_000 - in_use_blocks,
            bytes_allocated: 400_000_000,
            unmatched_frees: 0,
            thread_cache_frees: 0,
            inexact: false,
            attached_late: false,
            only_older_than_secs: None,
            since_secs: None,
            base_in_use_bytes: None,
            traced_secs: None,
            sites,
        }
    }

    fn report(processes: Vec<ProcessReport>) -> RecordReport {
        RecordReport {
            command: vec!["./leak".to_owned()],
            status: CommandStatus::Exited(0),
            allocator_library: "/lib/libc.so.6".to_owned(),
            absent_functions: vec![],
            other_allocators: vec![],
            unprobed_allocators: vec![],
            duration_secs: 1.5,
            processes,
            lost_records: 0,
            unpaired_calls: 0,
            malformed_records: 0,
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(400_000_000), "400,000,000");
    }

    #[test]
    fn renders_valgrinds_summary_and_the_sites() {
        let site = SiteReport {
            live_bytes: 400_000_000,
            live_blocks: 100_000,
            allocs: 100_000,
            bytes_allocated: 400_000_000,
            stack: vec![frame("leak", 8), frame("main", 15)],
            stack_status: StackStatus::Full,
            sampled_stack: vec![],
            oldest_age_secs: None,
            growth_bytes_per_sec: None,
            leak_suspect: false,
            grown_bytes: None,
        };
        let text = render_text(&report(vec![process(100_000, vec![site])]), 10);
        assert!(text.starts_with("==42== heapwatch: traced the malloc family of /lib/libc.so.6\n"));
        assert!(text.contains("==42==     in use at exit: 400,000,000 bytes in 100,000 blocks\n"));
        assert!(text.contains(
            "==42==   total heap usage: 100,000 allocs, 0 frees, 400,000,000 bytes allocated\n"
        ));
        assert!(text.contains("still in use at exit, allocated at:\n==42==    at 0x1136: leak (leak.c:8)\n==42==    by 0x1136: main (leak.c:15)\n"));
        assert!(!text.contains("no leaks are possible"));
    }

    #[test]
    fn says_when_everything_was_freed_and_what_was_lost() {
        let mut r = report(vec![process(0, vec![])]);
        r.lost_records = 1500;
        let text = render_text(&r, 10);
        assert!(text.contains("==42== All heap blocks were freed -- no leaks are possible"));
        assert!(text.contains("1,500 records lost"));
    }

    #[test]
    fn a_snapshot_says_what_it_saw_and_each_sites_facts() {
        let site = |status, growth| SiteReport {
            live_bytes: 2048,
            live_blocks: 2,
            allocs: 2,
            bytes_allocated: 2048,
            stack: match status {
                StackStatus::NotCaptured => Vec::new(),
                _ => vec![frame("leak_step", 33)],
            },
            stack_status: status,
            sampled_stack: vec![],
            oldest_age_secs: Some(61.4),
            growth_bytes_per_sec: growth,
            leak_suspect: growth.is_some(),
            grown_bytes: None,
        };
        let sampled_here = SiteReport {
            sampled_stack: vec![frame("leak_step", 33), frame("main", 47)],
            ..site(StackStatus::Unsampled, None)
        };
        let mut p = process(
            4,
            vec![
                site(StackStatus::Full, Some(10240.0)),
                site(StackStatus::Unsampled, None),
                site(StackStatus::NotCaptured, None),
                sampled_here,
            ],
        );
        p.exited = false;
        p.traced_secs = Some(10.0);
        p.only_older_than_secs = Some(60.0);
        p.inexact = true;
        let text =
            String::from_utf8(render_snapshot(&p, Format::Text, 10).expect("text")).expect("utf-8");
        for line in [
            "==42== heapwatch: no daemon: traced process 42 for 10.0 s; allocations made before tracing began are unseen\n",
            "==42== heapwatch: sites count only blocks allocated at least 60 s ago\n",
            "==42== heapwatch: figures are inexact",
            "==42==     in use now: 16,000 bytes in 4 blocks\n",
            "==42== 2,048 bytes in 2 blocks still in use now (oldest 61 s old) (growing 10240 B/s) [LEAK SUSPECT], allocated at:\n",
            "==42==    at 0x1136: leak_step (leak.c:33)\n==42==    (callers not sampled: --stack-sample)\n",
            "(stack lost: the ring buffer was full when it was first seen)\n",
            "==42==    (callers not sampled: --stack-sample)\n==42==    (the callers sampled most often here:)\n==42==    by 0x1136: main (leak.c:47)\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&render_snapshot(&p, Format::Json, 10).expect("json"))
                .expect("parses");
        assert_eq!(json["sites"][1]["stack_status"], "unsampled");
        assert!(json["sites"][1].get("sampled_stack").is_none(), "{json}");
        assert_eq!(json["sites"][3]["sampled_stack"][1]["function"], "main");
        assert_eq!(
            text.matches("(the callers sampled most often here:)")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(json["traced_secs"], 10.0);
    }

    #[test]
    fn cuts_the_site_list_at_top() {
        let site = |n| SiteReport {
            live_bytes: n,
            live_blocks: 1,
            allocs: 1,
            bytes_allocated: n,
            stack: vec![],
            stack_status: StackStatus::Full,
            sampled_stack: vec![],
            oldest_age_secs: None,
            growth_bytes_per_sec: None,
            leak_suspect: false,
            grown_bytes: None,
        };
        let text = render_text(
            &report(vec![process(3, vec![site(30), site(20), site(10)])]),
            1,
        );
        assert!(text.contains("30 bytes in 1 blocks"));
        assert!(!text.contains("20 bytes in 1 blocks"));
        assert!(text.contains("... and 2 more sites holding 30 bytes"));
    }
}
