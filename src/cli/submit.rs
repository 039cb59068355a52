//! `runner submit FILE...`: load job files into the store (idempotent), then run until done.

use std::path::PathBuf;

use super::Exit;
use super::run::{self, RunArgs};
use crate::jobfile::{self, LoadOptions};

/// Load job files (adding only items the store does not have yet), then submit, poll and archive
/// until every item is done, the time box ends, or the daily quota runs out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job files (YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Treat warnings (Latin letters, unusual symbols) as errors.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs `runner submit`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    // Every file is validated before the store is touched: nothing half-loaded.
    let opts = LoadOptions {
        strict: args.strict,
    };
    let mut jobs = Vec::new();
    let mut invalid = false;
    for path in &args.files {
        match jobfile::load(path, &opts) {
            Ok(job) => {
                for w in &job.warnings {
                    eprintln!("{w}");
                }
                jobs.push(job);
            }
            Err(e) => {
                for d in &e.diagnostics {
                    eprintln!("{d}");
                }
                invalid = true;
            }
        }
    }
    if invalid {
        eprintln!("error: invalid job file(s); nothing was submitted");
        return Ok(Exit::Invalid);
    }
    let store = run::open_store(&args.run.store).await?;
    let mut batches = Vec::new();
    let mut loaded = Vec::new();
    // Each job is dropped once its items are stored: the run reads them back page by page, so a
    // large batch is not held in memory for the whole run.
    for job in jobs {
        let summary = store
            .load_items(
                &job.batch,
                job.archive,
                &job.path.display().to_string(),
                &job.items,
            )
            .await?;
        eprintln!(
            "{}: {} items ({} new, {} already in the store)",
            job.path.display(),
            job.items.len(),
            summary.added,
            summary.existing
        );
        if !batches.contains(&job.batch) {
            batches.push(job.batch.clone());
        }
        loaded.push((job.batch.clone(), summary));
    }
    run::execute(&args.run, store, batches, loaded).await
}
