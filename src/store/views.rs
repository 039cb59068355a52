//! The neutral rows the store hands to the report, the exports and `status`: it produces them,
//! the report lays them out.

use std::collections::BTreeMap;

use super::ItemState;
use crate::api::{Size, Verdict, Version};
use crate::archive::ImageState;

/// One column of a report group: everything that makes an item besides its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Requested size.
    pub size: Size,
    /// Model version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Variant (`repeat`).
    pub variant: u32,
}

/// A group of a batch's items, shown as one grid: the items of one template (rows: the
/// combinations of its vars), or plain prompts that share the same columns (rows: the prompts).
/// Columns are the sizes, versions and variants of the group, in file order; or, for a template
/// of one such column and several vars, the values of its last var ([`Pivot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The template, or `None` for plain prompts.
    pub template: Option<String>,
    /// The sizes, versions, image_nums and variants, in file order (the grid's columns unless
    /// the group is pivoted).
    pub columns: Vec<Column>,
    /// The var whose values are the grid's columns instead.
    pub pivot: Option<Pivot>,
    /// Number of rows.
    pub rows: u32,
    /// Number of items.
    pub items: u32,
}

/// The var of a template whose values are the columns of its grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pivot {
    /// The var's name.
    pub var: String,
    /// Its values, in file order: column `i` holds the items with the `i`-th value.
    pub values: Vec<String>,
}

/// What an item failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Error class (`permanent`, `timeout`, ...).
    pub class: String,
    /// API error code, when there was one.
    pub code: Option<i64>,
    /// The message.
    pub message: String,
}

/// An image of an item, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellImage {
    /// Position within the task.
    pub index: u32,
    /// Archived, skipped, lost, or still listed.
    pub state: ImageState,
    /// Moderation verdict.
    pub verdict: Verdict,
    /// Path relative to the batch's archive folder (archived images).
    pub path: Option<String>,
    /// SHA-256 of the archived bytes.
    pub sha256: Option<String>,
    /// Why a download failed or the image was lost.
    pub error: Option<String>,
}

/// One card of the report: an image, or an item without images (pending, running, failed), in
/// report order (group, row, column, image index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Index of the group in [`crate::store::Store::report_groups`].
    pub group: u32,
    /// Row within the group.
    pub row: u32,
    /// Column within the group.
    pub column: u32,
    /// Item key.
    pub key: String,
    /// Prompt.
    pub prompt: String,
    /// Requested size.
    pub size: Size,
    /// Model version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Variant.
    pub variant: u32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Template variables (empty for plain prompts).
    pub vars: BTreeMap<String, String>,
    /// State of the item.
    pub state: ItemState,
    /// Why the item failed (state `failed`), or the last error of an item still in the queue.
    pub failure: Option<Failure>,
    /// The image, when the task succeeded.
    pub image: Option<CellImage>,
}

/// Submits and finishes in one minute of a batch's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimelineBin {
    /// Start of the minute, Unix ms.
    pub minute_ms: i64,
    /// Tasks submitted.
    pub submitted: u32,
    /// Tasks that finished successfully.
    pub finished: u32,
    /// Items that failed.
    pub failed: u32,
}

/// A run of `submit` or `resume`, from the store's run records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    /// Run id.
    pub id: i64,
    /// `submit` or `resume`.
    pub command: String,
    /// Start, Unix ms.
    pub started_at: i64,
    /// End, Unix ms (`null` while running, or when the process died).
    pub ended_at: Option<i64>,
    /// Exit code (`null` while running, or when the process died).
    pub exit_code: Option<i64>,
}

/// One row of `runner export`: an archived, skipped or lost image with its item's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportRow {
    /// Batch name.
    pub batch: String,
    /// Item key.
    pub item_key: String,
    /// Position within the task.
    pub index: u32,
    /// Prompt.
    pub prompt: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Model version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Variant.
    pub variant: u32,
    /// Moderation verdict.
    pub verdict: Verdict,
    /// `archived`, `skipped` or `lost`.
    pub state: ImageState,
    /// Path relative to the archive root (`<batch>/images/...`), for archived images.
    pub path: Option<String>,
    /// Hex SHA-256 of the file.
    pub sha256: Option<String>,
    /// Size of the file in bytes.
    pub bytes: Option<i64>,
    /// Task id.
    pub task_id: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// The template the prompt was made from.
    pub template: Option<String>,
    /// Why a lost image was lost.
    pub error: Option<String>,
    /// When the task was submitted (RFC 3339, UTC).
    pub submitted_at: Option<String>,
    /// When the task was seen finished.
    pub finished_at: Option<String>,
    /// When the image was archived.
    pub archived_at: Option<String>,
    /// When the image's URL expired or expires.
    pub url_expires_at: Option<String>,
}

/// A failed item with its reason, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedItem {
    /// Item key.
    pub key: String,
    /// Its prompt.
    pub prompt: String,
    /// Error class (empty when none was recorded).
    pub class: String,
    /// API error code, if any.
    pub code: Option<i64>,
    /// The reason.
    pub message: String,
}
