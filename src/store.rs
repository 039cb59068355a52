//! The SQLite store: the only module that speaks SQL.
//!
//! Every state change is one committed transaction, written before the side effect it records
//! (`mark_submitting` before the POST, `mark_running` after the answer). The store file is created
//! readable by its owner alone, runs in WAL mode with `synchronous = FULL`, and is held by one
//! process at a time through an exclusive lock on `<store>.lock`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::api::{ErrorClass, Size, Verdict, Version, now_ms};
use crate::jobfile::{ArchivePolicy, Item, Keep};

mod report;

/// Written to `PRAGMA application_id` so that a foreign SQLite file is never mistaken for a store.
const APPLICATION_ID: i64 = 0x524E_5231; // "RNR1"

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store.
    #[error(
        "the store {path} is in use by another runner process ({holder}); wait for it to finish or use another --db"
    )]
    Busy {
        /// The store file.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// Another program holds an SQLite lock on the file (for example an `sqlite3` shell in a
    /// write transaction) for longer than the store waits.
    #[error(
        "the store {path} is locked by another program (SQLite: database is locked); wait for it to finish or use another --db"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The file is a runner store whose pages fail SQLite's integrity check.
    #[error(
        "the store {path} is damaged (SQLite integrity check: {detail}); restore it from a backup or use another --db"
    )]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// The first problem the check found, and how many there are.
        detail: String,
    },
    /// The file is an SQLite database of something else.
    #[error("{path} is not a runner store ({reason}); refusing to touch it: choose another --db")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The file is not a database at all, or is damaged.
    #[error("the store {path} is damaged or not an SQLite database: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The file or its lock could not be created or opened.
    #[error("cannot open the store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store was written by a newer runner, or its migrations fail.
    #[error("cannot migrate the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The store was closed, or its writer stopped.
    #[error("the store is closed")]
    Closed,
    /// The store was opened read-only.
    #[error("the store is open read-only")]
    ReadOnly,
    /// A grouped commit failed; the change was not recorded. (Shared: one failed commit answers
    /// every write of its group.)
    #[error("store commit failed: {0}")]
    Commit(Arc<sqlx::Error>),
    /// A row holds a value this version does not know.
    #[error("the store holds an unexpected value: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the store is held by another process (exit code 4: try again later): another
    /// runner, or another program's SQLite lock that outlasted the busy timeout.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Busy { .. } | StoreError::Locked { .. } => true,
            StoreError::Query(e) => is_locked(e),
            StoreError::Commit(e) => is_locked(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_locked(e),
            _ => false,
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// State of an item (one submit). Stored as TEXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Waiting to be submitted.
    Pending,
    /// Committed just before the POST: if the process dies here, the submit is ambiguous.
    Submitting,
    /// Submitted; the task id is known.
    Running,
    /// The task succeeded; images are being archived.
    Fetching,
    /// Every image archived, skipped by policy, or lost.
    Done,
    /// Terminal failure, with class and message.
    Failed,
}

impl ItemState {
    /// Every state, in lifecycle order.
    pub const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::Submitting,
        ItemState::Running,
        ItemState::Fetching,
        ItemState::Done,
        ItemState::Failed,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Submitting => "submitting",
            ItemState::Running => "running",
            ItemState::Fetching => "fetching",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
        }
    }
}

impl FromStr for ItemState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        ItemState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("item state {s:?}")))
    }
}

/// State of an image. Stored as TEXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Known (URL, verdict, expiry), not yet on disk.
    Listed,
    /// On disk, verified.
    Archived,
    /// Not kept by the batch's verdict policy; the verdict is recorded.
    Skipped,
    /// Its URL died and could not be refreshed.
    Lost,
}

impl ImageState {
    /// Every state.
    pub const ALL: [ImageState; 4] = [
        ImageState::Listed,
        ImageState::Archived,
        ImageState::Skipped,
        ImageState::Lost,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Listed => "listed",
            ImageState::Archived => "archived",
            ImageState::Skipped => "skipped",
            ImageState::Lost => "lost",
        }
    }
}

impl FromStr for ImageState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        ImageState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("image state {s:?}")))
    }
}

/// What loading a job file into the store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    /// Items new to the store.
    pub added: u64,
    /// Items the store already had (left untouched).
    pub existing: u64,
}

/// An item as the scheduler needs it to submit.
#[derive(Debug, Clone)]
pub struct PendingItem {
    /// Item key.
    pub key: String,
    /// Batch name.
    pub batch: String,
    /// Order within the batch.
    pub seq: i64,
    /// Prompt.
    pub prompt: String,
    /// Requested size.
    pub size: Size,
    /// Model version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Submit attempts so far.
    pub attempts: i64,
    /// Not before this time (backoff), Unix ms.
    pub retry_at: Option<i64>,
}

/// A submitted task that has not reached its final state.
#[derive(Debug, Clone)]
pub struct RunningTask {
    /// Item key.
    pub key: String,
    /// Batch name.
    pub batch: String,
    /// Task id from the submit answer.
    pub task_id: String,
    /// Images per submit (slots held).
    pub image_num: u8,
    /// When the submit was answered, Unix ms.
    pub submitted_at: i64,
    /// Whether the task already succeeded and only needs fresh URLs (state `fetching`).
    pub fetching: bool,
}

/// One image of a successful task, as listed by a query answer.
#[derive(Debug, Clone)]
pub struct ListedImage {
    /// Position in the answer (sub-tasks flattened).
    pub idx: u32,
    /// Signed URL.
    pub url: String,
    /// When the URL stops working, Unix ms.
    pub url_expires_at: i64,
    /// Width reported by the API.
    pub width: u32,
    /// Height reported by the API.
    pub height: u32,
    /// Moderation verdict.
    pub verdict: Verdict,
}

