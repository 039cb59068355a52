//! The `runner` binary: sets up tracing and hands over to [`runner::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    runner::cli::main()
}
