//! `runner retry`: put failed items back in the queue.

use super::run::{self, StoreArgs};
use super::{Exit, ExitError};

/// Requeue failed items (all, or those of one error class) so the next `resume` submits them again.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Requeue every failed item.
    #[arg(long, conflicts_with = "class")]
    pub failed: bool,
    /// Requeue failed items of this class only: transient, rate, concurrency, quota, token,
    /// permanent, timeout, fatal.
    #[arg(long)]
    pub class: Option<String>,
    /// Only these batches (default: all).
    #[arg(long = "batch")]
    pub batches: Vec<String>,
}

const CLASSES: [&str; 8] = [
    "transient",
    "rate",
    "concurrency",
    "quota",
    "token",
    "permanent",
    "timeout",
    "fatal",
];

/// Runs `runner retry`.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    if !args.failed && args.class.is_none() {
        return Err(ExitError::new(
            Exit::Invalid,
            "say what to retry: --failed or --class CLASS",
        )
        .into());
    }
    if let Some(c) = &args.class
        && !CLASSES.contains(&c.as_str())
    {
        return Err(ExitError::new(
            Exit::Invalid,
            format!("unknown class {c:?}; one of: {}", CLASSES.join(", ")),
        )
        .into());
    }
    let store = run::open_store(&args.store).await?;
    let n = store
        .requeue_failed(&args.batches, args.class.as_deref())
        .await?;
    println!("requeued {n} item(s); run `runner resume` to submit them");
    store.close().await;
    Ok(Exit::Done)
}
