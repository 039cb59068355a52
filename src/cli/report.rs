//! `runner report`: the static HTML gallery of a batch.

use std::path::PathBuf;

use super::run::StoreArgs;
use super::{Exit, ExitError};
use crate::report::{self, ReportOptions};

/// Write a self-contained HTML report: per batch a grid of thumbnails grouped by the job file's
/// templates, sizes and variants, each with its verdict, prompt, size and tags; failed and
/// blocked items as placeholders with their reason; totals and the time line of the run. Opens
/// the store read-only, so it works while a run is going on. Regenerating skips thumbnails
/// whose source is unchanged.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Archive folder the images are read from.
    #[arg(long, env = "RUNNER_ARCHIVE", default_value = "archive")]
    pub archive: PathBuf,
    /// Report folder: `index.html`, and per batch `<batch>/index.html` and `<batch>/thumbs/`.
    #[arg(long, env = "RUNNER_REPORT", default_value = "report")]
    pub out: PathBuf,
    /// Only this batch (the top-level index still lists every batch).
    #[arg(long)]
    pub batch: Option<String>,
    /// Long side of the thumbnails, in pixels.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=2048))]
    pub thumb_size: u32,
    /// Print one JSON summary object on stdout instead of the index's path.
    #[arg(long)]
    pub json: bool,
}

/// Runs `runner report`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let store = crate::store::open_read_only(&args.store.db)
        .await
        .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
    let opts = ReportOptions {
        out: args.out.clone(),
        archive: args.archive.clone(),
        batch: args.batch.clone(),
        thumb_side: args.thumb_size,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let summary = match report::generate(store.as_ref(), &opts).await {
        Ok(s) => s,
        Err(e) if e.is_invalid_input() => {
            return Err(ExitError::new(
                Exit::Invalid,
                format!("{e} ({})", args.store.db.display()),
            )
            .into());
        }
        Err(e) => return Err(ExitError::new(Exit::Runtime, e.to_string()).into()),
    };
    for b in &summary.batches {
        eprintln!(
            "{}: {} cards, {} thumbnails made, {} unchanged → {}",
            b.batch,
            b.cards,
            b.thumbs_made,
            b.thumbs_unchanged,
            b.page.display()
        );
        if b.thumbs_failed > 0 {
            eprintln!(
                "warning: {}: {} archived image(s) could not be read (shown as placeholders); `runner verify` fetches them again:",
                b.batch, b.thumbs_failed
            );
            for p in &b.problems {
                eprintln!("  {p}");
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", summary.index.display());
    }
    store.close().await;
    Ok(Exit::Done)
}
