//! The store's writes, one struct each, applied by the writer inside its transaction. An item's
//! state change and its event are one [`Transition`].
//!
//! - [`item`]: submitting, the answers of submits and tasks, recovery, requeueing failed items.
//! - [`image`]: a task's images listed, refreshed, archived, lost, requeued.
//! - [`misc`]: the token cache, events without a state change, run records.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::super::{EventKind, ItemState, StoreError};

mod image;
mod item;
mod misc;

pub(super) use image::{
    FetchError, MarkArchived, MarkLost, MarkSucceeded, RefreshUrls, RequeueImage,
};
pub(super) use item::{
    MarkFailed, MarkRunning, MarkSubmitting, Recover, RequeueFailed, SubmitAmbiguous,
    SubmitRefused, TaskRetry,
};
pub(super) use misc::{ClearToken, EndRun, RecordEvent, SaveToken, StartRun};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A value a transition sets in a column of the item.
#[derive(Debug, Clone, Copy)]
pub(super) enum Val<'a> {
    /// An integer, or NULL.
    Int(Option<i64>),
    /// A text, or NULL.
    Text(Option<&'a str>),
    /// An SQL expression over the row's current values (no parameters).
    Expr(&'static str),
    /// The column's current value, or this one where it has none.
    OrInt(i64),
}

/// One item's state change and the event that records it: `UPDATE items SET state = to, …`
/// where the item is in one of `from`, then the event (if any). Fails (changing nothing) when the item is
/// not in one of `from`.
#[derive(Debug)]
pub(super) struct Transition<'a> {
    /// Item key.
    pub key: &'a str,
    /// The states the item may be in.
    pub from: &'a [ItemState],
    /// Its new state.
    pub to: ItemState,
    /// Other columns set with it.
    pub set: &'a [(&'static str, Val<'a>)],
    /// The event recorded, if the change is one the history keeps.
    pub event: Option<EventKind>,
    /// The API error code, if any.
    pub code: Option<i64>,
    /// The event's detail.
    pub detail: Option<&'a str>,
}

impl Transition<'_> {
    /// Applies the change; returns the item's batch.
    pub async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<String> {
        let mut q = QueryBuilder::<Sqlite>::new("UPDATE items SET state = ");
        q.push_bind(self.to.as_str());
        q.push(", updated_at = ").push_bind(now);
        for (col, val) in self.set {
            q.push(", ").push(*col).push(" = ");
            match *val {
                Val::Int(v) => {
                    q.push_bind(v);
                }
                Val::Text(v) => {
                    q.push_bind(v);
                }
                Val::Expr(e) => {
                    q.push(e);
                }
                Val::OrInt(v) => {
                    q.push("COALESCE(")
                        .push(*col)
                        .push(", ")
                        .push_bind(v)
                        .push(")");
                }
            }
        }
        q.push(" WHERE key = ").push_bind(self.key);
        q.push(" AND state IN (");
        let mut states = q.separated(", ");
        for st in self.from {
            states.push_bind(st.as_str());
        }
        q.push(") RETURNING batch");
        let batch: Option<String> = q.build_query_scalar().fetch_optional(&mut *c).await?;
        let Some(batch) = batch else {
            let from: Vec<&str> = self.from.iter().map(|s| s.as_str()).collect();
            return Err(StoreError::Invalid(format!(
                "item {} is not {}",
                self.key,
                from.join(" or ")
            )));
        };
        if let Some(kind) = self.event {
            event(
                c,
                now,
                Some(&batch),
                Some(self.key),
                kind,
                self.code,
                self.detail,
            )
            .await?;
        }
        Ok(batch)
    }
}

/// Records an event.
pub(super) async fn event(
    c: &mut SqliteConnection,
    at: i64,
    batch: Option<&str>,
    key: Option<&str>,
    kind: EventKind,
    code: Option<i64>,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, batch, item_key, kind, code, detail) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(batch)
    .bind(key)
    .bind(kind.as_str())
    .bind(code)
    .bind(detail)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The batch of an item, when it exists.
pub(super) async fn batch_of(c: &mut SqliteConnection, key: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT batch FROM items WHERE key = ?")
        .bind(key)
        .fetch_optional(&mut *c)
        .await?)
}
