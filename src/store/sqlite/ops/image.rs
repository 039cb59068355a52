//! Writes of a task's images: listed when the task succeeds (kept or skipped by the policy the
//! scheduler applied), fresh URLs, archived, lost, a failed download counted, and an archived
//! image put back when `verify` finds it missing or corrupt.

use sqlx::SqliteConnection;

use super::super::rows::{RECORD_SELECT, record_of, size_of};
use super::super::writer::Apply;
use super::{Result, Transition, Val, batch_of, event};
use crate::store::{
    EventKind, FetchImage, ImageRecord, ImageState, ItemState, ListedImage, StoreError,
};

/// Records a successful task: its images listed with their URLs and verdicts, each kept or
/// skipped as the scheduler decided. The item moves to `fetching`, or straight to `done` when
/// nothing is left to download. Answers the images to download.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkSucceeded {
    pub key: String,
    pub images: Vec<ListedImage>,
}

impl Apply for MarkSucceeded {
    type Output = Vec<FetchImage>;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<Vec<FetchImage>> {
        let key = self.key.as_str();
        let row = sqlx::query(
            "SELECT batch, task_id, width, height FROM items WHERE key = ? AND state = ?",
        )
        .bind(key)
        .bind(ItemState::Running.as_str())
        .fetch_optional(&mut *c)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("item {key} is not running")))?;
        let batch: String = sqlx::Row::try_get(&row, "batch")?;
        let task_id: Option<String> = sqlx::Row::try_get(&row, "task_id")?;
        let task_id = task_id.unwrap_or_default();
        let size = size_of(&row);
        let mut fetch = Vec::new();
        for img in &self.images {
            let state = if img.keep {
                ImageState::Listed
            } else {
                ImageState::Skipped
            };
            sqlx::query(
                "INSERT INTO images (item_key, idx, state, verdict, width, height, url, url_expires_at, listed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (item_key, idx) DO NOTHING",
            )
            .bind(key)
            .bind(img.idx)
            .bind(state.as_str())
            .bind(img.verdict.as_str())
            .bind(img.width)
            .bind(img.height)
            .bind(img.keep.then_some(img.url.as_str()))
            .bind(img.keep.then_some(img.url_expires_at))
            .bind(now)
            .execute(&mut *c)
            .await?;
            if img.keep {
                fetch.push(FetchImage {
                    item_key: key.to_string(),
                    idx: img.idx,
                    batch: batch.clone(),
                    task_id: task_id.clone(),
                    url: img.url.clone(),
                    url_expires_at: img.url_expires_at,
                    verdict: img.verdict,
                    size,
                    attempts: 0,
                });
            }
        }
        let done = fetch.is_empty();
        let listed = self.images.len().to_string();
        Transition {
            key,
            from: &[ItemState::Running],
            to: if done {
                ItemState::Done
            } else {
                ItemState::Fetching
            },
            set: &[
                ("finished_at", Val::Int(Some(now))),
                ("done_at", Val::Int(done.then_some(now))),
            ],
            event: Some(EventKind::Finished),
            code: None,
            detail: Some(&listed),
        }
        .apply(c, now)
        .await?;
        Ok(fetch)
    }
}

/// Stores fresh URLs for the listed images of an item (after an expired URL).
#[derive(Debug)]
pub(in crate::store::sqlite) struct RefreshUrls {
    pub key: String,
    pub images: Vec<ListedImage>,
}

impl Apply for RefreshUrls {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        for img in &self.images {
            sqlx::query(
                "UPDATE images SET url = ?3, url_expires_at = ?4
                 WHERE item_key = ?1 AND idx = ?2 AND state = ?5",
            )
            .bind(&self.key)
            .bind(img.idx)
            .bind(&img.url)
            .bind(img.url_expires_at)
            .bind(ImageState::Listed.as_str())
            .execute(&mut *c)
            .await?;
        }
        let batch = batch_of(c, &self.key).await?;
        event(
            c,
            now,
            batch.as_deref(),
            Some(&self.key),
            EventKind::UrlRefresh,
            None,
            None,
        )
        .await
    }
}

/// Records a verified image in the archive; finishes the item when it was its last image.
/// Answers the record for the manifest.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkArchived {
    pub key: String,
    pub idx: u32,
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
}

