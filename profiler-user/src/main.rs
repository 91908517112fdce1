//! The `heapwatch` binary: parses the command line and dispatches.

use clap::Parser;
use heapwatch::{
    cli::{Cli, Command, record},
    report::CommandStatus,
};

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Record(args) => match record(&args) {
            Ok(CommandStatus::Exited(code)) => std::process::exit(code),
            Ok(CommandStatus::Killed(signal)) => std::process::exit(128 + signal),
            Err(err) => {
                eprintln!("heapwatch: {}", error_chain(&err));
                std::process::exit(err.exit_code());
            }
        },
    }
}

/// The error and its causes, joined as "what: why: deeper why".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
