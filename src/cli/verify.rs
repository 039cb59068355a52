//! `runner verify`: re-hash the archive against the store.

use std::path::PathBuf;

use super::run::{self, StoreArgs};
use super::{Exit, ExitError};
use crate::archive::LocalArchive;
use crate::scheduler;

/// Re-hash every archived image against the store; requeue what is missing or corrupt (the next
/// `resume` downloads it again with fresh URLs); rewrite each manifest from the store.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Archive folder.
    #[arg(long, env = "RUNNER_ARCHIVE", default_value = "archive")]
    pub archive: PathBuf,
    /// Only these batches (default: all).
    #[arg(long = "batch")]
    pub batches: Vec<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `runner verify`. Exit 0 when everything matches, 3 when something was requeued.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let store = run::open_store(&args.store).await?;
    let archive = LocalArchive::new(&args.archive);
    let mut batches = store.batches().await?;
    if !args.batches.is_empty() {
        batches.retain(|b| args.batches.contains(b));
    }
    let report = scheduler::verify(store.as_ref(), &archive, &batches)
        .await
        .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
    for (batch, p) in &report.requeued {
        eprintln!("{batch}/{}: {}; requeued", p.path, p.reason);
    }
    let (checked, missing, corrupt, temp) = (
        report.checked,
        report.missing,
        report.corrupt,
        report.temp_files_removed,
    );
    let clean = missing == 0 && corrupt == 0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"checked": checked, "missing": missing, "corrupt": corrupt, "temp_files_removed": temp, "clean": clean})
        );
    }
    eprintln!(
        "verified {checked} image(s): {missing} missing, {corrupt} corrupt, {temp} leftover temp file(s) removed"
    );
    store.close().await;
    Ok(if clean { Exit::Done } else { Exit::SomeFailed })
}
