//! Command-line interface: one clap `Args` struct and one `run` per subcommand, and the exit codes
//! every command shares. No business logic lives here.

use clap::{Parser, Subcommand};

pub mod export;
pub mod plan;
pub mod report;
pub mod resume;
pub mod retry;
pub mod run;
pub mod sim;
pub mod status;
pub mod submit;
pub mod validate;
pub mod verify;

/// Exit codes shared by every command (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done = 0,
    /// 1: runtime error.
    Runtime = 1,
    /// 2: invalid input or usage.
    Invalid = 2,
    /// 3: finished, with some items failed.
    SomeFailed = 3,
    /// 4: stopped with work remaining (quota, time box, interrupt, store busy).
    WorkRemaining = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error that carries its own exit code (for example invalid input: 2, store busy: 4).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    /// The exit code to leave with.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
}

impl ExitError {
    /// An error that exits with `exit` after printing `message`.
    pub fn new(exit: Exit, message: impl Into<String>) -> ExitError {
        ExitError {
            exit,
            message: message.into(),
        }
    }
}

/// Batch runner for the ERNIE-ViLG (文心一格) text-to-image API.
#[derive(Debug, Parser)]
#[command(name = "runner", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check job files: every problem at once, with file:line:col.
    Validate(validate::Args),
    /// Show the expanded items of a job file, totals, and how long the batch will take.
    Plan(plan::Args),
    /// Load job files into the store, then submit, poll and archive until done.
    Submit(submit::Args),
    /// Run whatever is unfinished in the store.
    Resume(resume::Args),
    /// Where every batch stands: items by state, images by outcome.
    Status(status::Args),
    /// Put failed items back in the queue.
    Retry(retry::Args),
    /// Re-hash the archive against the store; requeue what is missing or corrupt.
    Verify(verify::Args),
    /// Write a static HTML report: thumbnails by template, size and variant, with verdicts.
    Report(report::Args),
    /// One row per image with its metadata and path, as JSON lines or CSV.
    Export(export::Args),
    /// Run the ERNIE-ViLG simulator (wire protocol, limits, failures, expiring URLs).
    Sim(sim::Args),
}

/// Entry point of the binary: parses arguments, sets up tracing, runs the command and maps its
/// result to an exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Invalid.into()
            } else {
                Exit::Done.into()
            };
        }
    };
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Runtime.into();
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            if let Some(e) = err.downcast_ref::<ExitError>() {
                eprintln!("error: {}", e.message);
                return e.exit.into();
            }
            eprintln!("error: {err:#}");
            Exit::Runtime.into()
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Validate(args) => validate::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Submit(args) => submit::run(args).await,
        Command::Resume(args) => resume::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Retry(args) => retry::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Sim(args) => sim::run(args).await,
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
