//! The SQLite store's queries of the work: what is pending, running and left to download, and
//! where each batch stands.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::{AssertSqlSafe, Row};

use super::rows::{
    FETCH_SELECT, RECORD_SELECT, batch_filter, fetch_image_of, pending_of, record_of,
};
use super::{Result, SqliteStore};
use crate::api::Verdict;
use crate::jobfile::{ArchivePolicy, Keep};
use crate::store::views::FailedItem;
use crate::store::{
    BatchStatus, FetchImage, ImageRecord, ImageState, ItemState, PendingItem, Queries, RunningTask,
    StoreError,
};

impl Queries for SqliteStore {
    fn batch_policies<'a>(&'a self) -> BoxFuture<'a, Result<HashMap<String, ArchivePolicy>>> {
        Box::pin(async move {
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
        })
    }

    fn batches<'a>(&'a self) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT name FROM batches ORDER BY created_at, name")
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
    }

    fn pending_items<'a>(
        &'a self,
        batches: &'a [String],
        after: Option<(&'a str, i64)>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<PendingItem>>> {
        Box::pin(async move {
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
        })
    }

    fn pending_item<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PendingItem>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT key, batch, seq, prompt, width, height, version, image_num, attempts, retry_at
                 FROM items WHERE key = ? AND state = ?",
            )
            .bind(key)
            .bind(ItemState::Pending.as_str())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(pending_of).transpose()
        })
    }

    fn item_attempts<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT attempts FROM items WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?
                    .unwrap_or(0),
            )
        })
    }

    fn count_items<'a>(
        &'a self,
        batches: &'a [String],
        state: ItemState,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM items WHERE state = ?1
                 AND (?2 = '[]' OR batch IN (SELECT value FROM json_each(?2)))",
            )
            .bind(state.as_str())
            .bind(batch_filter(batches))
            .fetch_one(&self.pool)
            .await?)
        })
    }

    fn running_tasks<'a>(
        &'a self,
        batches: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<RunningTask>>> {
        Box::pin(async move {
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
        })
    }

    fn images_to_fetch<'a>(
        &'a self,
        batches: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<FetchImage>>> {
        Box::pin(async move {
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
        })
    }

    fn image_records_stream<'a>(&'a self, batch: &'a str) -> BoxStream<'a, Result<ImageRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "{RECORD_SELECT} WHERE i.batch = ? AND m.state != ? ORDER BY i.seq, m.idx"
        )))
        .bind(batch)
        .bind(ImageState::Listed.as_str())
        .fetch(&self.pool)
        .map(|row| row.map_err(StoreError::from).and_then(|r| record_of(&r)))
        .boxed()
    }

    fn status<'a>(&'a self) -> BoxFuture<'a, Result<Vec<BatchStatus>>> {
        Box::pin(async move {
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
        })
    }

    fn failures<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<FailedItem>>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, Option<i64>, String)> = sqlx::query_as(
                "SELECT key, prompt, COALESCE(error_class, ''), error_code, COALESCE(error_msg, '')
                 FROM items WHERE batch = ? AND state = ? ORDER BY seq",
            )
            .bind(batch)
            .bind(ItemState::Failed.as_str())
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(key, prompt, class, code, message)| FailedItem {
                    key,
                    prompt,
                    class,
                    code,
                    message,
                })
                .collect())
        })
    }

    fn errors_by_code<'a>(&'a self) -> BoxFuture<'a, Result<BTreeMap<i64, i64>>> {
        Box::pin(async move {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT code, COUNT(*) FROM events WHERE code IS NOT NULL GROUP BY code ORDER BY code",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().collect())
        })
    }
}
