//! The OOM killer's victims: each one's last report — its sites if it was
//! traced, its memory and growth from tier 0 either way — written under
//! the state directory and logged: a post-mortem no other tool leaves.
//! Drafted by the applier while it still holds the victim's state (its
//! exit follows), symbolized and written by a thread of its own.

use std::{
    convert::Infallible,
    fs, io,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    procinfo::ProcessLabels,
    report::{ProcessReport, ReportDraft},
    stacks::Symbols,
};

/// What the applier knew of a victim when the OOM killer chose it.
pub struct Victim {
    /// The process.
    pub pid: u32,
    /// Its labels, read then (empty if it was already gone).
    pub labels: ProcessLabels,
    /// Its anonymous resident bytes, as the kernel counted them at the kill.
    pub anon_bytes: u64,
    /// Its anonymous memory's growth over tier 0's window, bytes per second
    /// (`None` when tier 0 does not watch: scope `all` or selectors).
    pub anon_growth_rate: Option<f64>,
    /// Its sites, when it was traced.
    pub draft: Option<ReportDraft>,
}

/// A victim's report, as written.
#[derive(Debug, Serialize)]
struct PostMortem {
    pid: u32,
    comm: String,
    unit: String,
    killed_at_unix_ms: u64,
    anon_bytes: u64,
    anon_growth_bytes_per_second: Option<f64>,
    /// Its heap when it was killed; `None` when it was not traced.
    heap: Option<ProcessReport>,
}

/// Starts the writer of victims' reports under `state_dir`/oom.
pub fn spawn(state_dir: &Path) -> (mpsc::Sender<Victim>, thread::JoinHandle<()>) {
    let dir = state_dir.join("oom");
    let (victims, received) = mpsc::channel::<Victim>();
    let thread = thread::spawn(move || {
        let mut symbols = Symbols::default();
        for victim in received {
            let pid = victim.pid;
            match write(&dir, &report(victim, &mut symbols)) {
                Ok(path) => tracing::warn!(
                    pid,
                    report = %path.display(),
                    "the OOM killer chose this process; its last report is written"
                ),
                Err(err) => tracing::error!(
                    pid,
                    dir = %dir.display(),
                    error = %err,
                    "the OOM killer chose this process; writing its report failed (is the state directory writable?)"
                ),
            }
        }
    });
    (victims, thread)
}

fn report(victim: Victim, symbols: &mut Symbols) -> PostMortem {
    let killed_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    PostMortem {
        pid: victim.pid,
        comm: victim.labels.comm,
        unit: victim.labels.unit,
        killed_at_unix_ms,
        anon_bytes: victim.anon_bytes,
        anon_growth_bytes_per_second: victim.anon_growth_rate,
        heap: victim.draft.map(|draft| {
            draft
                .finish(|stacks| Ok::<_, Infallible>(symbols.symbolize_all(&stacks)))
                .unwrap_or_else(|never| match never {})
        }),
    }
}

/// Writes `report` as `DIR/<unix ms>-<pid>.json` (the directory made if
/// need be, readable by the daemon's group alone); returns its path.
fn write(dir: &Path, report: &PostMortem) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let path = dir.join(format!("{}-{}.json", report.killed_at_unix_ms, report.pid));
    let text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(&path, text + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untraced_victims_report_says_its_memory_and_growth() {
        let dir =
            std::env::temp_dir().join(format!("heapwatch-post-mortem-{}", std::process::id()));
        let (victims, writer) = spawn(&dir);
        victims
            .send(Victim {
                pid: 42,
                labels: ProcessLabels {
                    comm: "hog".to_owned(),
                    ..ProcessLabels::default()
                },
                anon_bytes: 1 << 30,
                anon_growth_rate: Some(1e6),
                draft: None,
            })
            .expect("the writer runs");
        drop(victims);
        writer.join().expect("the writer ends");
        let written: Vec<_> = fs::read_dir(dir.join("oom"))
            .expect("oom/ made")
            .map(|entry| entry.expect("an entry").path())
            .collect();
        assert_eq!(written.len(), 1, "{written:?}");
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&written[0]).expect("read")).expect("JSON");
        assert_eq!(json["pid"], 42);
        assert_eq!(json["comm"], "hog");
        assert_eq!(json["anon_bytes"], 1u64 << 30);
        assert_eq!(json["anon_growth_bytes_per_second"], 1e6);
        assert!(json["heap"].is_null(), "{json}");
        assert!(written[0].to_string_lossy().ends_with("-42.json"));
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
