//! A flame graph (SVG, inferno) of the live bytes of a report's sites.

use inferno::flamegraph::{self, Options};

use super::ProcessReport;

/// The folded stacks (root first, `;`-separated, then live bytes), one per site.
pub fn folded_stacks(processes: &[ProcessReport]) -> Vec<String> {
    let mut lines = Vec::new();
    for process in processes {
        for site in &process.sites {
            let mut frames: Vec<String> = site
                .stack
                .iter()
                .flat_map(|f| {
                    f.calls().map(|(function, _, _)| {
                        function
                            .map_or_else(|| format!("0x{:x}", f.address), str::to_owned)
                            .replace(';', ":")
                    })
                })
                .collect();
            frames.reverse();
            let stack = if frames.is_empty() {
                "[no stack]".to_owned()
            } else {
                frames.join(";")
            };
            lines.push(format!("{stack} {}", site.live_bytes));
        }
    }
    lines
}

/// The SVG flame graph of live bytes by stack.
pub fn render_flamegraph(processes: &[ProcessReport]) -> std::io::Result<Vec<u8>> {
    let lines = folded_stacks(processes);
    let mut options = Options::default();
    options.title = "heapwatch: live heap by allocation stack".to_owned();
    options.count_name = "bytes".to_owned();
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(std::io::Error::other)?;
    Ok(svg)
}
