//! The store's typed vocabulary: states and event kinds (bound as parameters, never spelled in
//! SQL), and the rows the scheduler works with.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;

use super::StoreError;
use crate::api::{Size, Verdict, Version};

/// State of an item (one submit). Stored as TEXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Waiting to be submitted.
    Pending,
    /// Committed just before the POST: if the process dies here, the submit is ambiguous.
    Submitting,
    /// Submitted; the task id is known.
    Running,
    /// The task succeeded; images are being archived.
    Fetching,
    /// Every image archived, skipped by policy, or lost.
    Done,
    /// Terminal failure, with class and message.
    Failed,
}

impl ItemState {
    /// Every state, in lifecycle order.
    pub const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::Submitting,
        ItemState::Running,
        ItemState::Fetching,
        ItemState::Done,
        ItemState::Failed,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Submitting => "submitting",
            ItemState::Running => "running",
            ItemState::Fetching => "fetching",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
        }
    }
}

impl FromStr for ItemState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        ItemState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("item state {s:?}")))
    }
}

/// What an event records. Stored as TEXT in the `events` table, which `status`, the report's
/// time line, the metrics and the quota ledger read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job file added items to a batch (detail: how many).
    Loaded,
    /// A submit whose answer never came (detail: why); the item is submitted again.
    Ambiguous,
    /// A submit was answered with a task id (detail: the id).
    Submitted,
    /// A submit was refused with an error that allows a retry.
    SubmitError,
    /// An item failed for good.
    Failed,
    /// A task failed in a way a new submit may mend; the item is pending again.
    TaskRetry,
    /// A task succeeded (detail: how many images it listed).
    Finished,
    /// Fresh URLs were stored for an item's images.
    UrlRefresh,
    /// An image was archived (detail: its index).
    Archived,
    /// An image was lost (detail: why).
    Lost,
    /// An archived image was found missing or corrupt and put back to be downloaded.
    Requeued,
    /// A failed item was put back in the queue by `runner retry`.
    Retry,
    /// Submits were parked until the quota reset (error 17).
    QuotaParked,
}

impl EventKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Loaded => "loaded",
            EventKind::Ambiguous => "ambiguous",
            EventKind::Submitted => "submitted",
            EventKind::SubmitError => "submit_error",
            EventKind::Failed => "failed",
            EventKind::TaskRetry => "task_retry",
            EventKind::Finished => "finished",
            EventKind::UrlRefresh => "url_refresh",
            EventKind::Archived => "archived",
            EventKind::Lost => "lost",
            EventKind::Requeued => "requeued",
            EventKind::Retry => "retry",
            EventKind::QuotaParked => "quota_parked",
        }
    }
}

/// What loading a job file into the store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    /// Items new to the store.
    pub added: u64,
    /// Items the store already had (left untouched).
    pub existing: u64,
}

/// An item as the scheduler needs it to submit.
#[derive(Debug, Clone)]
pub struct PendingItem {
    /// Item key.
    pub key: String,
    /// Batch name.
    pub batch: String,
    /// Order within the batch.
    pub seq: i64,
    /// Prompt.
    pub prompt: String,
    /// Requested size.
    pub size: Size,
    /// Model version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Submit attempts so far.
    pub attempts: i64,
    /// Not before this time (backoff), Unix ms.
    pub retry_at: Option<i64>,
}

/// A submitted task that has not reached its final state.
#[derive(Debug, Clone)]
pub struct RunningTask {
    /// Item key.
    pub key: String,
    /// Batch name.
    pub batch: String,
    /// Task id from the submit answer.
    pub task_id: String,
    /// Images per submit (slots held).
    pub image_num: u8,
    /// When the submit was answered, Unix ms.
    pub submitted_at: i64,
    /// Whether the task already succeeded and only needs fresh URLs (state `fetching`).
    pub fetching: bool,
}

/// One image of a successful task, as listed by a query answer.
#[derive(Debug, Clone)]
pub struct ListedImage {
    /// Position in the answer (sub-tasks flattened).
    pub idx: u32,
    /// Signed URL.
    pub url: String,
    /// When the URL stops working, Unix ms.
    pub url_expires_at: i64,
    /// Width reported by the API.
    pub width: u32,
    /// Height reported by the API.
    pub height: u32,
    /// Moderation verdict.
    pub verdict: Verdict,
    /// Whether the batch's policy keeps its bytes; one it does not keep is recorded skipped.
    pub keep: bool,
}

/// An image to download.
#[derive(Debug, Clone)]
pub struct FetchImage {
    /// Item key.
    pub item_key: String,
    /// Position within the task.
    pub idx: u32,
    /// Batch name.
    pub batch: String,
    /// Task id.
    pub task_id: String,
    /// Signed URL.
    pub url: String,
    /// Unix ms.
    pub url_expires_at: i64,
    /// Verdict.
    pub verdict: Verdict,
    /// The size requested by the item (what the bytes must decode to).
    pub size: Size,
    /// Download attempts so far.
    pub attempts: i64,
}

/// Where one batch stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStatus {
    /// Batch name.
    pub batch: String,
    /// Items by state (every state present, zero or not).
    pub items: BTreeMap<String, i64>,
    /// Images by state.
    pub images: BTreeMap<String, i64>,
    /// Images by verdict.
    pub verdicts: BTreeMap<String, i64>,
    /// Failed items by error class.
    pub failed_by_class: BTreeMap<String, i64>,
    /// Items whose submit was ambiguous at least once (resubmitted under the at-least-once policy).
    pub ambiguous_items: i64,
    /// Images the batch asks for (sum of image_num).
    pub images_requested: i64,
    /// Smallest (URL expiry − archive time) seen, ms.
    pub min_slack_ms: Option<i64>,
}

/// Item keys with their ambiguity, as reported by recovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Items found in `submitting`: the process died between committing the intent and recording
    /// the answer. They were put back to `pending` and will be submitted again.
    pub ambiguous: Vec<String>,
}
