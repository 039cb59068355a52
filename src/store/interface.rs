//! The store's interface: what the scheduler, the commands and the report ask of a store,
//! whatever engine holds it. A backend is a folder beside [`super::sqlite`] that implements
//! [`Store`] and [`Reports`]; no caller changes.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::views::{Cell, ExportRow, FailedItem, Group, RunRecord, TimelineBin};
use super::{
    BatchStatus, EventKind, FetchImage, ImageRecord, ItemState, ListedImage, LoadSummary,
    PendingItem, Recovery, RunningTask, StoreError,
};
use crate::api::ErrorClass;
use crate::client::TokenCache;
use crate::jobfile::{ArchivePolicy, Item};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store of batches, items, images, events and runs. Every write is committed before its
/// future resolves: a caller may act on it at once.
pub trait Store: Queries + Reports + TokenCache + Send + Sync + std::fmt::Debug {
    /// Where the store is (a path, or a database URL without its password), for messages.
    fn location(&self) -> String;

    /// Stops the writer (after the writes already queued) and closes the pool, checkpointing
    /// the WAL.
    fn close<'a>(&'a self) -> BoxFuture<'a, ()>;

    /// Adds a job file's batch and items. Items already present are left as they are (so a file
    /// loaded twice adds nothing); the batch's archive policy follows the latest file.
    fn load_items<'a>(
        &'a self,
        batch: &'a str,
        policy: ArchivePolicy,
        source: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<LoadSummary>>;

    /// Puts items left in `submitting` by a dead process back to `pending`, counting each as
    /// ambiguous: the API may or may not have created its task, and offers no way to look it up.
    fn recover<'a>(&'a self) -> BoxFuture<'a, Result<Recovery>>;

    /// Commits the intent to submit, before the POST.
    fn mark_submitting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Records the task id of an answered submit.
    fn mark_running<'a>(&'a self, key: &'a str, task_id: &'a str) -> BoxFuture<'a, Result<i64>>;

    /// A submit that got no usable answer (timeout, dropped connection, garbled answer): the task
    /// may exist. Back to pending with backoff, counted as ambiguous.
    fn mark_submit_ambiguous<'a>(
        &'a self,
        key: &'a str,
        detail: &'a str,
        retry_at: i64,
    ) -> BoxFuture<'a, Result<()>>;

    /// A submit the API refused with an error that allows a retry (rate, concurrency, quota,
    /// transient): back to pending, not before `retry_at`. `counts` says whether the attempt
    /// counts against the retry budget (limits do not: they are the scheduler's business).
    fn mark_submit_refused<'a>(
        &'a self,
        key: &'a str,
        code: Option<i64>,
        msg: &'a str,
        retry_at: Option<i64>,
        counts: bool,
    ) -> BoxFuture<'a, Result<()>>;

    /// Terminal failure of an item (from `submitting`, `running` or `pending`).
    fn mark_failed<'a>(
        &'a self,
        key: &'a str,
        class: ErrorClass,
        code: Option<i64>,
        msg: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// A running task failed in a way that allows a new submit (server timeout 216303, model
    /// failure): back to pending, not before `retry_at`.
    fn mark_task_retry<'a>(
        &'a self,
        key: &'a str,
        code: Option<i64>,
        msg: &'a str,
        retry_at: i64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Records a successful task: its images are listed with their URLs and verdicts, each kept
    /// or skipped as `keep` says (the batch's policy, applied by the scheduler). The item moves to
    /// `fetching`, or straight to `done` when nothing is left to download. Returns the images to
    /// download.
    fn mark_succeeded<'a>(
        &'a self,
        key: &'a str,
        images: &'a [ListedImage],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>>;

    /// Stores fresh URLs for the listed images of an item (after an expired URL).
    fn refresh_urls<'a>(
        &'a self,
        key: &'a str,
        images: &'a [ListedImage],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>>;

    /// Records a verified image on disk; finishes the item when it was its last image.
    /// Returns the record for the manifest.
    fn mark_archived<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        path: &'a str,
        sha256: &'a str,
        bytes: i64,
    ) -> BoxFuture<'a, Result<ImageRecord>>;

    /// Records that an image's URL is dead and could not be refreshed.
    fn mark_lost<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Counts a failed download attempt of an image.
    fn note_fetch_error<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        error: &'a str,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Puts an archived image whose file is missing or corrupt back to `listed`, and its item
    /// back to `fetching`, so the next run downloads it again (after refreshing its URL).
    fn requeue_image<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Puts failed items back to pending (all, or those of one error class). Returns how many.
    fn requeue_failed<'a>(
        &'a self,
        batches: &'a [String],
        class: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Records an event that belongs to no state change (a quota park).
    fn record_event<'a>(
        &'a self,
        batch: Option<&'a str>,
        key: Option<&'a str>,
        kind: EventKind,
        code: Option<i64>,
        detail: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Starts a run record; returns its id.
    fn start_run<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<i64>>;

    /// Closes a run record.
    fn end_run<'a>(
        &'a self,
        id: i64,
        exit_code: i32,
        summary: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
}

