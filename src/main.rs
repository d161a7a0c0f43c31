//! The `nnmend` command: parses arguments, runs one subcommand, maps failures to exit
//! codes (0 success, 1 runtime error, 2 usage error, 3 failed gate).

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`nnmend inspect m.onnx | head`) is the reader's choice, not a failure.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
