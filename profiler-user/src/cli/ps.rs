//! `heapwatch ps`: the processes the daemon traces, by live bytes.

use std::{io::Write, path::PathBuf};

use clap::Args;

use super::snapshot::AnswerError;
use crate::{api::ProcessListEntry, snapshot::list};

/// Options of `heapwatch ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Prints the traced processes by live bytes.
pub fn run(args: &PsArgs) -> Result<(), AnswerError> {
    let table = render(&list(&args.socket)?);
    std::io::stdout()
        .write_all(table.as_bytes())
        .map_err(AnswerError::Write)
}

/// The list as a table, a process a line.
fn render(processes: &[ProcessListEntry]) -> String {
    let mut out = String::from("    PID  LIVE BYTES  LIVE BLOCKS  COMMAND\n");
    for p in processes {
        out.push_str(&format!(
            "{:>7}  {:>10}  {:>11}  {}\n",
            p.pid, p.live_bytes, p.live_allocations, p.comm
        ));
    }
    out
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
        }]);
        assert_eq!(
            table,
            "    PID  LIVE BYTES  LIVE BLOCKS  COMMAND\n     42        1000           10  leak\n"
        );
    }
}