/// An image to download.
#[derive(Debug, Clone)]
pub struct FetchImage {
    /// Item key.
    pub item_key: String,
    /// Position within the task.
    pub idx: u32,
    /// Batch name.
    pub batch: String,
    /// Task id.
    pub task_id: String,
    /// Signed URL.
    pub url: String,
    /// Unix ms.
    pub url_expires_at: i64,
    /// Verdict.
    pub verdict: Verdict,
    /// The size requested by the item (what the bytes must decode to).
    pub size: Size,
    /// Download attempts so far.
    pub attempts: i64,
}

/// Everything the archive writes about an image (sidecar and manifest).
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    /// Path relative to the batch folder; `None` when skipped or lost.
    pub path: Option<String>,
    /// Hex SHA-256 of the bytes.
    pub sha256: Option<String>,
    /// Size of the file.
    pub bytes: Option<i64>,
    /// Image state.
    pub state: ImageState,
    /// Moderation verdict.
    pub verdict: Verdict,
    /// Prompt of the item.
    pub prompt: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Model version.
    pub version: Version,
    /// Images per submit of the item.
    pub image_num: u8,
    /// Variant of the item.
    pub variant: u32,
    /// Position within the task.
    pub index: u32,
    /// Item key.
    pub item_key: String,
    /// Task id.
    pub task_id: String,
    /// Batch name.
    pub batch: String,
    /// Tags of the item.
    pub tags: BTreeMap<String, String>,
    /// Template variables of the item.
    pub vars: BTreeMap<String, String>,
    /// When the URL expired or expires, Unix ms.
    pub url_expires_at: Option<i64>,
    /// When the task was submitted, Unix ms.
    pub submitted_at: Option<i64>,
    /// When the task was seen final, Unix ms.
    pub finished_at: Option<i64>,
    /// When the image was archived, Unix ms.
    pub archived_at: Option<i64>,
}

/// Where one batch stands.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchStatus {
    /// Batch name.
    pub batch: String,
    /// Items by state (every state present, zero or not).
    pub items: BTreeMap<String, i64>,
    /// Images by state.
    pub images: BTreeMap<String, i64>,
    /// Images by verdict.
    pub verdicts: BTreeMap<String, i64>,
    /// Failed items by error class.
    pub failed_by_class: BTreeMap<String, i64>,
    /// Items whose submit was ambiguous at least once (resubmitted under the at-least-once policy).
    pub ambiguous_items: i64,
    /// Images the batch asks for (sum of image_num).
    pub images_requested: i64,
    /// Smallest (URL expiry − archive time) seen, ms.
    pub min_slack_ms: Option<i64>,
}

/// Item keys with their ambiguity, as reported by recovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Items found in `submitting`: the process died between committing the intent and recording
    /// the answer. They were put back to `pending` and will be submitted again.
    pub ambiguous: Vec<String>,
}

/// The SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    /// The one writer (absent when read-only): every write goes through it, and the writes
    /// waiting while a commit is under way share the next transaction (group commit).
    writer: Option<mpsc::UnboundedSender<WriterMsg>>,
    /// Held for the life of the store; dropping the last clone releases the lock.
    _lock: Option<Arc<File>>,
}

/// The result of one grouped write, delivered after its transaction committed (or failed).
type Finish = Box<dyn FnOnce(std::result::Result<(), Arc<sqlx::Error>>) + Send>;

/// A write's body: runs on the writer's connection, hands back how to answer.
type RunJob = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Finish> + Send>;

/// One write, run inside the writer's transaction.
struct Job {
    run: RunJob,
    /// Delivers an error without running (the transaction could not be started).
    abort: Box<dyn FnOnce(Arc<sqlx::Error>) + Send>,
}

enum WriterMsg {
    Job(Job),
    Stop(oneshot::Sender<()>),
}

/// Largest number of writes committed together.
const MAX_GROUP: usize = 512;

/// Runs queued writes: takes every write waiting, runs each in its own savepoint (one failing
/// write does not undo the others), commits once, then answers each.
async fn writer_loop(mut conn: PoolConnection<Sqlite>, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
    let mut stop = None;
    while stop.is_none() {
        let Some(first) = rx.recv().await else { break };
        let mut jobs = Vec::new();
        match first {
            WriterMsg::Job(j) => jobs.push(j),
            WriterMsg::Stop(done) => stop = Some(done),
        }
        while stop.is_none() && jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(WriterMsg::Job(j)) => jobs.push(j),
                Ok(WriterMsg::Stop(done)) => stop = Some(done),
                Err(_) => break,
            }
        }
        if jobs.is_empty() {
            continue;
        }
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            let e = Arc::new(e);
            for j in jobs {
                (j.abort)(e.clone());
            }
            continue;
        }
        let mut finishes = Vec::with_capacity(jobs.len());
        for j in jobs {
            finishes.push((j.run)(&mut conn).await);
        }
        let commit = match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(Arc::new(e))
            }
        };
        for f in finishes {
            f(commit.clone());
        }
    }
    drop(conn);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

/// Runs `f` inside a savepoint, rolling back to it when `f` fails.
async fn in_savepoint<T, F>(conn: &mut SqliteConnection, f: F) -> Result<T>
where
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>>,
{
    sqlx::query("SAVEPOINT op").execute(&mut *conn).await?;
    match f(&mut *conn).await {
        Ok(v) => {
            sqlx::query("RELEASE op").execute(&mut *conn).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK TO op").execute(&mut *conn).await;
            let _ = sqlx::query("RELEASE op").execute(&mut *conn).await;
            Err(e)
        }
    }
}