/// The store's queries of the work: what is pending, running and left to download, and where
/// each batch stands.
pub trait Queries: Send + Sync {
    /// The archive policy of every batch.
    fn batch_policies<'a>(&'a self) -> BoxFuture<'a, Result<HashMap<String, ArchivePolicy>>>;

    /// Names of every batch in the store, in creation order.
    fn batches<'a>(&'a self) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Up to `limit` pending items of `batches` (all batches when empty) with seq > `after`, in
    /// batch and file order. Items in backoff are included with their `retry_at`.
    fn pending_items<'a>(
        &'a self,
        batches: &'a [String],
        after: Option<(&'a str, i64)>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<PendingItem>>>;

    /// One pending item by key.
    fn pending_item<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PendingItem>>>;

    /// Submit attempts of an item so far.
    fn item_attempts<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<i64>>;

    /// Counts items of `batches` (all when empty) in a state.
    fn count_items<'a>(
        &'a self,
        batches: &'a [String],
        state: ItemState,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Every running task (and every succeeded task with images still to fetch) of `batches`.
    fn running_tasks<'a>(
        &'a self,
        batches: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<RunningTask>>>;

    /// Listed images still to download, soonest-expiring first.
    fn images_to_fetch<'a>(
        &'a self,
        batches: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>>;

    /// [`Store::image_records`] one at a time, without holding them all (a batch may have
    /// hundreds of thousands).
    fn image_records_stream<'a>(&'a self, batch: &'a str) -> BoxStream<'a, Result<ImageRecord>>;

    /// Where each batch stands.
    fn status<'a>(&'a self) -> BoxFuture<'a, Result<Vec<BatchStatus>>>;

    /// Failed items of a batch with their reasons (key, prompt, class, code, message).
    fn failures<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<FailedItem>>>;

    /// Error answers seen, by code, over the whole history.
    fn errors_by_code<'a>(&'a self) -> BoxFuture<'a, Result<BTreeMap<i64, i64>>>;

    /// Archive records (archived, skipped and lost images) of a batch, in item order: the
    /// manifest's content.
    fn image_records<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<ImageRecord>>> {
        Box::pin(self.image_records_stream(batch).try_collect())
    }
}

/// The store's read-only queries for the report, the exports, the metrics and `status`.
pub trait Reports: Send + Sync {
    /// The templates of a batch with how many distinct (size, version, image_num, variant)
    /// columns each has, in file order: what the report decides its pivots from.
    fn report_templates<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<(String, u32)>>>;

    /// The groups of a batch's report, in file order, each with its columns; a template named in
    /// `pivots` (template → var) is pivoted on that var. Empty when the batch has no items.
    fn report_groups<'a>(
        &'a self,
        batch: &'a str,
        pivots: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Vec<Group>>>;

    /// Every item of a batch with its images (one [`Cell`] per image; one per item that has no
    /// images yet or failed), in report order: group, row, column, image index. Streamed, so a
    /// large batch is never held in memory.
    fn report_cells<'a>(
        &'a self,
        batch: &'a str,
        pivots: &'a BTreeMap<String, String>,
    ) -> BoxStream<'a, Result<Cell>>;

    /// Submits, finishes and failures of a batch per minute, from its event history, oldest
    /// first; minutes without any are left out.
    fn report_timeline<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<TimelineBin>>>;

    /// Runs that overlap the time span `[from_ms, to_ms]` (a run still going, or whose process
    /// died, counts as open-ended), oldest first.
    fn runs_between<'a>(
        &'a self,
        from_ms: i64,
        to_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>>;

    /// The latest run record, if any.
    fn last_run<'a>(&'a self) -> BoxFuture<'a, Result<Option<RunRecord>>>;

    /// Images submitted since `since_ms` (the sum of `image_num` over answered submits), what
    /// the API's daily quota counts. Submits that got no answer are not counted: the API may
    /// have counted them too.
    fn images_submitted_since<'a>(&'a self, since_ms: i64) -> BoxFuture<'a, Result<i64>>;

    /// Archived, skipped and lost images of one batch (or of every batch) with their items'
    /// metadata, by batch and file order. Streamed.
    fn export_rows<'a>(&'a self, batch: Option<&'a str>) -> BoxStream<'a, Result<ExportRow>>;
}
