//! `heapwatch ps`: the processes the daemon traces, by live bytes; with
//! `--all`, those it does not and why.

use std::{io::Write, path::PathBuf};

use clap::Args;

use super::snapshot::AnswerError;
use crate::{
    api::{ProcessListEntry, UntracedEntry},
    snapshot::{list, untraced},
};

/// Options of `heapwatch ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also list the processes not traced, and why (a runtime with an
    /// allocator of its own, a stripped static binary, an allocator not
    /// recognized).
    #[arg(long)]
    pub all: bool,
}

/// Prints the traced processes by live bytes, and with `--all` the others.
pub fn run(args: &PsArgs) -> Result<(), AnswerError> {
    let mut table = render(&list(&args.socket)?);
    if args.all {
        table.push('\n');
        table.push_str(&render_untraced(&untraced(&args.socket)?));
    }
    std::io::stdout()
        .write_all(table.as_bytes())
        .map_err(AnswerError::Write)
}

/// The list as a table, a process a line.
fn render(processes: &[ProcessListEntry]) -> String {
    let mut out = String::from("    PID  LIVE BYTES  LIVE BLOCKS  CONTAINER     COMMAND\n");
    for p in processes {
        out.push_str(&format!(
            "{:>7}  {:>10}  {:>11}  {:<12}  {}\n",
            p.pid,
            p.live_bytes,
            p.live_allocations,
            dash_if_empty(&p.container),
            p.comm
        ));
    }
    out
}

/// The processes not traced, a line each.
fn render_untraced(processes: &[UntracedEntry]) -> String {
    let mut out = String::from("    PID  NOT TRACED                CONTAINER     COMMAND\n");
    for p in processes {
        out.push_str(&format!(
            "{:>7}  {:<24}  {:<12}  {}\n",
            p.pid,
            p.reason,
            dash_if_empty(&p.container),
            p.comm
        ));
    }
    out
}

fn dash_if_empty(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_a_line_under_the_header() {
        let table = render(&[ProcessListEntry {
            pid: 42,
            comm: "leak".to_owned(),
            live_bytes: 1000,
            live_allocations: 10,
            container: String::new(),
        }]);
        assert_eq!(
            table,
            "    PID  LIVE BYTES  LIVE BLOCKS  CONTAINER     COMMAND\n     42        1000           10  -             leak\n"
        );
    }

    #[test]
    fn untraced_processes_with_their_reason_and_container() {
        let table = render_untraced(&[UntracedEntry {
            pid: 7,
            comm: "server".to_owned(),
            reason: "own_runtime".to_owned(),
            container: "0123456789ab".to_owned(),
        }]);
        assert_eq!(
            table.lines().nth(1),
            Some("      7  own_runtime               0123456789ab  server")
        );
    }
}
