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

use std::path::{Path, PathBuf};

use crate::archive::{ArchiveError, atomic};
use crate::store::StoreError;

pub mod export;
mod gallery;
pub mod html;
pub mod metrics;
pub mod thumb;

pub use crate::store::views::{
    Cell, CellImage, Column, ExportRow, Failure, Group, Pivot, RunRecord, TimelineBin,
};
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

impl From<atomic::WriteError> for ReportError {
    fn from(e: atomic::WriteError) -> Self {
        match e {
            atomic::WriteError::Io { op, path, source } => ReportError::Io { op, path, source },
            atomic::WriteError::Symlink(path) => {
                ArchiveError::Unsafe(format!("{} is a symlink", path.display())).into()
            }
        }
    }
}

/// Writes `bytes` to `dest` atomically and durably, readable by everyone (a web server,
/// node_exporter), unlike the store.
pub(crate) fn write_public(dest: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    Ok(atomic::write(
        dest,
        None,
        atomic::Mode::Public,
        bytes,
        true,
    )?)
}

impl ReportError {
    /// Whether the user asked for something that does not exist (exit code 2), rather than a
    /// failure of the disk or the store.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, ReportError::NoSuchBatch(_))
    }
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

pub use crate::api::rfc3339_ms;

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
