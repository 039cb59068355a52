//! The archive: where verified images, their sidecars and each batch's manifest are kept.
//!
//! Layout under the archive root, the same for every implementation:
//!
//! ```text
//! <batch>/manifest.jsonl                   one line per archived, skipped or lost image
//! <batch>/images/<kk>/<key>-<n>.png        the image (kk = first two characters of the key)
//! <batch>/images/<kk>/<key>-<n>.json       its sidecar
//! <batch>/.tmp/                            downloads in progress (cleared at the start of a run)
//! ```
//!
//! An image is verified ([`png`]: a whole PNG, every chunk's CRC-32, the requested size), written
//! to a temporary file, made durable, moved into place, and only then marked archived in the
//! store. The manifest is rewritten from the store at the start and end of every run and appended
//! to as images are archived in between, so it always agrees with the store at rest.
//!
//! - [`Archive`]: the interface the scheduler and `verify` use.
//! - [`local`]: the folder implementation (O_DIRECT, fsync, rename), the embedded default.
//! - [`record`]: what is written about each image ([`ImageRecord`], [`ImageState`]).
//! - [`png`]: verification of downloaded bytes.
//! - [`verify`]: re-hashing archived images against their records.
//! - [`atomic`]: atomic file writes, shared with the report.
//!
//! The archive knows nothing of the store: it is handed records and gives back what it found.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use crate::api::Size;
use crate::client::ImageBuf;

pub mod atomic;
mod direct;
pub mod local;
pub mod png;
mod record;
pub mod verify;

pub use local::LocalArchive;
pub use png::{hash_file, verify_png, verify_png_bytes};
pub use record::{ImageRecord, ImageState};

/// Errors of the archive layer.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation failed (disk full, no permission, ...).
    #[error("archive: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The downloaded bytes are not the image that was asked for.
    #[error("bad image: {0}")]
    BadImage(String),
    /// A name would escape the archive, or a symlink was found where a folder must be.
    #[error("unsafe archive path: {0}")]
    Unsafe(String),
}

impl ArchiveError {
    /// Whether the download itself was bad (retry the download), rather than the disk.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, ArchiveError::BadImage(_))
    }
}

impl From<atomic::WriteError> for ArchiveError {
    fn from(e: atomic::WriteError) -> Self {
        match e {
            atomic::WriteError::Io { op, path, source } => ArchiveError::Io { op, path, source },
            atomic::WriteError::Symlink(path) => refused(&path, "is a symlink"),
        }
    }
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The error for a path the archive will not use, and why.
fn refused(path: &Path, why: &str) -> ArchiveError {
    ArchiveError::Unsafe(format!("{} {why}", path.display()))
}

/// What `verify` found for one archived image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// Present, same hash.
    Ok,
    /// No file.
    Missing,
    /// The bytes differ from the recorded hash.
    Corrupt,
}

/// An image in place in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its path relative to the batch folder.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its length.
    pub bytes: u64,
}

/// A batch's manifest being rewritten: records pushed in order, then put in place at once.
pub trait ManifestSink: Send {
    /// Adds one record (in order), and writes its sidecar if it is missing.
    fn push(&mut self, record: &ImageRecord) -> Result<()>;
    /// Makes the new manifest durable and puts it in place of the old one.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// Where images are kept: one implementation per kind of storage. Every method that writes makes
/// its write durable before it returns.
pub trait Archive: Send + Sync + fmt::Debug {
    /// Where the archive is, for messages.
    fn location(&self) -> String;

    /// Removes downloads left half-done by an earlier run; returns how many.
    fn clear_temp<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<usize>>;

    /// An image already in place that verifies as `size`: a crash between putting it in place
    /// and the store's record leaves one. One that does not verify is removed; `None` then, and
    /// when there is none.
    fn adopt<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        idx: u32,
        size: Size,
    ) -> BoxFuture<'a, Result<Option<Stored>>>;

    /// Verifies downloaded bytes (a complete PNG of `size`) and puts them in place durably;
    /// returns the image's path relative to the batch folder.
    fn store_image<'a>(
        &'a self,
        batch: &'a str,
        key: &'a str,
        idx: u32,
        image: ImageBuf,
        size: Size,
    ) -> BoxFuture<'a, Result<String>>;

    /// Writes what is known of an image in place: its sidecar, and its line at the end of the
    /// batch's manifest.
    fn record(&self, record: ImageRecord) -> BoxFuture<'_, Result<()>>;

    /// A new manifest for `batch`, to be filled from the store's records in order.
    fn manifest<'a>(&'a self, batch: &'a str) -> Result<Box<dyn ManifestSink + 'a>>;

    /// Re-hashes an archived image against its recorded hash.
    fn check<'a>(
        &'a self,
        batch: &'a str,
        rel: &'a str,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<FileCheck>>;

    /// Removes an archived image (and its sidecar) whose bytes no longer match the store, so the
    /// next run downloads it again instead of adopting it.
    fn remove_image<'a>(&'a self, batch: &'a str, rel: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// Whether `name` is a safe batch name (the job file's rule, checked again here because it names
/// a folder).
pub fn is_safe_batch(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_safe_key(key: &str) -> bool {
    key.len() >= 8 && key.len() <= 64 && key.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Path of an image relative to its batch folder.
pub fn image_rel_path(key: &str, idx: u32) -> Result<String> {
    if !is_safe_key(key) {
        return Err(ArchiveError::Unsafe(format!("item key {key:?}")));
    }
    Ok(format!("images/{}/{key}-{idx}.png", &key[..2]))
}
