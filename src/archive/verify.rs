//! `runner verify`'s check of one batch: every archived image re-hashed against its record; a
//! corrupt one removed, so that the next run downloads it again instead of adopting it.

use futures::{Stream, TryStreamExt};

use super::{Archive, ArchiveError, FileCheck, ImageRecord};

/// An archived image that is not what its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Item key.
    pub item_key: String,
    /// Position within the task.
    pub index: u32,
    /// Path relative to the batch folder.
    pub path: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// What checking a batch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchCheck {
    /// Archived images checked.
    pub checked: u64,
    /// Of those, missing from the archive.
    pub missing: u64,
    /// Of those, with other bytes than recorded (removed from the archive).
    pub corrupt: u64,
    /// Each problem, in record order.
    pub problems: Vec<Problem>,
}

/// Checks every archived image among a batch's `records` (skipped and lost ones have no file).
/// Problems are few: they are collected while the records stream by.
pub async fn check_batch<S, E>(
    archive: &dyn Archive,
    batch: &str,
    records: S,
) -> Result<BatchCheck, E>
where
    S: Stream<Item = Result<ImageRecord, E>>,
    E: From<ArchiveError>,
{
    let mut out = BatchCheck::default();
    let mut records = std::pin::pin!(records);
    while let Some(rec) = records.try_next().await? {
        let (Some(path), Some(sha)) = (&rec.path, &rec.sha256) else {
            continue;
        };
        out.checked += 1;
        let reason = match archive.check(batch, path, sha).await? {
            FileCheck::Ok => continue,
            FileCheck::Missing => {
                out.missing += 1;
                "missing from the archive"
            }
            FileCheck::Corrupt => {
                out.corrupt += 1;
                // Removed before it is requeued: a resume adopts a valid PNG it finds in place (a
                // download put in place just before a crash), and would take this one.
                archive.remove_image(batch, path).await?;
                "hash mismatch"
            }
        };
        out.problems.push(Problem {
            item_key: rec.item_key.clone(),
            index: rec.index,
            path: path.clone(),
            reason,
        });
    }
    Ok(out)
}
