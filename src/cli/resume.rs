//! `runner resume`: run whatever is unfinished in the store.

use super::Exit;
use super::run::{self, RunArgs};

/// Run every unfinished item of the store (or of the named batches): tasks that were running are
/// polled again by their stored task ids, never submitted again.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these batches (default: all).
    #[arg(long = "batch")]
    pub batches: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs `runner resume`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let store = run::open_store(&args.run.store).await?;
    run::execute(&args.run, store, args.batches.clone(), Vec::new()).await
}
