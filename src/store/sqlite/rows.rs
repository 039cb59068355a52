//! Rows of the SQLite store as the store's types: the shared SELECTs and their mapping.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::api::{Size, Verdict, Version};
use crate::store::{FetchImage, ImageRecord, ImageState, PendingItem, StoreError};

type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(super) const FETCH_SELECT: &str =
    "SELECT m.item_key, m.idx, m.url, m.url_expires_at, m.verdict, m.attempts,
        i.batch, i.task_id, i.width, i.height
    FROM images m JOIN items i ON i.key = m.item_key";

pub(super) const RECORD_SELECT: &str =
    "SELECT m.item_key, m.idx, m.state, m.verdict, m.path, m.sha256, m.bytes,
        m.url_expires_at, m.archived_at, i.batch, i.task_id, i.prompt, i.width, i.height, i.version,
        i.image_num, i.variant, i.tags, i.vars, i.submitted_at, i.finished_at
    FROM images m JOIN items i ON i.key = m.item_key";

/// A JSON array of batch names for `json_each`; `[]` means every batch.
pub(super) fn batch_filter(batches: &[String]) -> String {
    serde_json::to_string(batches).unwrap_or_else(|_| "[]".into())
}

pub(super) fn pending_of(row: &SqliteRow) -> Result<PendingItem> {
    Ok(PendingItem {
        key: row.get("key"),
        batch: row.get("batch"),
        seq: row.get("seq"),
        prompt: row.get("prompt"),
        size: size_of(row),
        version: version_of(row)?,
        image_num: row.get::<i64, _>("image_num") as u8,
        attempts: row.get("attempts"),
        retry_at: row.get("retry_at"),
    })
}

pub(super) fn fetch_image_of(r: &SqliteRow) -> Result<FetchImage> {
    Ok(FetchImage {
        item_key: r.get("item_key"),
        idx: r.get::<i64, _>("idx") as u32,
        batch: r.get("batch"),
        task_id: r.get::<Option<String>, _>("task_id").unwrap_or_default(),
        url: r.get::<Option<String>, _>("url").unwrap_or_default(),
        url_expires_at: r.get::<Option<i64>, _>("url_expires_at").unwrap_or(0),
        verdict: verdict_of(r)?,
        size: size_of(r),
        attempts: r.get("attempts"),
    })
}

/// A JSON object of strings stored in `col` (tags, vars).
pub(super) fn json_map(r: &SqliteRow, col: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(&r.get::<String, _>(col))
        .map_err(|e| StoreError::Invalid(format!("{col}: {e}")))
}

pub(super) fn record_of(r: &SqliteRow) -> Result<ImageRecord> {
    let json = |col| json_map(r, col);
    Ok(ImageRecord {
        path: r.get("path"),
        sha256: r.get("sha256"),
        bytes: r.get("bytes"),
        state: image_state_of(&r.get::<String, _>("state"))?,
        verdict: verdict_of(r)?,
        prompt: r.get("prompt"),
        width: r.get::<i64, _>("width") as u32,
        height: r.get::<i64, _>("height") as u32,
        version: version_of(r)?,
        image_num: r.get::<i64, _>("image_num") as u8,
        variant: r.get::<i64, _>("variant") as u32,
        index: r.get::<i64, _>("idx") as u32,
        item_key: r.get("item_key"),
        task_id: r.get::<Option<String>, _>("task_id").unwrap_or_default(),
        batch: r.get("batch"),
        tags: json("tags")?,
        vars: json("vars")?,
        url_expires_at: r.get("url_expires_at"),
        submitted_at: r.get("submitted_at"),
        finished_at: r.get("finished_at"),
        archived_at: r.get("archived_at"),
    })
}

pub(super) fn image_state_of(s: &str) -> Result<ImageState> {
    ImageState::parse(s).ok_or_else(|| StoreError::Invalid(format!("image state {s:?}")))
}

pub(super) fn size_of(r: &SqliteRow) -> Size {
    Size::new(
        r.get::<i64, _>("width") as u32,
        r.get::<i64, _>("height") as u32,
    )
}

pub(super) fn version_of(r: &SqliteRow) -> Result<Version> {
    let v: String = r.get("version");
    Version::parse(&v).ok_or_else(|| StoreError::Invalid(format!("version {v:?}")))
}

pub(super) fn verdict_of(r: &SqliteRow) -> Result<Verdict> {
    let v: String = r.get("verdict");
    Verdict::parse(&v).ok_or_else(|| StoreError::Invalid(format!("verdict {v:?}")))
}