impl Apply for MarkArchived {
    type Output = ImageRecord;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<ImageRecord> {
        sqlx::query(
            "UPDATE images SET state = ?3, path = ?4, sha256 = ?5, bytes = ?6, archived_at = ?7,
                 slack_ms = url_expires_at - ?7, error = NULL
             WHERE item_key = ?1 AND idx = ?2 AND state = ?8",
        )
        .bind(&self.key)
        .bind(self.idx)
        .bind(ImageState::Archived.as_str())
        .bind(&self.path)
        .bind(&self.sha256)
        .bind(self.bytes)
        .bind(now)
        .bind(ImageState::Listed.as_str())
        .execute(&mut *c)
        .await?;
        finish_item_if_complete(c, &self.key, now).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RECORD_SELECT} WHERE m.item_key = ? AND m.idx = ?"
        )))
        .bind(&self.key)
        .bind(self.idx)
        .fetch_one(&mut *c)
        .await?;
        let record = record_of(&row)?;
        let idx = self.idx.to_string();
        event(
            c,
            now,
            Some(&record.batch),
            Some(&self.key),
            EventKind::Archived,
            None,
            Some(&idx),
        )
        .await?;
        Ok(record)
    }
}

/// Records that an image's URL is dead and could not be refreshed.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkLost {
    pub key: String,
    pub idx: u32,
    pub reason: String,
}

impl Apply for MarkLost {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE images SET state = ?3, error = ?4 WHERE item_key = ?1 AND idx = ?2 AND state = ?5",
        )
        .bind(&self.key)
        .bind(self.idx)
        .bind(ImageState::Lost.as_str())
        .bind(&self.reason)
        .bind(ImageState::Listed.as_str())
        .execute(&mut *c)
        .await?;
        finish_item_if_complete(c, &self.key, now).await?;
        let batch = batch_of(c, &self.key).await?;
        event(
            c,
            now,
            batch.as_deref(),
            Some(&self.key),
            EventKind::Lost,
            None,
            Some(&self.reason),
        )
        .await
    }
}

/// Counts a failed download attempt of an image; answers the attempts so far.
#[derive(Debug)]
pub(in crate::store::sqlite) struct FetchError {
    pub key: String,
    pub idx: u32,
    pub error: String,
}

impl Apply for FetchError {
    type Output = i64;
    async fn apply(self, c: &mut SqliteConnection, _now: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE images SET attempts = attempts + 1, error = ?3 WHERE item_key = ?1 AND idx = ?2
             RETURNING attempts",
        )
        .bind(&self.key)
        .bind(self.idx)
        .bind(&self.error)
        .fetch_one(&mut *c)
        .await?)
    }
}

/// Puts an archived image whose file is missing or corrupt back to `listed`, and its item back
/// to `fetching`, so the next run downloads it again (after refreshing its URL).
#[derive(Debug)]
pub(in crate::store::sqlite) struct RequeueImage {
    pub key: String,
    pub idx: u32,
    pub reason: String,
}

impl Apply for RequeueImage {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE images SET state = ?3, path = NULL, sha256 = NULL, bytes = NULL,
                 archived_at = NULL, slack_ms = NULL, url_expires_at = 0, attempts = 0, error = ?4
             WHERE item_key = ?1 AND idx = ?2",
        )
        .bind(&self.key)
        .bind(self.idx)
        .bind(ImageState::Listed.as_str())
        .bind(&self.reason)
        .execute(&mut *c)
        .await?;
        Transition {
            key: &self.key,
            from: &ItemState::ALL,
            to: ItemState::Fetching,
            set: &[("done_at", Val::Int(None))],
            event: Some(EventKind::Requeued),
            code: None,
            detail: Some(&self.reason),
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// Moves an item in `fetching` to `done` once none of its images is still listed.
async fn finish_item_if_complete(c: &mut SqliteConnection, key: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE items SET state = ?3, done_at = ?2, updated_at = ?2
         WHERE key = ?1 AND state = ?4
           AND NOT EXISTS (SELECT 1 FROM images WHERE item_key = ?1 AND state = ?5)",
    )
    .bind(key)
    .bind(now)
    .bind(ItemState::Done.as_str())
    .bind(ItemState::Fetching.as_str())
    .bind(ImageState::Listed.as_str())
    .execute(&mut *c)
    .await?;
    Ok(())
}
