//! The `nnmend` command: parses arguments, runs one subcommand, maps failures to exit
//! codes (0 success, 1 runtime error, 2 usage error, 3 failed gate, 130 interrupted).

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // A signal kills the process without running destructors, so the temporary files
    // of outputs being written would stay behind: the handler deletes them first.
    // Failing to install it (only possible if another handler exists) costs only that.
    let _ = ctrlc::set_handler(|| {
        nnmend::atomic::remove_in_flight();
        let _ = writeln!(
            std::io::stderr(),
            "interrupted; outputs still being written were removed"
        );
        std::process::exit(cli::EXIT_INTERRUPTED);
    });
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
            match cli::hint(&err) {
                Some(hint) => {
                    let _ = writeln!(std::io::stderr(), "error: {err:#}; {hint}");
                }
                None => {
                    let _ = writeln!(std::io::stderr(), "error: {err:#}");
                }
            }
            if err.chain().any(|c| c.downcast_ref::<cli::UsageError>().is_some()) {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::from(cli::EXIT_ERROR)
            }
        }
    }
}
