//! The SQLite store, the embedded default: one file, no server.
//!
//! Every state change is one committed transaction, written before the side effect it records
//! (`mark_submitting` before the POST, `mark_running` after the answer). The file is created
//! readable by its owner alone, runs in WAL mode with `synchronous = FULL`, and is held by one
//! process at a time through an exclusive lock on `<store>.lock` ([`open`]). Every write goes
//! through one writer ([`writer`]) as a typed operation ([`ops`]), group-committed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    EventKind, FetchImage, ImageRecord, ImageState, ItemState, ListedImage, LoadSummary, Recovery,
    Store, StoreError,
};
use crate::api::{ErrorClass, now_ms};
use crate::client::{CacheError, TokenCache};
use crate::jobfile::{ArchivePolicy, Item};
use open::{APPLICATION_ID, acquire_lock, connect, create_private, locked_or, probe_identity};
use rows::{FETCH_SELECT, batch_filter, fetch_image_of};
use writer::Apply;

mod open;
mod ops;
mod read;
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
}

#[cfg(test)]
impl SqliteStore {
    /// Opens every connection the pool may hold, so that no later query waits for one to be
    /// made: a test on tokio's paused clock would see the pool's acquire timeout pass while a
    /// connection opens on its thread.
    pub(crate) async fn open_all_connections(&self) {
        // The writer holds one for the life of the store.
        let others = self.pool.options().get_max_connections().saturating_sub(1);
        let mut held = Vec::new();
        for _ in 0..others {
            held.push(self.pool.acquire().await.expect("a connection"));
        }
    }
}

impl Store for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn close<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(w) = &self.writer {
                let (done, wait) = oneshot::channel();
                if w.send(writer::Msg::Stop(done)).is_ok() {
                    let _ = wait.await;
                }
            }
            self.pool.close().await;
        })
    }

    #[tracing::instrument(skip_all, fields(batch = %batch, items = items.len()))]
    fn load_items<'a>(
        &'a self,
        batch: &'a str,
        policy: ArchivePolicy,
        source: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<LoadSummary>> {
        Box::pin(async move {
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
        })
    }

    #[tracing::instrument(skip_all)]
    fn recover<'a>(&'a self) -> BoxFuture<'a, Result<Recovery>> {
        Box::pin(async move { self.write(ops::Recover).await })
    }

    fn mark_submitting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.write(ops::MarkSubmitting { key: key.into() }).await })
    }

    fn mark_running<'a>(&'a self, key: &'a str, task_id: &'a str) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            self.write(ops::MarkRunning {
                key: key.into(),
                task_id: task_id.into(),
            })
            .await
        })
    }

    fn mark_submit_ambiguous<'a>(
        &'a self,
        key: &'a str,
        detail: &'a str,
        retry_at: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::SubmitAmbiguous {
                key: key.into(),
                detail: detail.into(),
                retry_at,
            })
            .await
        })
    }

    fn mark_submit_refused<'a>(
        &'a self,
        key: &'a str,
        code: Option<i64>,
        msg: &'a str,
        retry_at: Option<i64>,
        counts: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::SubmitRefused {
                key: key.into(),
                code,
                msg: msg.into(),
                retry_at,
                counts,
            })
            .await
        })
    }

    fn mark_failed<'a>(
        &'a self,
        key: &'a str,
        class: ErrorClass,
        code: Option<i64>,
        msg: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::MarkFailed {
                key: key.into(),
                class,
                code,
                msg: msg.into(),
            })
            .await
        })
    }

    fn mark_task_retry<'a>(
        &'a self,
        key: &'a str,
        code: Option<i64>,
        msg: &'a str,
        retry_at: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::TaskRetry {
                key: key.into(),
                code,
                msg: msg.into(),
                retry_at,
            })
            .await
        })
    }

    fn mark_succeeded<'a>(
        &'a self,
        key: &'a str,
        images: &'a [ListedImage],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>> {
        Box::pin(async move {
            self.write(ops::MarkSucceeded {
                key: key.into(),
                images: images.to_vec(),
            })
            .await
        })
    }

    fn refresh_urls<'a>(
        &'a self,
        key: &'a str,
        images: &'a [ListedImage],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>> {
        Box::pin(async move {
            self.write(ops::RefreshUrls {
                key: key.into(),
                images: images.to_vec(),
            })
            .await?;
            self.fetch_images_of(key).await
        })
    }

    fn mark_archived<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        path: &'a str,
        sha256: &'a str,
        bytes: i64,
    ) -> BoxFuture<'a, Result<ImageRecord>> {
        Box::pin(async move {
            self.write(ops::MarkArchived {
                key: key.into(),
                idx,
                path: path.into(),
                sha256: sha256.into(),
                bytes,
            })
            .await
        })
    }

    fn mark_lost<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::MarkLost {
                key: key.into(),
                idx,
                reason: reason.into(),
            })
            .await
        })
    }

    fn note_fetch_error<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        error: &'a str,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            self.write(ops::FetchError {
                key: key.into(),
                idx,
                error: error.into(),
            })
            .await
        })
    }

    fn requeue_image<'a>(
        &'a self,
        key: &'a str,
        idx: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::RequeueImage {
                key: key.into(),
                idx,
                reason: reason.into(),
            })
            .await
        })
    }

    fn requeue_failed<'a>(
        &'a self,
        batches: &'a [String],
        class: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(ops::RequeueFailed {
                batches: batch_filter(batches),
                class: class.map(str::to_owned),
            })
            .await
        })
    }

    fn record_event<'a>(
        &'a self,
        batch: Option<&'a str>,
        key: Option<&'a str>,
        kind: EventKind,
        code: Option<i64>,
        detail: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::RecordEvent {
                batch: batch.map(str::to_owned),
                key: key.map(str::to_owned),
                kind,
                code,
                detail: detail.map(str::to_owned),
            })
            .await
        })
    }

    fn start_run<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            self.write(ops::StartRun {
                command: command.into(),
            })
            .await
        })
    }

    fn end_run<'a>(
        &'a self,
        id: i64,
        exit_code: i32,
        summary: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.write(ops::EndRun {
                id,
                exit_code,
                summary: summary.into(),
            })
            .await
        })
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
