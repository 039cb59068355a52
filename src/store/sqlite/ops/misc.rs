//! Writes that change no item: the token cache, events of their own, run records.

use sqlx::SqliteConnection;

use super::super::writer::Apply;
use super::{Result, event};
use crate::store::EventKind;

/// Caches an access token (one row: a new token replaces the old one).
#[derive(Debug)]
pub(in crate::store::sqlite) struct SaveToken {
    pub base_url: String,
    pub client_id: String,
    pub token: String,
    pub expires_at: i64,
}

impl Apply for SaveToken {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, _now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO token_cache (id, base_url, client_id, access_token, expires_at) VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET base_url = ?1, client_id = ?2, access_token = ?3, expires_at = ?4",
        )
        .bind(&self.base_url)
        .bind(&self.client_id)
        .bind(&self.token)
        .bind(self.expires_at)
        .execute(&mut *c)
        .await?;
        Ok(())
    }
}

/// Forgets the cached token.
#[derive(Debug)]
pub(in crate::store::sqlite) struct ClearToken;

impl Apply for ClearToken {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, _now: i64) -> Result<()> {
        sqlx::query("DELETE FROM token_cache")
            .execute(&mut *c)
            .await?;
        Ok(())
    }
}

/// An event that belongs to no state change (a quota park).
#[derive(Debug)]
pub(in crate::store::sqlite) struct RecordEvent {
    pub batch: Option<String>,
    pub key: Option<String>,
    pub kind: EventKind,
    pub code: Option<i64>,
    pub detail: Option<String>,
}

impl Apply for RecordEvent {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        event(
            c,
            now,
            self.batch.as_deref(),
            self.key.as_deref(),
            self.kind,
            self.code,
            self.detail.as_deref(),
        )
        .await
    }
}

/// Starts a run record; answers its id.
#[derive(Debug)]
pub(in crate::store::sqlite) struct StartRun {
    pub command: String,
}

impl Apply for StartRun {
    type Output = i64;
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<i64> {
        Ok(
            sqlx::query_scalar("INSERT INTO runs (command, started_at) VALUES (?, ?) RETURNING id")
                .bind(&self.command)
                .bind(now)
                .fetch_one(&mut *c)
                .await?,
        )
    }
}

/// Closes a run record.
#[derive(Debug)]
pub(in crate::store::sqlite) struct EndRun {
    pub id: i64,
    pub exit_code: i32,
    pub summary: String,
}

impl Apply for EndRun {
    type Output = ();
    async fn apply(self, c: &mut SqliteConnection, now: i64) -> Result<()> {
        sqlx::query("UPDATE runs SET ended_at = ?2, exit_code = ?3, summary = ?4 WHERE id = ?1")
            .bind(self.id)
            .bind(now)
            .bind(self.exit_code)
            .bind(&self.summary)
            .execute(&mut *c)
            .await?;
        Ok(())
    }
}
