//! `runner status`: where every batch stands.

use serde::Serialize;

use super::run::StoreArgs;
use super::{Exit, ExitError};
use crate::store::BatchStatus;

/// Items by state, images by outcome and verdict, failures by class, per batch. Works while a run
/// is going on (read-only).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this batch.
    #[arg(long)]
    pub batch: Option<String>,
    /// One JSON object on stdout (stable; see the README).
    #[arg(long)]
    pub json: bool,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// Format version of this document.
    pub version: u32,
    /// Per batch.
    pub batches: Vec<BatchStatus>,
    /// Items whose submit was ambiguous, over all batches.
    pub ambiguous_items: i64,
    /// Error answers seen, by code, over the store's history.
    pub errors_by_code: std::collections::BTreeMap<i64, i64>,
    /// Images submitted in the current quota day (calendar day in Asia/Shanghai), all batches.
    pub quota_used_images: i64,
    /// The latest run of `submit` or `resume`, if any.
    pub last_run: Option<crate::report::RunRecord>,
}

/// Runs `runner status`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let store = crate::store::open_read_only(&args.store.db)
        .await
        .map_err(|e| ExitError::new(Exit::Runtime, e.to_string()))?;
    let mut batches = store.status().await?;
    if let Some(b) = &args.batch {
        batches.retain(|s| &s.batch == b);
        if batches.is_empty() {
            return Err(ExitError::new(
                Exit::Invalid,
                format!("no batch named {b:?} in {}", args.store.db.display()),
            )
            .into());
        }
    }
    let doc = StatusDoc {
        version: 1,
        ambiguous_items: batches.iter().map(|b| b.ambiguous_items).sum(),
        errors_by_code: store.errors_by_code().await?,
        quota_used_images: store
            .images_submitted_since(crate::api::quota_day_start(crate::api::now_ms()))
            .await?,
        last_run: store.last_run().await?,
        batches,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(Exit::Done);
    }
    for b in &doc.batches {
        let total: i64 = b.items.values().sum();
        println!(
            "batch {}: {total} items, {} images requested",
            b.batch, b.images_requested
        );
        println!("  items:  {}", fmt_counts(&b.items));
        println!("  images: {}", fmt_counts(&b.images));
        println!("  verdicts: {}", fmt_counts(&b.verdicts));
        if !b.failed_by_class.is_empty() {
            println!("  failed by class: {}", fmt_counts(&b.failed_by_class));
            for f in store.failures(&b.batch).await?.iter().take(10) {
                let code = f.code.map(|c| format!(" {c}")).unwrap_or_default();
                println!(
                    "    {} [{}{code}] {}: {}",
                    f.key, f.class, f.message, f.prompt
                );
            }
        }
        if b.ambiguous_items > 0 {
            println!(
                "  ambiguous submits (resubmitted, at-least-once): {}",
                b.ambiguous_items
            );
        }
        match b.min_slack_ms {
            Some(ms) => println!(
                "  minimum URL slack (expiry - archive time): {:.1}s",
                ms as f64 / 1000.0
            ),
            None => println!("  minimum URL slack: (nothing archived yet)"),
        }
    }
    if doc.batches.is_empty() {
        println!("no batches in {}", args.store.db.display());
    }
    Ok(Exit::Done)
}

fn fmt_counts(m: &std::collections::BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
