//! Opening an SQLite store: the exclusive lock on `<store>.lock`, a file readable by its owner
//! alone, the identity check that refuses foreign or damaged files untouched, and the pool.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::super::StoreError;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Written to `PRAGMA application_id` so that a foreign SQLite file is never mistaken for a store.
pub(super) const APPLICATION_ID: i64 = 0x524E_5231; // "RNR1"

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
///
/// A connection is not pinged before it is handed out: it is a file in this process, not a
/// socket that can go stale, and the ping was one more round trip to SQLite's thread per query.
pub fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .idle_timeout(None)
        .max_lifetime(None)
        .min_connections(0)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// How long a query waits for a free connection before it fails.
#[cfg(not(test))]
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// In unit tests the scheduler runs on tokio's paused clock, which jumps to the next timer
/// whenever every task waits, also while a query waits on SQLite's thread: a day of virtual
/// time can pass before that thread answers.
#[cfg(test)]
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(86_400);

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
pub(super) fn acquire_lock(path: &Path) -> Result<File> {
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
pub(super) fn create_private(path: &Path) -> Result<()> {
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

pub(super) async fn connect(path: &Path, read_only: bool) -> Result<SqlitePool> {
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

/// A lock held by another program, met while opening, said as such.
pub(super) fn locked_or(path: &Path, e: StoreError) -> StoreError {
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
pub(super) async fn probe_identity(path: &Path, read_only: bool) -> Result<()> {
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

pub(super) fn corrupt_or_query(path: &Path, source: sqlx::Error) -> StoreError {
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
