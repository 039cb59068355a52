//! The store: batches, items (one submit each), images, the cached access token, an event
//! history and run records. The only module that speaks SQL.
//!
//! - [`types`]: typed states ([`ItemState`], and the archive's [`ImageState`]) and event kinds
//!   ([`EventKind`]), bound as parameters, never spelled in SQL; the rows the scheduler uses.
//! - [`views`]: the neutral rows the report, the exports and `status` read.
//! - [`sqlite`]: the embedded backend (one file, no server), with its migrations in
//!   `migrations/`, its group-commit writer of typed operations and its queries.
//!
//! The store knows nothing of the scheduler, the report or the command line.

mod error;
pub mod sqlite;
mod types;
pub mod views;

pub use crate::archive::{ImageRecord, ImageState};
pub use error::StoreError;
pub use sqlite::{SqliteStore as Store, pool_options};
pub use types::{
    BatchStatus, EventKind, FetchImage, ItemState, ListedImage, LoadSummary, PendingItem, Recovery,
    RunningTask,
};
