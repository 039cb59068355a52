//! Errors of the store layer, classified by methods (never by their messages).

use std::path::PathBuf;
use std::sync::Arc;

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

/// Whether SQLite refused for a lock held elsewhere (SQLITE_BUSY or SQLITE_LOCKED, with any
/// extended code).
pub(crate) fn is_locked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}
