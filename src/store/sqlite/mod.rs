//! The SQLite store, the embedded default: one file, no server.
//!
//! Every state change is one committed transaction, written before the side effect it records
//! (`mark_submitting` before the POST, `mark_running` after the answer). The file is created
//! readable by its owner alone, runs in WAL mode with `synchronous = FULL`, and is held by one
//! process at a time through an exclusive lock on `<store>.lock` ([`open`]). Every write goes
//! through one writer ([`writer`]) as a typed operation ([`ops`]), group-committed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    BatchStatus, EventKind, FetchImage, ImageRecord, ImageState, ItemState, ListedImage,
    LoadSummary, PendingItem, Recovery, RunningTask, StoreError,
};
use crate::api::{ErrorClass, Verdict, now_ms};
use crate::client::{CacheError, TokenCache};
use crate::jobfile::{ArchivePolicy, Item, Keep};
use open::{APPLICATION_ID, acquire_lock, connect, create_private, locked_or, probe_identity};
use rows::{FETCH_SELECT, RECORD_SELECT, batch_filter, fetch_image_of, pending_of, record_of};
use writer::Apply;

mod open;
mod ops;
mod report;
mod rows;
mod writer;

pub use open::pool_options;

type Result<T, E = StoreError> = std::result::Result<T, E>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// The one writer (absent when read-only): every write goes through it, and the writes
    /// waiting while a commit is under way share the next transaction (group commit).
    writer: Option<mpsc::UnboundedSender<writer::Msg>>,
    /// Held for the life of the store; dropping the last clone releases the lock.
    _lock: Option<Arc<File>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path` for exclusive use: takes the lock, checks
    /// that the file is a runner store, sets WAL, and runs the embedded migrations.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let lock = acquire_lock(path)?;
        create_private(path)?;
        let opened = async {
            probe_identity(path, false).await?;
            let pool = connect(path, false).await?;
            MIGRATOR.run(&pool).await?;
            sqlx::query(AssertSqlSafe(format!(
                "PRAGMA application_id = {APPLICATION_ID}"
            )))
            .execute(&pool)
            .await?;
            Ok(pool)
        }
        .await;
        let pool = opened.map_err(|e| locked_or(path, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = pool.acquire().await?;
        tokio::spawn(writer::writer_loop(conn, rx));
        Ok(SqliteStore {
            pool,
            path: path.to_path_buf(),
            writer: Some(tx),
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens an existing store for reading only, without the lock, so `status` works while a run
    /// is going on.
    pub async fn open_read_only(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let opened = async {
            probe_identity(path, true).await?;
            connect(path, true).await
        }
        .await;
        let pool = opened.map_err(|e| locked_or(path, e))?;
        Ok(SqliteStore {
            pool,
            path: path.to_path_buf(),
            writer: None,
            _lock: None,
        })
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front: a deferred
    /// transaction that reads first cannot upgrade while another connection writes, and SQLite
    /// refuses it at once instead of waiting.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer (after the writes already queued) and closes the pool, checkpointing
    /// the WAL.
    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            let (done, wait) = oneshot::channel();
            if w.send(writer::Msg::Stop(done)).is_ok() {
                let _ = wait.await;
            }
        }
        self.pool.close().await;
    }

    /// Adds a job file's batch and items. Items already present are left as they are (so a file
    /// loaded twice adds nothing); the batch's archive policy follows the latest file.
    #[tracing::instrument(skip_all, fields(batch = %batch, items = items.len()))]
    pub async fn load_items(
        &self,
        batch: &str,
        policy: ArchivePolicy,
        source: &str,
        items: &[Item],
    ) -> Result<LoadSummary> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO batches (name, review_policy, block_policy, source, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (name) DO UPDATE SET review_policy = ?2, block_policy = ?3, source = ?4,
                 updated_at = ?5",
        )
        .bind(batch)
        .bind(policy.review.as_str())
        .bind(policy.block.as_str())
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let base: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM items WHERE batch = ?")
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
        let mut summary = LoadSummary::default();
        // Many rows per statement: one round trip to SQLite's thread per chunk, not per item.
        // 13 values a row stays far below SQLite's 32,766 bound parameters.
        const ROWS_PER_INSERT: usize = 512;
        for (c, chunk) in items.chunks(ROWS_PER_INSERT).enumerate() {
            let mut rows = Vec::with_capacity(chunk.len());
            for item in chunk {
                let tags = serde_json::to_string(&item.tags)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let vars = serde_json::to_string(&item.vars)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                rows.push((item, tags, vars));
            }
            let first_seq = base + (c * ROWS_PER_INSERT) as i64;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO items (key, batch, seq, prompt, width, height, version, image_num,
                     variant, tags, vars, template, state, created_at, updated_at) ",
            );
            insert.push_values(
                rows.iter().enumerate(),
                |mut row, (i, (item, tags, vars))| {
                    row.push_bind(&item.key)
                        .push_bind(&item.batch)
                        .push_bind(first_seq + i as i64)
                        .push_bind(&item.prompt)
                        .push_bind(item.size.width)
                        .push_bind(item.size.height)
                        .push_bind(item.version.as_str())
                        .push_bind(item.image_num)
                        .push_bind(item.variant)
                        .push_bind(tags.as_str())
                        .push_bind(vars.as_str())
                        .push_bind(item.template.as_deref())
                        .push_bind(ItemState::Pending.as_str())
                        .push_bind(now)
                        .push_bind(now);
                },
            );
            insert.push(" ON CONFLICT (key) DO NOTHING");
            let done = insert.build().execute(&mut *tx).await?;
            summary.added += done.rows_affected();
            summary.existing += chunk.len() as u64 - done.rows_affected();
        }
        if summary.added > 0 {
            ops::event(
                &mut tx,
                now,
                Some(batch),
                None,
                EventKind::Loaded,
                None,
                Some(&summary.added.to_string()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(summary)
    }

    /// The archive policy of every batch.
    pub async fn batch_policies(&self) -> Result<HashMap<String, ArchivePolicy>> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT name, review_policy, block_policy FROM batches")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(name, review, block)| {
                let keep = |s: &str| {
                    Keep::parse(s).ok_or_else(|| StoreError::Invalid(format!("policy {s:?}")))
                };
                Ok((
                    name,
                    ArchivePolicy {
                        review: keep(&review)?,
                        block: keep(&block)?,
                    },
                ))
            })
            .collect()
    }

    /// Names of every batch in the store, in creation order.
    pub async fn batches(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM batches ORDER BY created_at, name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Up to `limit` pending items of `batches` (all batches when empty) with seq > `after`, in
    /// batch and file order. Items in backoff are included with their `retry_at`.
    pub async fn pending_items(
        &self,
        batches: &[String],
        after: Option<(&str, i64)>,
        limit: i64,
    ) -> Result<Vec<PendingItem>> {
        let (after_batch, after_seq) = after.unwrap_or(("", -1));
        let rows = sqlx::query(
            "SELECT key, batch, seq, prompt, width, height, version, image_num, attempts, retry_at
             FROM items
             WHERE state = ?5 AND (batch, seq) > (?1, ?2) AND (?3 = '[]' OR batch IN (SELECT value FROM json_each(?3)))
             ORDER BY batch, seq LIMIT ?4",
        )
        .bind(after_batch)
        .bind(after_seq)
        .bind(batch_filter(batches))
        .bind(limit.max(1))
        .bind(ItemState::Pending.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pending_of).collect()
    }

    /// One pending item by key.
    pub async fn pending_item(&self, key: &str) -> Result<Option<PendingItem>> {
        let row = sqlx::query(
            "SELECT key, batch, seq, prompt, width, height, version, image_num, attempts, retry_at
             FROM items WHERE key = ? AND state = ?",
        )
        .bind(key)
        .bind(ItemState::Pending.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pending_of).transpose()
    }

    /// Submit attempts of an item so far.
    pub async fn item_attempts(&self, key: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT attempts FROM items WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    /// Counts items of `batches` (all when empty) in a state.
    pub async fn count_items(&self, batches: &[String], state: ItemState) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE state = ?1
             AND (?2 = '[]' OR batch IN (SELECT value FROM json_each(?2)))",
        )
        .bind(state.as_str())
        .bind(batch_filter(batches))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every running task (and every succeeded task with images still to fetch) of `batches`.
    pub async fn running_tasks(&self, batches: &[String]) -> Result<Vec<RunningTask>> {
        let rows = sqlx::query(
            "SELECT key, batch, task_id, image_num, submitted_at, state FROM items
             WHERE state IN (?2, ?3)
               AND (?1 = '[]' OR batch IN (SELECT value FROM json_each(?1)))
             ORDER BY submitted_at",
        )
        .bind(batch_filter(batches))
        .bind(ItemState::Running.as_str())
        .bind(ItemState::Fetching.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunningTask {
                key: r.get("key"),
                batch: r.get("batch"),
                task_id: r.get::<Option<String>, _>("task_id").unwrap_or_default(),
                image_num: r.get::<i64, _>("image_num") as u8,
                submitted_at: r.get::<Option<i64>, _>("submitted_at").unwrap_or(0),
                fetching: r.get::<String, _>("state") == ItemState::Fetching.as_str(),
            })
            .collect())
    }

    /// Listed images still to download, soonest-expiring first.
    pub async fn images_to_fetch(&self, batches: &[String]) -> Result<Vec<FetchImage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{FETCH_SELECT} WHERE m.state = ?2
               AND (?1 = '[]' OR i.batch IN (SELECT value FROM json_each(?1)))
             ORDER BY m.url_expires_at, m.item_key, m.idx"
        )))
        .bind(batch_filter(batches))
        .bind(ImageState::Listed.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(fetch_image_of).collect()
    }

    async fn fetch_images_of(&self, key: &str) -> Result<Vec<FetchImage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{FETCH_SELECT} WHERE m.state = ? AND m.item_key = ? ORDER BY m.idx"
        )))
        .bind(ImageState::Listed.as_str())
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(fetch_image_of).collect()
    }

    /// Archive records (archived, skipped and lost images) of a batch, in item order: the
    /// manifest's content.
    pub async fn image_records(&self, batch: &str) -> Result<Vec<ImageRecord>> {
        self.image_records_stream(batch).try_collect().await
    }

    /// [`Store::image_records`] one at a time, without holding them all (a batch may have
    /// hundreds of thousands).
    pub fn image_records_stream<'a>(
        &'a self,
        batch: &'a str,
    ) -> BoxStream<'a, Result<ImageRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "{RECORD_SELECT} WHERE i.batch = ? AND m.state != ? ORDER BY i.seq, m.idx"
        )))
        .bind(batch)
        .bind(ImageState::Listed.as_str())
        .fetch(&self.pool)
        .map(|row| row.map_err(StoreError::from).and_then(|r| record_of(&r)))
        .boxed()
    }

    /// Where each batch stands.
    pub async fn status(&self) -> Result<Vec<BatchStatus>> {
        let mut out: BTreeMap<String, BatchStatus> = BTreeMap::new();
        for name in self.batches().await? {
            let mut s = BatchStatus {
                batch: name.clone(),
                ..BatchStatus::default()
            };
            for st in ItemState::ALL {
                s.items.insert(st.as_str().into(), 0);
            }
            for st in ImageState::ALL {
                s.images.insert(st.as_str().into(), 0);
            }
            for v in [Verdict::Pass, Verdict::Review, Verdict::Block] {
                s.verdicts.insert(v.as_str().into(), 0);
            }
            out.insert(name, s);
        }
        for r in sqlx::query(
            "SELECT batch, state, COUNT(*) AS n, SUM(image_num) AS imgs, SUM(ambiguous > 0) AS amb
             FROM items GROUP BY batch, state",
        )
        .fetch_all(&self.pool)
        .await?
        {
            if let Some(s) = out.get_mut(&r.get::<String, _>("batch")) {
                s.items.insert(r.get("state"), r.get("n"));
                s.images_requested += r.get::<i64, _>("imgs");
                s.ambiguous_items += r.get::<i64, _>("amb");
            }
        }
        for r in sqlx::query(
            "SELECT i.batch, m.state, m.verdict, COUNT(*) AS n, MIN(m.slack_ms) AS slack
             FROM images m JOIN items i ON i.key = m.item_key GROUP BY i.batch, m.state, m.verdict",
        )
        .fetch_all(&self.pool)
        .await?
        {
            if let Some(s) = out.get_mut(&r.get::<String, _>("batch")) {
                let n: i64 = r.get("n");
                *s.images.entry(r.get("state")).or_default() += n;
                *s.verdicts.entry(r.get("verdict")).or_default() += n;
                if let Some(slack) = r.get::<Option<i64>, _>("slack") {
                    s.min_slack_ms = Some(s.min_slack_ms.map_or(slack, |m| m.min(slack)));
                }
            }
        }
        for r in sqlx::query(
            "SELECT batch, COALESCE(error_class, 'unknown') AS class, COUNT(*) AS n FROM items
             WHERE state = ? GROUP BY batch, class",
        )
        .bind(ItemState::Failed.as_str())
        .fetch_all(&self.pool)
        .await?
        {
            if let Some(s) = out.get_mut(&r.get::<String, _>("batch")) {
                s.failed_by_class.insert(r.get("class"), r.get("n"));
            }
        }
        Ok(out.into_values().collect())
    }

    /// Failed items of a batch with their reasons (key, prompt, class, code, message).
    pub async fn failures(
        &self,
        batch: &str,
    ) -> Result<Vec<(String, String, String, Option<i64>, String)>> {
        Ok(sqlx::query_as(
            "SELECT key, prompt, COALESCE(error_class, ''), error_code, COALESCE(error_msg, '')
             FROM items WHERE batch = ? AND state = ? ORDER BY seq",
        )
        .bind(batch)
        .bind(ItemState::Failed.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Error answers seen, by code, over the whole history.
    pub async fn errors_by_code(&self) -> Result<BTreeMap<i64, i64>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT code, COUNT(*) FROM events WHERE code IS NOT NULL GROUP BY code ORDER BY code",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The cached access token for `base_url` and `client_id`, when it is valid until at least
    /// `valid_until` (Unix ms).
    pub async fn cached_token(
        &self,
        base_url: &str,
        client_id: &str,
        valid_until: i64,
    ) -> Result<Option<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT access_token, expires_at FROM token_cache
             WHERE id = 1 AND base_url = ? AND client_id = ? AND expires_at > ?",
        )
        .bind(base_url)
        .bind(client_id)
        .bind(valid_until)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Sends `op` to the writer and returns its result once its transaction has committed: a
    /// write is durable before its caller goes on.
    async fn write<A>(&self, op: A) -> Result<A::Output>
    where
        A: Apply,
        writer::Op: From<(A, oneshot::Sender<Result<A::Output>>)>,
    {
        let writer = self.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let (reply, answer) = oneshot::channel();
        writer
            .send(writer::Msg::Op(writer::Op::from((op, reply))))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Puts items left in `submitting` by a dead process back to `pending`, counting each as
    /// ambiguous: the API may or may not have created its task, and offers no way to look it up.
    #[tracing::instrument(skip_all)]
    pub async fn recover(&self) -> Result<Recovery> {
        self.write(ops::Recover).await
    }

    /// Commits the intent to submit, before the POST.
    pub async fn mark_submitting(&self, key: &str) -> Result<()> {
        self.write(ops::MarkSubmitting { key: key.into() }).await
    }

    /// Records the task id of an answered submit.
    pub async fn mark_running(&self, key: &str, task_id: &str) -> Result<i64> {
        self.write(ops::MarkRunning {
            key: key.into(),
            task_id: task_id.into(),
        })
        .await
    }

    /// A submit that got no usable answer (timeout, dropped connection, garbled answer): the task
    /// may exist. Back to pending with backoff, counted as ambiguous.
    pub async fn mark_submit_ambiguous(
        &self,
        key: &str,
        detail: &str,
        retry_at: i64,
    ) -> Result<()> {
        self.write(ops::SubmitAmbiguous {
            key: key.into(),
            detail: detail.into(),
            retry_at,
        })
        .await
    }

    /// A submit the API refused with an error that allows a retry (rate, concurrency, quota,
    /// transient): back to pending, not before `retry_at`. `counts` says whether the attempt
    /// counts against the retry budget (limits do not: they are the scheduler's business).
    pub async fn mark_submit_refused(
        &self,
        key: &str,
        code: Option<i64>,
        msg: &str,
        retry_at: Option<i64>,
        counts: bool,
    ) -> Result<()> {
        self.write(ops::SubmitRefused {
            key: key.into(),
            code,
            msg: msg.into(),
            retry_at,
            counts,
        })
        .await
    }

    /// Terminal failure of an item (from `submitting`, `running` or `pending`).
    pub async fn mark_failed(
        &self,
        key: &str,
        class: ErrorClass,
        code: Option<i64>,
        msg: &str,
    ) -> Result<()> {
        self.write(ops::MarkFailed {
            key: key.into(),
            class,
            code,
            msg: msg.into(),
        })
        .await
    }

    /// A running task failed in a way that allows a new submit (server timeout 216303, model
    /// failure): back to pending, not before `retry_at`.
    pub async fn mark_task_retry(
        &self,
        key: &str,
        code: Option<i64>,
        msg: &str,
        retry_at: i64,
    ) -> Result<()> {
        self.write(ops::TaskRetry {
            key: key.into(),
            code,
            msg: msg.into(),
            retry_at,
        })
        .await
    }

    /// Records a successful task: its images are listed with their URLs and verdicts, each kept
    /// or skipped as `keep` says (the batch's policy, applied by the scheduler). The item moves to
    /// `fetching`, or straight to `done` when nothing is left to download. Returns the images to
    /// download.
    pub async fn mark_succeeded(
        &self,
        key: &str,
        images: &[ListedImage],
    ) -> Result<Vec<FetchImage>> {
        self.write(ops::MarkSucceeded {
            key: key.into(),
            images: images.to_vec(),
        })
        .await
    }

    /// Stores fresh URLs for the listed images of an item (after an expired URL).
    pub async fn refresh_urls(&self, key: &str, images: &[ListedImage]) -> Result<Vec<FetchImage>> {
        self.write(ops::RefreshUrls {
            key: key.into(),
            images: images.to_vec(),
        })
        .await?;
        self.fetch_images_of(key).await
    }

    /// Records a verified image on disk; finishes the item when it was its last image.
    /// Returns the record for the manifest.
    pub async fn mark_archived(
        &self,
        key: &str,
        idx: u32,
        path: &str,
        sha256: &str,
        bytes: i64,
    ) -> Result<ImageRecord> {
        self.write(ops::MarkArchived {
            key: key.into(),
            idx,
            path: path.into(),
            sha256: sha256.into(),
            bytes,
        })
        .await
    }

    /// Records that an image's URL is dead and could not be refreshed.
    pub async fn mark_lost(&self, key: &str, idx: u32, reason: &str) -> Result<()> {
        self.write(ops::MarkLost {
            key: key.into(),
            idx,
            reason: reason.into(),
        })
        .await
    }

    /// Counts a failed download attempt of an image.
    pub async fn note_fetch_error(&self, key: &str, idx: u32, error: &str) -> Result<i64> {
        self.write(ops::FetchError {
            key: key.into(),
            idx,
            error: error.into(),
        })
        .await
    }

    /// Puts an archived image whose file is missing or corrupt back to `listed`, and its item
    /// back to `fetching`, so the next run downloads it again (after refreshing its URL).
    pub async fn requeue_image(&self, key: &str, idx: u32, reason: &str) -> Result<()> {
        self.write(ops::RequeueImage {
            key: key.into(),
            idx,
            reason: reason.into(),
        })
        .await
    }

    /// Puts failed items back to pending (all, or those of one error class). Returns how many.
    pub async fn requeue_failed(&self, batches: &[String], class: Option<&str>) -> Result<u64> {
        self.write(ops::RequeueFailed {
            batches: batch_filter(batches),
            class: class.map(str::to_owned),
        })
        .await
    }

    /// Caches an access token (one row: a new token replaces the old one).
    pub async fn save_token(
        &self,
        base_url: &str,
        client_id: &str,
        token: &str,
        expires_at: i64,
    ) -> Result<()> {
        self.write(ops::SaveToken {
            base_url: base_url.into(),
            client_id: client_id.into(),
            token: token.into(),
            expires_at,
        })
        .await
    }

    /// Forgets the cached token (after the API called it invalid or expired).
    pub async fn clear_token(&self) -> Result<()> {
        self.write(ops::ClearToken).await
    }

    /// Records an event that belongs to no state change (a quota park).
    pub async fn record_event(
        &self,
        batch: Option<&str>,
        key: Option<&str>,
        kind: EventKind,
        code: Option<i64>,
        detail: Option<&str>,
    ) -> Result<()> {
        self.write(ops::RecordEvent {
            batch: batch.map(str::to_owned),
            key: key.map(str::to_owned),
            kind,
            code,
            detail: detail.map(str::to_owned),
        })
        .await
    }

    /// Starts a run record; returns its id.
    pub async fn start_run(&self, command: &str) -> Result<i64> {
        self.write(ops::StartRun {
            command: command.into(),
        })
        .await
    }

    /// Closes a run record.
    pub async fn end_run(&self, id: i64, exit_code: i32, summary: &str) -> Result<()> {
        self.write(ops::EndRun {
            id,
            exit_code,
            summary: summary.into(),
        })
        .await
    }
}

impl TokenCache for SqliteStore {
    fn cached<'a>(
        &'a self,
        base_url: &'a str,
        client_id: &'a str,
        valid_until: i64,
    ) -> BoxFuture<'a, Result<Option<(String, i64)>, CacheError>> {
        Box::pin(async move {
            self.cached_token(base_url, client_id, valid_until)
                .await
                .map_err(|e| CacheError(e.to_string()))
        })
    }

    fn save<'a>(
        &'a self,
        base_url: &'a str,
        client_id: &'a str,
        token: &'a str,
        expires_at: i64,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.save_token(base_url, client_id, token, expires_at)
                .await
                .map_err(|e| CacheError(e.to_string()))
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        Box::pin(async move {
            self.clear_token()
                .await
                .map_err(|e| CacheError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests;
