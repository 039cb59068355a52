//! Writes of an item's submit and task: the intent before the POST, the answer after it, a task's
//! failure, recovery after a crash, and `runner retry`.

use sqlx::{Row, SqliteConnection};

use super::super::writer::Apply;
use super::{Result, Transition, Val};
use crate::api::ErrorClass;
use crate::store::{EventKind, ItemState, Recovery, StoreError};

use ItemState::{Failed, Pending, Running, Submitting};

/// Commits the intent to submit, before the POST.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkSubmitting {
    pub key: String,
}

impl Apply for MarkSubmitting {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        Transition {
            key: &self.key,
            from: &[Pending],
            to: Submitting,
            set: &[("attempts", Val::Expr("attempts + 1"))],
            event: None,
            code: None,
            detail: None,
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// Records the task id of an answered submit; answers the time it was recorded.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkRunning {
    pub key: String,
    pub task_id: String,
}

impl Apply for MarkRunning {
    type Output = i64;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<i64> {
        Transition {
            key: &self.key,
            from: &[Submitting],
            to: Running,
            set: &[
                ("task_id", Val::Text(Some(&self.task_id))),
                ("submitted_at", Val::Int(Some(now))),
                ("retry_at", Val::Int(None)),
                ("error_class", Val::Text(None)),
                ("error_code", Val::Int(None)),
                ("error_msg", Val::Text(None)),
            ],
            event: Some(EventKind::Submitted),
            code: None,
            detail: Some(&self.task_id),
        }
        .apply(c, now)
        .await?;
        Ok(now)
    }
}

/// A submit that got no usable answer: back to pending with backoff, counted as ambiguous.
#[derive(Debug)]
pub(in crate::store::sqlite) struct SubmitAmbiguous {
    pub key: String,
    pub detail: String,
    pub retry_at: i64,
}

impl Apply for SubmitAmbiguous {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        Transition {
            key: &self.key,
            from: &[Submitting],
            to: Pending,
            set: &[
                ("ambiguous", Val::Expr("ambiguous + 1")),
                ("retry_at", Val::Int(Some(self.retry_at))),
            ],
            event: Some(EventKind::Ambiguous),
            code: None,
            detail: Some(&self.detail),
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// A submit refused with an error that allows a retry: back to pending, not before `retry_at`;
/// an attempt that does not `count` is given back.
#[derive(Debug)]
pub(in crate::store::sqlite) struct SubmitRefused {
    pub key: String,
    pub code: Option<i64>,
    pub msg: String,
    pub retry_at: Option<i64>,
    pub counts: bool,
}

impl Apply for SubmitRefused {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        let mut set = vec![
            ("retry_at", Val::Int(self.retry_at)),
            ("error_code", Val::Int(self.code)),
            ("error_msg", Val::Text(Some(&self.msg))),
        ];
        if !self.counts {
            set.push(("attempts", Val::Expr("attempts - 1")));
        }
        Transition {
            key: &self.key,
            from: &[Submitting],
            to: Pending,
            set: &set,
            event: Some(EventKind::SubmitError),
            code: self.code,
            detail: Some(&self.msg),
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// Terminal failure of an item.
#[derive(Debug)]
pub(in crate::store::sqlite) struct MarkFailed {
    pub key: String,
    pub class: ErrorClass,
    pub code: Option<i64>,
    pub msg: String,
}

impl Apply for MarkFailed {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        Transition {
            key: &self.key,
            from: &[Submitting, Running, Pending],
            to: Failed,
            set: &[
                ("error_class", Val::Text(Some(self.class.as_str()))),
                ("error_code", Val::Int(self.code)),
                ("error_msg", Val::Text(Some(&self.msg))),
                ("finished_at", Val::OrInt(now)),
                ("retry_at", Val::Int(None)),
            ],
            event: Some(EventKind::Failed),
            code: self.code,
            detail: Some(&self.msg),
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// A running task failed in a way a new submit may mend: back to pending, not before `retry_at`.
#[derive(Debug)]
pub(in crate::store::sqlite) struct TaskRetry {
    pub key: String,
    pub code: Option<i64>,
    pub msg: String,
    pub retry_at: i64,
}

impl Apply for TaskRetry {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        Transition {
            key: &self.key,
            from: &[Running],
            to: Pending,
            set: &[
                ("task_id", Val::Text(None)),
                ("retry_at", Val::Int(Some(self.retry_at))),
                ("error_code", Val::Int(self.code)),
                ("error_msg", Val::Text(Some(&self.msg))),
            ],
            event: Some(EventKind::TaskRetry),
            code: self.code,
            detail: Some(&self.msg),
        }
        .apply(c, now)
        .await?;
        Ok(())
    }
}

/// Puts items left in `submitting` by a dead process back to `pending`, each counted ambiguous.
#[derive(Debug)]
pub(in crate::store::sqlite) struct Recover;

impl Apply for Recover {
    type Output = Recovery;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<Recovery> {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM items WHERE state = ? ORDER BY batch, seq")
                .bind(Submitting.as_str())
                .fetch_all(&mut *c)
                .await?;
        let mut recovery = Recovery::default();
        for key in keys {
            Transition {
                key: &key,
                from: &[Submitting],
                to: Pending,
                set: &[
                    ("ambiguous", Val::Expr("ambiguous + 1")),
                    ("retry_at", Val::Int(None)),
                ],
                event: Some(EventKind::Ambiguous),
                code: None,
                detail: Some("interrupted submit"),
            }
            .apply(c, now)
            .await?;
            recovery.ambiguous.push(key);
        }
        Ok(recovery)
    }
}

/// Puts failed items of `batches` (all when empty) back to pending: all, or those of one error
/// class. Answers how many.
#[derive(Debug)]
pub(in crate::store::sqlite) struct RequeueFailed {
    pub batches: String,
    pub class: Option<String>,
}

impl Apply for RequeueFailed {
    type Output = u64;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT key FROM items WHERE state = ?1 AND (?2 IS NULL OR error_class = ?2)
               AND (?3 = '[]' OR batch IN (SELECT value FROM json_each(?3)))",
        )
        .bind(Failed.as_str())
        .bind(self.class.as_deref())
        .bind(&self.batches)
        .fetch_all(&mut *c)
        .await?;
        let mut n = 0;
        for row in rows {
            let key: String = row.try_get("key").map_err(StoreError::from)?;
            Transition {
                key: &key,
                from: &[Failed],
                to: Pending,
                set: &[
                    ("attempts", Val::Int(Some(0))),
                    ("retry_at", Val::Int(None)),
                    ("task_id", Val::Text(None)),
                    ("error_class", Val::Text(None)),
                    ("error_code", Val::Int(None)),
                    ("error_msg", Val::Text(None)),
                    ("finished_at", Val::Int(None)),
                ],
                event: Some(EventKind::Retry),
                code: None,
                detail: self.class.as_deref(),
            }
            .apply(c, now)
            .await?;
            n += 1;
        }
        Ok(n)
    }
}