fn job_of<F>(run: F, abort: Box<dyn FnOnce(Arc<sqlx::Error>) + Send>) -> Job
where
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Finish> + Send + 'static,
{
    Job {
        run: Box::new(run),
        abort,
    }
}

impl Store {
    /// Opens (creating if missing) the store at `path` for exclusive use: takes the lock, checks
    /// that the file is a runner store, sets WAL, and runs the embedded migrations.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub async fn open(path: &Path) -> Result<Store> {
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
        tokio::spawn(writer_loop(conn, rx));
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            writer: Some(tx),
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens an existing store for reading only, without the lock, so `status` works while a run
    /// is going on.
    pub async fn open_read_only(path: &Path) -> Result<Store> {
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
        Ok(Store {
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
            if w.send(WriterMsg::Stop(done)).is_ok() {
                let _ = wait.await;
            }
        }
        self.pool.close().await;
    }

    /// Runs `f` in the writer's next transaction and returns its result once that transaction
    /// has committed: a write is durable before its caller goes on.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let writer = self.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        let on_abort = reply.clone();
        let job = job_of(
            move |conn| {
                Box::pin(async move {
                    let result = in_savepoint(conn, f).await;
                    let finish: Finish = Box::new(move |commit| {
                        let out = match commit {
                            Ok(()) => result,
                            Err(e) => Err(StoreError::Commit(e)),
                        };
                        if let Some(r) = reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            let _ = r.send(out);
                        }
                    });
                    finish
                })
            },
            Box::new(move |e| {
                if let Some(r) = on_abort.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = r.send(Err(StoreError::Commit(e)));
                }
            }),
        );
        writer
            .send(WriterMsg::Job(job))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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
                        .push("'pending'")
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
            event(
                &mut tx,
                now,
                Some(batch),
                None,
                "loaded",
                None,
                Some(&summary.added.to_string()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(summary)
    }

    /// Names of every batch in the store, in creation order.
    pub async fn batches(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM batches ORDER BY created_at, name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Puts items left in `submitting` by a dead process back to `pending`, counting each as
    /// ambiguous: the API may or may not have created its task, and offers no way to look it up.
    #[tracing::instrument(skip_all)]
    pub async fn recover(&self) -> Result<Recovery> {
        let now = now_ms();
        self.write(move |tx| {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT key, batch FROM items WHERE state = 'submitting' ORDER BY batch, seq",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mut recovery = Recovery::default();
                for row in rows {
                    let key: String = row.get("key");
                    let batch: String = row.get("batch");
                    sqlx::query(
                        "UPDATE items SET state = 'pending', ambiguous = ambiguous + 1, retry_at = NULL,
                             updated_at = ?2 WHERE key = ?1",
                    )
                    .bind(&key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    event(
                        &mut *tx,
                        now,
                        Some(&batch),
                        Some(&key),
                        "ambiguous",
                        None,
                        Some("interrupted submit"),
                    )
                    .await?;
                    recovery.ambiguous.push(key);
                }
                Ok(recovery)
            })
        })
        .await
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
             WHERE state = 'pending' AND (batch, seq) > (?1, ?2) AND (?3 = '[]' OR batch IN (SELECT value FROM json_each(?3)))
             ORDER BY batch, seq LIMIT ?4",
        )
        .bind(after_batch)
        .bind(after_seq)
        .bind(batch_filter(batches))
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pending_of).collect()
    }

    /// One pending item by key.
    pub async fn pending_item(&self, key: &str) -> Result<Option<PendingItem>> {
        let row = sqlx::query(
            "SELECT key, batch, seq, prompt, width, height, version, image_num, attempts, retry_at
             FROM items WHERE key = ? AND state = 'pending'",
        )
        .bind(key)
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

    /// Commits the intent to submit, before the POST.
    pub async fn mark_submitting(&self, key: &str) -> Result<()> {
        let now = now_ms();
        let key = key.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE items SET state = 'submitting', attempts = attempts + 1, updated_at = ?2
                     WHERE key = ?1 AND state = 'pending'",
                )
                .bind(&key)
                .bind(now)
                .execute(&mut *c)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Invalid(format!("item {key} is not pending")));
                }
                Ok(())
            })
        })
        .await
    }

    /// Records the task id of an answered submit.
    pub async fn mark_running(&self, key: &str, task_id: &str) -> Result<i64> {
        let now = now_ms();
        let key_o = key.to_owned();
        let task_id_o = task_id.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let task_id = task_id_o.as_str();
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'running', task_id = ?2, submitted_at = ?3, retry_at = NULL,
                         error_class = NULL, error_code = NULL, error_msg = NULL, updated_at = ?3
                     WHERE key = ?1 AND state = 'submitting' RETURNING batch",
                )
                .bind(key)
                .bind(task_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "submitted",
                    None,
                    Some(task_id),
                )
                .await?;
                Ok(now)
            })
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
        let now = now_ms();
        let key_o = key.to_owned();
        let detail_o = detail.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let detail = detail_o.as_str();
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'pending', ambiguous = ambiguous + 1, retry_at = ?2, updated_at = ?3
                     WHERE key = ?1 AND state = 'submitting' RETURNING batch",
                )
                .bind(key)
                .bind(retry_at)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "ambiguous",
                    None,
                    Some(detail),
                )
                .await?;
                Ok(())
            })
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
        let now = now_ms();
        let key_o = key.to_owned();
        let msg_o = msg.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let msg = msg_o.as_str();
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'pending', retry_at = ?2, error_code = ?3, error_msg = ?4,
                         attempts = attempts - (CASE WHEN ?5 THEN 0 ELSE 1 END), updated_at = ?6
                     WHERE key = ?1 AND state = 'submitting' RETURNING batch",
                )
                .bind(key)
                .bind(retry_at)
                .bind(code)
                .bind(msg)
                .bind(counts)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "submit_error",
                    code,
                    Some(msg),
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Terminal failure of an item (from `submitting` or `running`).
    pub async fn mark_failed(
        &self,
        key: &str,
        class: ErrorClass,
        code: Option<i64>,
        msg: &str,
    ) -> Result<()> {
        let now = now_ms();
        let key_o = key.to_owned();
        let msg_o = msg.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let msg = msg_o.as_str();
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'failed', error_class = ?2, error_code = ?3, error_msg = ?4,
                         finished_at = COALESCE(finished_at, ?5), retry_at = NULL, updated_at = ?5
                     WHERE key = ?1 AND state IN ('submitting', 'running', 'pending') RETURNING batch",
                )
                .bind(key)
                .bind(class.as_str())
                .bind(code)
                .bind(msg)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "failed",
                    code,
                    Some(msg),
                )
                .await?;
                Ok(())
            })
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
        let now = now_ms();
        let key_o = key.to_owned();
        let msg_o = msg.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let msg = msg_o.as_str();
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'pending', task_id = NULL, retry_at = ?2, error_code = ?3,
                         error_msg = ?4, updated_at = ?5
                     WHERE key = ?1 AND state = 'running' RETURNING batch",
                )
                .bind(key)
                .bind(retry_at)
                .bind(code)
                .bind(msg)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "task_retry",
                    code,
                    Some(msg),
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Every running task (and every succeeded task with images still to fetch) of `batches`.
    pub async fn running_tasks(&self, batches: &[String]) -> Result<Vec<RunningTask>> {
        let rows = sqlx::query(
            "SELECT key, batch, task_id, image_num, submitted_at, state FROM items
             WHERE state IN ('running', 'fetching')
               AND (?1 = '[]' OR batch IN (SELECT value FROM json_each(?1)))
             ORDER BY submitted_at",
        )
        .bind(batch_filter(batches))
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
                fetching: r.get::<String, _>("state") == "fetching",
            })
            .collect())
    }

    /// Records a successful task: its images are listed with their URLs and verdicts; those the
    /// batch policy does not keep are marked skipped. The item moves to `fetching`, or straight to
    /// `done` when nothing is left to download. Returns the images to download.
    pub async fn mark_succeeded(
        &self,
        key: &str,
        images: &[ListedImage],
    ) -> Result<Vec<FetchImage>> {
        let now = now_ms();
        let key_o = key.to_owned();
        let images_o = images.to_vec();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let images = &images_o[..];
                let row = sqlx::query(
                    "SELECT i.batch, i.task_id, i.width, i.height, b.review_policy, b.block_policy
                     FROM items i JOIN batches b ON b.name = i.batch WHERE i.key = ? AND i.state = 'running'",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                let batch: String = row.get("batch");
                let task_id: String = row.get::<Option<String>, _>("task_id").unwrap_or_default();
                let size = size_of(&row);
                let review = Keep::parse(row.get("review_policy")).unwrap_or(Keep::Keep);
                let block = Keep::parse(row.get("block_policy")).unwrap_or(Keep::Skip);
                let mut fetch = Vec::new();
                for img in images {
                    let keep = match img.verdict {
                        Verdict::Pass => true,
                        Verdict::Review => review == Keep::Keep,
                        Verdict::Block => block == Keep::Keep,
                    };
                    let state = if keep {
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
                    .bind(keep.then_some(img.url.as_str()))
                    .bind(keep.then_some(img.url_expires_at))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if keep {
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
                let next = if fetch.is_empty() { "done" } else { "fetching" };
                sqlx::query(
                    "UPDATE items SET state = ?2, finished_at = ?3, done_at = CASE WHEN ?2 = 'done' THEN ?3 END,
                         updated_at = ?3 WHERE key = ?1",
                )
                .bind(key)
                .bind(next)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "finished",
                    None,
                    Some(&images.len().to_string()),
                )
                .await?;
                Ok(fetch)
            })
        })
        .await
    }

    /// Stores fresh URLs for the listed images of an item (after an expired URL).
    pub async fn refresh_urls(&self, key: &str, images: &[ListedImage]) -> Result<Vec<FetchImage>> {
        let now = now_ms();
        let key_o = key.to_owned();
        let images_o = images.to_vec();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let images = &images_o[..];
                for img in images {
                    sqlx::query(
                        "UPDATE images SET url = ?3, url_expires_at = ?4 WHERE item_key = ?1 AND idx = ?2 AND state = 'listed'",
                    )
                    .bind(key)
                    .bind(img.idx)
                    .bind(&img.url)
                    .bind(img.url_expires_at)
                    .execute(&mut *tx)
                    .await?;
                }
                let batch: Option<String> = sqlx::query_scalar("SELECT batch FROM items WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                event(
                    &mut *tx,
                    now,
                    batch.as_deref(),
                    Some(key),
                    "url_refresh",
                    None,
                    None,
                )
                .await?;
                Ok(())
            })
        })
        .await?;
        self.fetch_images_of(key).await
    }

    /// Listed images still to download, soonest-expiring first.
    pub async fn images_to_fetch(&self, batches: &[String]) -> Result<Vec<FetchImage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{FETCH_SELECT} WHERE m.state = 'listed'
               AND (?1 = '[]' OR i.batch IN (SELECT value FROM json_each(?1)))
             ORDER BY m.url_expires_at, m.item_key, m.idx"
        )))
        .bind(batch_filter(batches))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(fetch_image_of).collect()
    }

    async fn fetch_images_of(&self, key: &str) -> Result<Vec<FetchImage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{FETCH_SELECT} WHERE m.state = 'listed' AND m.item_key = ? ORDER BY m.idx"
        )))
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(fetch_image_of).collect()
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
        let now = now_ms();
        let key_o = key.to_owned();
        let path_o = path.to_owned();
        let sha256_o = sha256.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let path = path_o.as_str();
                let sha256 = sha256_o.as_str();
                sqlx::query(
                    "UPDATE images SET state = 'archived', path = ?3, sha256 = ?4, bytes = ?5, archived_at = ?6,
                         slack_ms = url_expires_at - ?6, error = NULL
                     WHERE item_key = ?1 AND idx = ?2 AND state = 'listed'",
                )
                .bind(key)
                .bind(idx)
                .bind(path)
                .bind(sha256)
                .bind(bytes)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                finish_item_if_complete(&mut *tx, key, now).await?;
                let record = image_record(&mut *tx, key, idx).await?;
                event(
                    &mut *tx,
                    now,
                    Some(&record.batch),
                    Some(key),
                    "archived",
                    None,
                    Some(&idx.to_string()),
                )
                .await?;
                Ok(record)
            })
        })
        .await
    }

    /// Records that an image's URL is dead and could not be refreshed.
    pub async fn mark_lost(&self, key: &str, idx: u32, reason: &str) -> Result<()> {
        let now = now_ms();
        let key_o = key.to_owned();
        let reason_o = reason.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let reason = reason_o.as_str();
                sqlx::query("UPDATE images SET state = 'lost', error = ?3 WHERE item_key = ?1 AND idx = ?2 AND state = 'listed'")
                    .bind(key)
                    .bind(idx)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                finish_item_if_complete(&mut *tx, key, now).await?;
                let batch: Option<String> = sqlx::query_scalar("SELECT batch FROM items WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                event(
                    &mut *tx,
                    now,
                    batch.as_deref(),
                    Some(key),
                    "lost",
                    None,
                    Some(reason),
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Counts a failed download attempt of an image.
    pub async fn note_fetch_error(&self, key: &str, idx: u32, error: &str) -> Result<i64> {
        let (key, error) = (key.to_owned(), error.to_owned());
        self.write(move |c| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "UPDATE images SET attempts = attempts + 1, error = ?3 WHERE item_key = ?1 AND idx = ?2
                     RETURNING attempts",
                )
                .bind(&key)
                .bind(idx)
                .bind(&error)
                .fetch_one(&mut *c)
                .await?)
            })
        })
        .await
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
            "{RECORD_SELECT} WHERE i.batch = ? AND m.state != 'listed' ORDER BY i.seq, m.idx"
        )))
        .bind(batch)
        .fetch(&self.pool)
        .map(|row| row.map_err(StoreError::from).and_then(|r| record_of(&r)))
        .boxed()
    }

    /// Puts an archived image whose file is missing or corrupt back to `listed`, and its item
    /// back to `fetching`, so the next run downloads it again (after refreshing its URL).
    pub async fn requeue_image(&self, key: &str, idx: u32, reason: &str) -> Result<()> {
        let now = now_ms();
        let key_o = key.to_owned();
        let reason_o = reason.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let key = key_o.as_str();
                let reason = reason_o.as_str();
                sqlx::query(
                    "UPDATE images SET state = 'listed', path = NULL, sha256 = NULL, bytes = NULL, archived_at = NULL,
                         slack_ms = NULL, url_expires_at = 0, attempts = 0, error = ?3
                     WHERE item_key = ?1 AND idx = ?2",
                )
                .bind(key)
                .bind(idx)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                let batch: String = sqlx::query_scalar(
                    "UPDATE items SET state = 'fetching', done_at = NULL, updated_at = ?2 WHERE key = ?1 RETURNING batch",
                )
                .bind(key)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                event(
                    &mut *tx,
                    now,
                    Some(&batch),
                    Some(key),
                    "requeued",
                    None,
                    Some(reason),
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Puts failed items back to pending (all, or those of one error class). Returns how many.
    pub async fn requeue_failed(&self, batches: &[String], class: Option<&str>) -> Result<u64> {
        let now = now_ms();
        let batches_o = batches.to_vec();
        let class_o = class.map(str::to_owned);
        self.write(move |tx| {
            Box::pin(async move {
                let batches = &batches_o[..];
                let class = class_o.as_deref();
                let keys: Vec<(String, String)> = sqlx::query_as(
                    "SELECT key, batch FROM items WHERE state = 'failed' AND (?1 IS NULL OR error_class = ?1)
                       AND (?2 = '[]' OR batch IN (SELECT value FROM json_each(?2)))",
                )
                .bind(class)
                .bind(batch_filter(batches))
                .fetch_all(&mut *tx)
                .await?;
                let mut n = 0;
                for (key, batch) in keys {
                    sqlx::query(
                        "UPDATE items SET state = 'pending', attempts = 0, retry_at = NULL, task_id = NULL,
                             error_class = NULL, error_code = NULL, error_msg = NULL, finished_at = NULL,
                             updated_at = ?2 WHERE key = ?1",
                    )
                    .bind(&key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    event(&mut *tx, now, Some(&batch), Some(&key), "retry", None, class).await?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .await
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
             WHERE state = 'failed' GROUP BY batch, class",
        )
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
             FROM items WHERE batch = ? AND state = 'failed' ORDER BY seq",
        )
        .bind(batch)
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

    /// Caches an access token (one row: a new token replaces the old one).
    pub async fn save_token(
        &self,
        base_url: &str,
        client_id: &str,
        token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let (base_url, client_id, token) =
            (base_url.to_owned(), client_id.to_owned(), token.to_owned());
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO token_cache (id, base_url, client_id, access_token, expires_at) VALUES (1, ?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET base_url = ?1, client_id = ?2, access_token = ?3, expires_at = ?4",
                )
                .bind(&base_url)
                .bind(&client_id)
                .bind(&token)
                .bind(expires_at)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Forgets the cached token (after the API called it invalid or expired).
    pub async fn clear_token(&self) -> Result<()> {
        self.write(|c| {
            Box::pin(async move {
                sqlx::query("DELETE FROM token_cache")
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Records an event that belongs to no state change (an error answer, a quota park).
    pub async fn record_event(
        &self,
        batch: Option<&str>,
        key: Option<&str>,
        kind: &str,
        code: Option<i64>,
        detail: Option<&str>,
    ) -> Result<()> {
        let batch_o = batch.map(str::to_owned);
        let key_o = key.map(str::to_owned);
        let kind_o = kind.to_owned();
        let detail_o = detail.map(str::to_owned);
        self.write(move |tx| {
            Box::pin(async move {
                let batch = batch_o.as_deref();
                let key = key_o.as_deref();
                let kind = kind_o.as_str();
                let detail = detail_o.as_deref();
                event(&mut *tx, now_ms(), batch, key, kind, code, detail).await?;
                Ok(())
            })
        })
        .await
    }

    /// Starts a run record; returns its id.
    pub async fn start_run(&self, command: &str) -> Result<i64> {
        let command = command.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "INSERT INTO runs (command, started_at) VALUES (?, ?) RETURNING id",
                )
                .bind(&command)
                .bind(now_ms())
                .fetch_one(&mut *c)
                .await?)
            })
        })
        .await
    }

    /// Closes a run record.
    pub async fn end_run(&self, id: i64, exit_code: i32, summary: &str) -> Result<()> {
        let summary = summary.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE runs SET ended_at = ?2, exit_code = ?3, summary = ?4 WHERE id = ?1",
                )
                .bind(id)
                .bind(now_ms())
                .bind(exit_code)
                .bind(&summary)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
    }
}

const FETCH_SELECT: &str =
    "SELECT m.item_key, m.idx, m.url, m.url_expires_at, m.verdict, m.attempts,
        i.batch, i.task_id, i.width, i.height
    FROM images m JOIN items i ON i.key = m.item_key";

const RECORD_SELECT: &str =
    "SELECT m.item_key, m.idx, m.state, m.verdict, m.path, m.sha256, m.bytes,
        m.url_expires_at, m.archived_at, i.batch, i.task_id, i.prompt, i.width, i.height, i.version,
        i.image_num, i.variant, i.tags, i.vars, i.submitted_at, i.finished_at
    FROM images m JOIN items i ON i.key = m.item_key";

/// A JSON array of batch names for `json_each`; `[]` means every batch.
fn batch_filter(batches: &[String]) -> String {
    serde_json::to_string(batches).unwrap_or_else(|_| "[]".into())
}

fn pending_of(row: &SqliteRow) -> Result<PendingItem> {
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

fn fetch_image_of(r: &SqliteRow) -> Result<FetchImage> {
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

fn record_of(r: &SqliteRow) -> Result<ImageRecord> {
    let json = |col: &str| -> Result<BTreeMap<String, String>> {
        serde_json::from_str(&r.get::<String, _>(col))
            .map_err(|e| StoreError::Invalid(format!("{col}: {e}")))
    };
    Ok(ImageRecord {
        path: r.get("path"),
        sha256: r.get("sha256"),
        bytes: r.get("bytes"),
        state: r.get::<String, _>("state").parse()?,
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

async fn image_record(tx: &mut SqliteConnection, key: &str, idx: u32) -> Result<ImageRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{RECORD_SELECT} WHERE m.item_key = ? AND m.idx = ?"
    )))
    .bind(key)
    .bind(idx)
    .fetch_one(&mut *tx)
    .await?;
    record_of(&row)
}

fn size_of(r: &SqliteRow) -> Size {
    Size::new(
        r.get::<i64, _>("width") as u32,
        r.get::<i64, _>("height") as u32,
    )
}

fn version_of(r: &SqliteRow) -> Result<Version> {
    let v: String = r.get("version");
    Version::parse(&v).ok_or_else(|| StoreError::Invalid(format!("version {v:?}")))
}

fn verdict_of(r: &SqliteRow) -> Result<Verdict> {
    let v: String = r.get("verdict");
    Verdict::parse(&v).ok_or_else(|| StoreError::Invalid(format!("verdict {v:?}")))
}

async fn finish_item_if_complete(tx: &mut SqliteConnection, key: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE items SET state = 'done', done_at = ?2, updated_at = ?2
         WHERE key = ?1 AND state = 'fetching'
           AND NOT EXISTS (SELECT 1 FROM images WHERE item_key = ?1 AND state = 'listed')",
    )
    .bind(key)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn event(
    tx: &mut SqliteConnection,
    at: i64,
    batch: Option<&str>,
    key: Option<&str>,
    kind: &str,
    code: Option<i64>,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, batch, item_key, kind, code, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(batch)
    .bind(key)
    .bind(kind)
    .bind(code)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Options for every SQLite pool of the project: no idle timeout and no maximum lifetime.
///
/// The store's connections live as long as the process. Either setting makes sqlx 0.9 run a
/// periodic task that loops `num_idle()` times over `try_acquire()` without yielding; when a
/// pool is closed while a connection is being taken, that count wraps to `usize::MAX` and the
/// task spins for ever, so the runtime (and the process) cannot shut down.
///
/// Without either, sqlx would instead open `min_connections` in a task of its own while the pool
/// opens its first connection: two connections turning a new file to WAL at once, and one of them
/// refused as locked. So no pool of the project asks for a minimum either.
pub fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .idle_timeout(None)
        .max_lifetime(None)
        .min_connections(0)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the store's exclusive lock, or says who holds it.
fn acquire_lock(path: &Path) -> Result<File> {
    let lock_path = lock_path(path);
    let mut file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = holder.trim();
            return Err(StoreError::Busy {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown pid".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
    }
    file.set_len(0).map_err(io_err(&lock_path))?;
    write!(file, "pid {}", std::process::id()).map_err(io_err(&lock_path))?;
    Ok(file)
}

fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Creates the store file readable by its owner alone before SQLite sees it (SQLite gives its WAL
/// and shared-memory files the same permissions).
fn create_private(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    private_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    Ok(())
}

async fn connect(path: &Path, read_only: bool) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(read_only)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = pool_options()
        .max_connections(4)
        .connect_with(opts)
        .await
        .map_err(|source| corrupt_or_query(path, source))?;
    Ok(pool)
}

/// Whether SQLite refused for a lock held elsewhere (SQLITE_BUSY or SQLITE_LOCKED, with any
/// extended code).
fn is_locked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}

/// A lock held by another program, met while opening, said as such.
fn locked_or(path: &Path, e: StoreError) -> StoreError {
    if e.is_busy() && !matches!(e, StoreError::Busy { .. }) {
        StoreError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        e
    }
}

/// Checks that `path` is a runner store (or empty) on a connection that sets no pragma: turning
/// on WAL before the check would rewrite the header of a foreign file we must not touch.
async fn probe_identity(path: &Path, read_only: bool) -> Result<()> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(read_only)
        .busy_timeout(Duration::from_secs(10));
    let pool = pool_options()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(|source| corrupt_or_query(path, source))?;
    let checked = check_identity(&pool, path).await;
    pool.close().await;
    checked
}

fn corrupt_or_query(path: &Path, source: sqlx::Error) -> StoreError {
    let msg = source.to_string();
    if msg.contains("not a database")
        || msg.contains("malformed")
        || msg.contains("file is encrypted")
    {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            source,
        }
    } else {
        StoreError::Query(source)
    }
}

/// Refuses SQLite files that belong to something else: a foreign `application_id`, or tables but
/// no migration history of ours.
async fn check_identity(pool: &SqlitePool, path: &Path) -> Result<()> {
    let app_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(pool)
        .await
        .map_err(|e| corrupt_or_query(path, e))?;
    if app_id == APPLICATION_ID {
        let check: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(pool)
            .await
            .map_err(|e| corrupt_or_query(path, e))?;
        if check != "ok" {
            // The answer starts with a `*** in database main ***` banner, then one problem a line.
            let problems: Vec<&str> = check
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("***"))
                .collect();
            let first = problems.first().copied().unwrap_or("failed").trim();
            let detail = match problems.len() {
                0 | 1 => first.to_string(),
                n => format!("{first}; {} more problem(s)", n - 1),
            };
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            });
        }
        return Ok(());
    }
    if app_id != 0 {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            reason: format!("application_id {app_id:#x}"),
        });
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| corrupt_or_query(path, e))?;
    if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            reason: format!("it holds other tables: {}", tables.join(", ")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobfile::Origin;

    fn item(batch: &str, n: u32, image_num: u8) -> Item {
        Item {
            key: format!("{:032x}", u128::from(n) + 0xabc0_0000),
            batch: batch.into(),
            prompt: format!("提示{n}"),
            size: Size::new(512, 512),
            version: Version::V2,
            image_num,
            variant: 0,
            tags: BTreeMap::from([("sku".to_string(), format!("A-{n}"))]),
            vars: BTreeMap::new(),
            template: None,
            line: n,
            origin: Origin::JobFile,
        }
    }

    fn listed(idx: u32, verdict: Verdict) -> ListedImage {
        ListedImage {
            idx,
            url: format!("http://h/{idx}.png"),
            url_expires_at: now_ms() + 60_000,
            width: 512,
            height: 512,
            verdict,
        }
    }

    #[tokio::test]
    async fn open_is_private_exclusive_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let busy = Store::open(&path).await.unwrap_err();
        assert!(busy.is_busy(), "{busy}");
        assert!(
            busy.to_string()
                .contains("in use by another runner process")
        );
        // Read-only opening works beside the writer.
        Store::open_read_only(&path)
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        store.close().await;
        drop(store);
        Store::open(&path).await.unwrap();

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
        let e = Store::open(&garbage).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

        let foreign = dir.path().join("foreign.db");
        {
            let pool = connect_new(&foreign).await;
            sqlx::query("CREATE TABLE photos (id INTEGER)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let before = std::fs::read(&foreign).unwrap();
        let e = Store::open(&foreign).await.unwrap_err();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("photos"));
        let e = Store::open_read_only(&foreign).await.unwrap_err();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        // Refused untouched: not switched to WAL (which rewrites the header), no WAL files.
        assert_eq!(std::fs::read(&foreign).unwrap(), before);
        for ext in ["db-wal", "db-shm"] {
            assert!(!foreign.with_extension(ext).exists(), "{ext} created");
        }
    }

    #[tokio::test]
    async fn a_damaged_store_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let store = Store::open(&path).await.unwrap();
            let items: Vec<Item> = (0..200).map(|n| item("b", n, 1)).collect();
            store
                .load_items("b", ArchivePolicy::default(), "f.yaml", &items)
                .await
                .unwrap();
            store.close().await;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() >= 4 * page, "{} bytes", bytes.len());
        bytes[3 * page..4 * page].fill(0xff);
        std::fs::write(&path, bytes).unwrap();
        let e = Store::open(&path).await.unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("restore it from a backup"), "{e}");
        assert!(!e.is_busy());
    }

    async fn connect_new(path: &Path) -> SqlitePool {
        pool_options()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true),
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn loading_twice_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let items: Vec<Item> = (0..5).map(|n| item("b", n, 1)).collect();
        let a = store
            .load_items("b", ArchivePolicy::default(), "f.yaml", &items)
            .await
            .unwrap();
        assert_eq!(
            a,
            LoadSummary {
                added: 5,
                existing: 0
            }
        );
        let mut more = items.clone();
        more.push(item("b", 9, 2));
        let b = store
            .load_items("b", ArchivePolicy::default(), "f.yaml", &more)
            .await
            .unwrap();
        assert_eq!(
            b,
            LoadSummary {
                added: 1,
                existing: 5
            }
        );
        let pending = store.pending_items(&[], None, 100).await.unwrap();
        assert_eq!(pending.len(), 6);
        // Paging by cursor.
        let first = store.pending_items(&[], None, 2).await.unwrap();
        let next = store
            .pending_items(&[], Some((&first[1].batch, first[1].seq)), 10)
            .await
            .unwrap();
        assert_eq!(next.len(), 4);
        assert_eq!(next[0].seq, first[1].seq + 1);
        assert!(
            store
                .pending_items(&["other".into()], None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn the_item_lifecycle_and_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let it = item("b", 1, 3);
        store
            .load_items(
                "b",
                ArchivePolicy::default(),
                "f",
                std::slice::from_ref(&it),
            )
            .await
            .unwrap();
        store.mark_submitting(&it.key).await.unwrap();
        assert!(
            store.mark_submitting(&it.key).await.is_err(),
            "not pending any more"
        );
        store
            .mark_running(&it.key, "1659384536691865192")
            .await
            .unwrap();
        let running = store.running_tasks(&[]).await.unwrap();
        assert_eq!(running[0].task_id, "1659384536691865192");
        // Default policy: pass and review kept, block skipped.
        let fetch = store
            .mark_succeeded(
                &it.key,
                &[
                    listed(0, Verdict::Pass),
                    listed(1, Verdict::Review),
                    listed(2, Verdict::Block),
                ],
            )
            .await
            .unwrap();
        assert_eq!(fetch.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(store.images_to_fetch(&[]).await.unwrap().len(), 2);
        store
            .mark_archived(&it.key, 0, "images/x-0.png", "aa", 10)
            .await
            .unwrap();
        let st = &store.status().await.unwrap()[0];
        assert_eq!(st.items["fetching"], 1);
        let rec = store
            .mark_archived(&it.key, 1, "images/x-1.png", "bb", 11)
            .await
            .unwrap();
        assert_eq!(rec.tags["sku"], "A-1");
        let st = &store.status().await.unwrap()[0];
        assert_eq!(st.items["done"], 1);
        assert_eq!(st.images["archived"], 2);
        assert_eq!(st.images["skipped"], 1);
        assert_eq!(st.verdicts["block"], 1);
        assert!(st.min_slack_ms.unwrap() > 0);
        let records = store.image_records("b").await.unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].state, ImageState::Skipped);
        assert!(records[2].path.is_none());
        // Verify found the file gone: back to fetching.
        store.requeue_image(&it.key, 1, "missing").await.unwrap();
        assert_eq!(store.status().await.unwrap()[0].items["fetching"], 1);
        assert!(store.running_tasks(&[]).await.unwrap()[0].fetching);
    }

    #[tokio::test]
    async fn interrupted_submits_are_recovered_as_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let items: Vec<Item> = (0..3).map(|n| item("b", n, 1)).collect();
        store
            .load_items("b", ArchivePolicy::default(), "f", &items)
            .await
            .unwrap();
        store.mark_submitting(&items[1].key).await.unwrap();
        let rec = store.recover().await.unwrap();
        assert_eq!(rec.ambiguous, vec![items[1].key.clone()]);
        let st = &store.status().await.unwrap()[0];
        assert_eq!(st.items["pending"], 3);
        assert_eq!(st.ambiguous_items, 1);
        assert!(store.recover().await.unwrap().ambiguous.is_empty());
    }

    #[tokio::test]
    async fn failures_are_requeued_by_class() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let items: Vec<Item> = (0..3).map(|n| item("b", n, 1)).collect();
        store
            .load_items("b", ArchivePolicy::default(), "f", &items)
            .await
            .unwrap();
        for (it, class) in items.iter().zip([
            ErrorClass::Permanent,
            ErrorClass::Timeout,
            ErrorClass::Timeout,
        ]) {
            store.mark_submitting(&it.key).await.unwrap();
            store
                .mark_failed(&it.key, class, Some(1), "x")
                .await
                .unwrap();
        }
        assert_eq!(
            store.status().await.unwrap()[0].failed_by_class["timeout"],
            2
        );
        assert_eq!(store.requeue_failed(&[], Some("timeout")).await.unwrap(), 2);
        assert_eq!(store.count_items(&[], ItemState::Pending).await.unwrap(), 2);
        assert_eq!(store.requeue_failed(&[], None).await.unwrap(), 1);
        assert_eq!(store.count_items(&[], ItemState::Failed).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn token_cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let now = now_ms();
        assert!(store.cached_token("u", "c", now).await.unwrap().is_none());
        store
            .save_token("u", "c", "24.tok", now + 10_000)
            .await
            .unwrap();
        assert_eq!(
            store.cached_token("u", "c", now).await.unwrap().unwrap().0,
            "24.tok"
        );
        assert!(
            store
                .cached_token("u", "other", now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .cached_token("u", "c", now + 20_000)
                .await
                .unwrap()
                .is_none()
        );
        store.clear_token().await.unwrap();
        assert!(store.cached_token("u", "c", now).await.unwrap().is_none());
    }
}
