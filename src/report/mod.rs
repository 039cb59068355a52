//! Seeing a batch: the static HTML gallery of `runner report`, the rows of `runner export`, and
//! the Prometheus text-format metrics of `--metrics FILE`.
//!
//! Layout of a report folder:
//!
//! ```text
//! <out>/index.html                    every batch with its totals, linking to its page
//! <out>/<batch>/index.html            the batch: totals, time line, verdict filter, the grid
//! <out>/<batch>/thumbs/<key>-<n>.png  thumbnails (256 px on the long side by default)
//! ```
//!
//! The pages load nothing from the network: styles and the filter script are inline (and pinned
//! by a Content-Security-Policy), thumbnails are files beside the page. The store holds the data
//! ([`crate::store::Store::report_groups`], [`crate::store::Store::report_cells`]); this module
//! only lays it out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::api::{Size, Verdict, Version};
use crate::archive::ArchiveError;
use crate::store::{ImageState, ItemState, StoreError};

pub mod export;
mod gallery;
pub mod html;
pub mod metrics;
pub mod thumb;

pub use gallery::{BatchReport, ReportOptions, ReportSummary, generate};

/// Errors of the report layer.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name from the store would escape the report or archive folder.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A file of the report could not be written.
    #[error("report: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// There is no batch of that name.
    #[error("no batch named {0:?} in the store")]
    NoSuchBatch(String),
}

impl ReportError {
    /// Whether the user asked for something that does not exist (exit code 2), rather than a
    /// failure of the disk or the store.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, ReportError::NoSuchBatch(_))
    }
}

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

/// The placeholders of a template in the order they first appear (`{{` and `}}` are literal
/// braces, not placeholders).
pub fn placeholders(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                for n in chars.by_ref() {
                    if n == '}' {
                        break;
                    }
                    name.push(n);
                }
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
            _ => {}
        }
    }
    out
}

/// The var a template's grid is pivoted on, if any: the last placeholder, when the template
/// has several and all its items share one size, version, image_num and variant (so the grid
/// reads as a table of the template's two last axes rather than a single column).
pub fn pivot_var(template: &str, columns: u32) -> Option<String> {
    let names = placeholders(template);
    if columns == 1 && names.len() >= 2 {
        names.last().cloned()
    } else {
        None
    }
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

/// A temporary file beside `dest`, readable by everyone (mode 0644): report pages, thumbnails,
/// exports and metrics are read by other users (a web server, node_exporter), unlike the store.
pub(crate) fn temp_beside(dest: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".runner-tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}

/// Moves a finished temporary file over `dest`: fsynced first when `durable`, and never through
/// a symlink planted at `dest`.
pub(crate) fn persist(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    durable: bool,
) -> Result<(), ReportError> {
    let io_err = |op, source| ReportError::Io {
        op,
        path: dest.to_path_buf(),
        source,
    };
    if durable {
        tmp.as_file().sync_all().map_err(|e| io_err("sync", e))?;
    }
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ArchiveError::Unsafe(format!("{} is a symlink", dest.display())).into());
    }
    tmp.persist(dest)
        .map_err(|e| io_err("rename into", e.error))?;
    if durable {
        #[cfg(unix)]
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync folder of", e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically (temp file beside it, fsync, rename), mode 0644.
pub(crate) fn write_public(dest: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    use std::io::Write;
    let mut tmp = temp_beside(dest).map_err(|source| ReportError::Io {
        op: "create a temp file for",
        path: dest.to_path_buf(),
        source,
    })?;
    tmp.write_all(bytes).map_err(|source| ReportError::Io {
        op: "write",
        path: dest.to_path_buf(),
        source,
    })?;
    persist(tmp, dest, true)
}

/// Unix ms as RFC 3339 in UTC with milliseconds (`2026-11-21T08:00:00.000Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_in_order_without_literal_braces() {
        assert_eq!(
            placeholders("{animal}在{place}奔跑"),
            vec!["animal", "place"]
        );
        assert_eq!(placeholders("{{x}} {b}{a}{b}"), vec!["b", "a"]);
        assert_eq!(placeholders("no vars"), Vec::<String>::new());
        assert_eq!(pivot_var("{a}{b}{c}", 1), Some("c".into()));
        assert_eq!(pivot_var("{a}{b}", 2), None);
        assert_eq!(pivot_var("{a}", 1), None);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_763_712_000_123), "2025-11-21T08:00:00.123Z");
    }
}
