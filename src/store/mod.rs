//! The store: batches, items (one submit each), images, the cached access token, an event
//! history and run records. The only module that speaks SQL.
//!
//! - [`types`]: typed states ([`ItemState`], and the archive's [`ImageState`]) and event kinds
//!   ([`EventKind`]), bound as parameters, never spelled in SQL; the rows the scheduler uses.
//! - [`views`]: the neutral rows the report, the exports and `status` read.
//! - [`Store`] and [`Reports`]: the interface every backend implements; callers hold an
//!   `Arc<dyn Store>` from [`open`].
//! - [`sqlite`]: the embedded backend (one file, no server), with its migrations in
//!   `migrations/`, its group-commit writer of typed operations and its queries.
//!
//! The store knows nothing of the scheduler, the report or the command line.

mod error;
mod interface;
pub mod sqlite;
mod types;
pub mod views;

pub use crate::archive::{ImageRecord, ImageState};
pub use error::StoreError;
pub use interface::{Queries, Reports, Store};
pub use sqlite::{SqliteStore, pool_options};
pub use types::{
    BatchStatus, EventKind, FetchImage, ItemState, ListedImage, LoadSummary, PendingItem, Recovery,
    RunningTask,
};

/// Opens the store at `path` for a run: exclusive, created when missing, migrated.
pub async fn open(path: &std::path::Path) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(SqliteStore::open(path).await?))
}

/// Opens an existing store for reading alone, beside a run that holds it.
pub async fn open_read_only(
    path: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(
        SqliteStore::open_read_only(path).await?,
    ))
}
