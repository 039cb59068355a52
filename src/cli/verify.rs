//! `runner verify`: re-hash the archive against the store.

use std::path::PathBuf;

use super::run::{self, StoreArgs};
use super::{Exit, ExitError};
use futures::TryStreamExt;

use crate::archive::{Archive, FileCheck};
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
    let archive = Archive::new(&args.archive);
    let mut batches = store.batches().await?;
    if !args.batches.is_empty() {
        batches.retain(|b| args.batches.contains(b));
    }
    let (mut checked, mut missing, mut corrupt, mut temp) = (0u64, 0u64, 0u64, 0usize);
    for batch in &batches {
        // Problems are few: collect them while streaming, requeue after.
        let mut problems = Vec::new();
        let mut records = store.image_records_stream(batch);
        while let Some(rec) = records.try_next().await? {
            let (Some(path), Some(sha)) = (&rec.path, &rec.sha256) else {
                continue;
            };
            checked += 1;
            let check = archive
                .check(batch, path, sha)
                .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
            let reason = match check {
                FileCheck::Ok => continue,
                FileCheck::Missing => {
                    missing += 1;
                    "missing from the archive"
                }
                FileCheck::Corrupt => {
                    corrupt += 1;
                    // Removed before it is requeued: a resume adopts a valid PNG it finds in
                    // place (a download renamed just before a crash), and would take this one.
                    archive
                        .remove_image(batch, path)
                        .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
                    "hash mismatch"
                }
            };
            eprintln!("{batch}/{path}: {reason}; requeued");
            problems.push((rec.item_key.clone(), rec.index, reason));
        }
        drop(records);
        for (key, index, reason) in problems {
            store.requeue_image(&key, index, reason).await?;
        }
        temp += archive
            .clear_temp(batch)
            .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
        scheduler::rewrite_manifest(&store, &archive, batch)
            .await
            .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
    }
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
