//! The store's queries for reports, exports, metrics and `status --json`: read-only, and
//! streamed where a batch can be large.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::rows::{image_state_of, json_map, verdict_of, version_of};
use super::{Result, SqliteStore};
use crate::api::{Size, rfc3339_ms};
use crate::store::views::{
    Cell, CellImage, Column, ExportRow, Failure, Group, Pivot, RunRecord, TimelineBin,
};
use crate::store::{EventKind, ImageState, Reports, StoreError};

/// Places every item of batch `?1` in the report's layout: its group (`grp_idx`: one per
/// template; plain prompts grouped by the set of columns they have), its row (`row_idx`: the
/// vars of a template, or the prompt) and its column (`col_idx`: size, version, image_num,
/// variant). A template named in the JSON object `?2` (template → var) is pivoted on that var:
/// its values become the columns and the other vars the rows. Groups, rows and columns are
/// numbered from 0 in file order (by their first item).
const PLACED: &str = "
WITH base AS (
    SELECT key, seq, template, prompt, vars,
        width || 'x' || height || ' ' || version || ' ' || image_num || ' ' || variant AS col,
        (SELECT value FROM json_each(?2) WHERE key = items.template) AS pivot
    FROM items WHERE batch = ?1
), pivoted AS (
    SELECT *,
        CASE WHEN pivot IS NULL THEN NULL
             ELSE (SELECT value FROM json_each(base.vars) WHERE key = base.pivot) END AS pivot_value,
        CASE WHEN pivot IS NULL THEN vars
             ELSE (SELECT json_group_object(key, value) FROM json_each(base.vars)
                   WHERE key != base.pivot) END AS row_vars
    FROM base
), grouped AS (
    SELECT *,
        CASE WHEN template IS NOT NULL THEN 't:' || template
             ELSE 'p:' || group_concat(col, '|') OVER (
                 PARTITION BY template IS NULL, prompt ORDER BY col
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        END AS grp,
        CASE WHEN template IS NOT NULL THEN row_vars ELSE prompt END AS row_key,
        CASE WHEN pivot IS NULL THEN col ELSE col || '|' || COALESCE(pivot_value, '') END AS cell_col
    FROM pivoted
), firsts AS (
    SELECT key, seq, grp, pivot_value,
        MIN(seq) OVER (PARTITION BY grp) AS grp_first,
        MIN(seq) OVER (PARTITION BY grp, row_key) AS row_first,
        MIN(seq) OVER (PARTITION BY grp, cell_col) AS col_first
    FROM grouped
), placed AS (
    SELECT key, seq, pivot_value,
        DENSE_RANK() OVER (ORDER BY grp_first) - 1 AS grp_idx,
        DENSE_RANK() OVER (PARTITION BY grp ORDER BY row_first) - 1 AS row_idx,
        DENSE_RANK() OVER (PARTITION BY grp ORDER BY col_first) - 1 AS col_idx,
        grp_first, row_first, col_first
    FROM firsts
)";

impl Reports for SqliteStore {
    fn report_templates<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT template, COUNT(DISTINCT width || 'x' || height || ' ' || version || ' ' || image_num
                     || ' ' || variant) FROM items
                 WHERE batch = ? AND template IS NOT NULL GROUP BY template ORDER BY MIN(seq)",
            )
            .bind(batch)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(|(t, n)| (t, n as u32)).collect())
        })
    }

    fn report_groups<'a>(
        &'a self,
        batch: &'a str,
        pivots: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Vec<Group>>> {
        Box::pin(async move {
            let sql = format!(
                "{PLACED}
                SELECT p.grp_idx, p.col_idx, p.pivot_value, i.template, i.width, i.height, i.version,
                    i.image_num, i.variant, COUNT(*) AS n, MAX(p.row_idx) AS max_row
                FROM placed p JOIN items i ON i.key = p.key
                GROUP BY p.grp_idx, p.col_idx ORDER BY p.grp_idx, p.col_idx"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(batch)
                .bind(pivot_json(pivots))
                .fetch_all(&self.pool)
                .await?;
            let mut groups: Vec<Group> = Vec::new();
            for r in rows {
                let idx = r.get::<i64, _>("grp_idx") as usize;
                if groups.len() <= idx {
                    let template: Option<String> = r.get("template");
                    groups.push(Group {
                        pivot: template
                            .as_ref()
                            .and_then(|t| pivots.get(t))
                            .map(|var| Pivot {
                                var: var.clone(),
                                values: Vec::new(),
                            }),
                        template,
                        columns: Vec::new(),
                        rows: 0,
                        items: 0,
                    });
                }
                let g = groups.get_mut(idx).ok_or_else(|| {
                    StoreError::Invalid(format!("report group {idx} out of order"))
                })?;
                let column = column_of(&r)?;
                match &mut g.pivot {
                    Some(p) => {
                        p.values.push(
                            r.get::<Option<String>, _>("pivot_value")
                                .unwrap_or_default(),
                        );
                        if !g.columns.contains(&column) {
                            g.columns.push(column);
                        }
                    }
                    None => g.columns.push(column),
                }
                g.rows = g.rows.max(r.get::<i64, _>("max_row") as u32 + 1);
                g.items += r.get::<i64, _>("n") as u32;
            }
            Ok(groups)
        })
    }

    fn report_cells<'a>(
        &'a self,
        batch: &'a str,
        pivots: &'a BTreeMap<String, String>,
    ) -> BoxStream<'a, Result<Cell>> {
        let sql = format!(
            "{PLACED}
            SELECT p.grp_idx, p.row_idx, p.col_idx, i.key, i.prompt, i.width, i.height, i.version,
                i.image_num, i.variant, i.tags, i.vars, i.state AS item_state, i.error_class,
                i.error_code, i.error_msg, m.idx, m.state AS image_state, m.verdict, m.path,
                m.sha256, m.error
            FROM placed p JOIN items i ON i.key = p.key
            LEFT JOIN images m ON m.item_key = p.key
            ORDER BY p.grp_first, p.row_first, p.col_first, p.seq, m.idx"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(batch.to_owned())
            .bind(pivot_json(pivots))
            .fetch(&self.pool)
            .map(|row| cell_of(&row?))
            .boxed()
    }

    fn report_timeline<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<Vec<TimelineBin>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT (at / 60000) * 60000 AS minute,
                     SUM(kind = ?2) AS submitted, SUM(kind = ?3) AS finished,
                     SUM(kind = ?4) AS failed
                 FROM events WHERE batch = ?1 AND kind IN (?2, ?3, ?4)
                 GROUP BY minute ORDER BY minute",
            )
            .bind(batch)
            .bind(EventKind::Submitted.as_str())
            .bind(EventKind::Finished.as_str())
            .bind(EventKind::Failed.as_str())
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| TimelineBin {
                    minute_ms: r.get("minute"),
                    submitted: r.get::<i64, _>("submitted") as u32,
                    finished: r.get::<i64, _>("finished") as u32,
                    failed: r.get::<i64, _>("failed") as u32,
                })
                .collect())
        })
    }

    fn runs_between<'a>(
        &'a self,
        from_ms: i64,
        to_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, command, started_at, ended_at, exit_code FROM runs
                 WHERE started_at <= ?2 AND COALESCE(ended_at, ?2) >= ?1 ORDER BY started_at, id",
            )
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(run_of).collect())
        })
    }

    fn last_run<'a>(&'a self) -> BoxFuture<'a, Result<Option<RunRecord>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, command, started_at, ended_at, exit_code FROM runs
                 ORDER BY started_at DESC, id DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.as_ref().map(run_of))
        })
    }

    fn images_submitted_since<'a>(&'a self, since_ms: i64) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT COALESCE(SUM(i.image_num), 0) FROM events e JOIN items i ON i.key = e.item_key
                 WHERE e.kind = ? AND e.at >= ?",
            )
            .bind(EventKind::Submitted.as_str())
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?)
        })
    }

    fn export_rows<'a>(&'a self, batch: Option<&'a str>) -> BoxStream<'a, Result<ExportRow>> {
        sqlx::query(
            "SELECT i.batch, m.item_key, m.idx, i.prompt, i.width, i.height, i.version,
                 i.image_num, i.variant, m.verdict, m.state, m.path, m.sha256, m.bytes, i.task_id,
                 i.tags, i.vars, i.template, m.error, i.submitted_at, i.finished_at, m.archived_at,
                 m.url_expires_at
             FROM images m JOIN items i ON i.key = m.item_key
             WHERE m.state != ?2 AND (?1 IS NULL OR i.batch = ?1)
             ORDER BY i.batch, i.seq, m.idx",
        )
        .bind(batch.map(str::to_owned))
        .bind(ImageState::Listed.as_str())
        .fetch(&self.pool)
        .map(|row| export_row_of(&row?))
        .boxed()
    }
}

fn pivot_json(pivots: &BTreeMap<String, String>) -> String {
    serde_json::to_string(pivots).unwrap_or_else(|_| "{}".into())
}

fn column_of(r: &SqliteRow) -> Result<Column> {
    Ok(Column {
        size: Size::new(
            r.get::<i64, _>("width") as u32,
            r.get::<i64, _>("height") as u32,
        ),
        version: version_of(r)?,
        image_num: r.get::<i64, _>("image_num") as u8,
        variant: r.get::<i64, _>("variant") as u32,
    })
}

fn cell_of(r: &SqliteRow) -> Result<Cell> {
    let column = column_of(r)?;
    let failure = r
        .get::<Option<String>, _>("error_msg")
        .map(|message| Failure {
            class: r
                .get::<Option<String>, _>("error_class")
                .unwrap_or_default(),
            code: r.get("error_code"),
            message,
        });
    let image = match r.get::<Option<i64>, _>("idx") {
        None => None,
        Some(idx) => Some(CellImage {
            index: idx as u32,
            state: image_state_of(&r.get::<String, _>("image_state"))?,
            verdict: verdict_of(r)?,
            path: r.get("path"),
            sha256: r.get("sha256"),
            error: r.get("error"),
        }),
    };
    Ok(Cell {
        group: r.get::<i64, _>("grp_idx") as u32,
        row: r.get::<i64, _>("row_idx") as u32,
        column: r.get::<i64, _>("col_idx") as u32,
        key: r.get("key"),
        prompt: r.get("prompt"),
        size: column.size,
        version: column.version,
        image_num: column.image_num,
        variant: column.variant,
        tags: json_map(r, "tags")?,
        vars: json_map(r, "vars")?,
        state: r.get::<String, _>("item_state").parse()?,
        failure,
        image,
    })
}

fn run_of(r: &SqliteRow) -> RunRecord {
    RunRecord {
        id: r.get("id"),
        command: r.get("command"),
        started_at: r.get("started_at"),
        ended_at: r.get("ended_at"),
        exit_code: r.get("exit_code"),
    }
}

fn export_row_of(r: &SqliteRow) -> Result<ExportRow> {
    let batch: String = r.get("batch");
    let time = |col: &str| r.get::<Option<i64>, _>(col).map(rfc3339_ms);
    let state = image_state_of(&r.get::<String, _>("state"))?;
    Ok(ExportRow {
        path: r
            .get::<Option<String>, _>("path")
            .map(|p| format!("{batch}/{p}")),
        item_key: r.get("item_key"),
        index: r.get::<i64, _>("idx") as u32,
        prompt: r.get("prompt"),
        width: r.get::<i64, _>("width") as u32,
        height: r.get::<i64, _>("height") as u32,
        version: version_of(r)?,
        image_num: r.get::<i64, _>("image_num") as u8,
        variant: r.get::<i64, _>("variant") as u32,
        verdict: verdict_of(r)?,
        state,
        sha256: r.get("sha256"),
        bytes: r.get("bytes"),
        task_id: r.get::<Option<String>, _>("task_id").unwrap_or_default(),
        tags: json_map(r, "tags")?,
        vars: json_map(r, "vars")?,
        template: r.get("template"),
        error: if state == ImageState::Lost {
            r.get("error")
        } else {
            None
        },
        submitted_at: time("submitted_at"),
        finished_at: time("finished_at"),
        archived_at: time("archived_at"),
        url_expires_at: time("url_expires_at"),
        batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Verdict, Version};
    use crate::jobfile::{ArchivePolicy, Item, Origin};
    use crate::store::{ListedImage, Store as _};
    use futures::TryStreamExt;

    fn item(
        n: u32,
        prompt: &str,
        size: (u32, u32),
        template: Option<(&str, &[(&str, &str)])>,
    ) -> Item {
        Item {
            key: format!("{:032x}", u128::from(n) + 0xfeed_0000),
            batch: "b".into(),
            prompt: prompt.into(),
            size: Size::new(size.0, size.1),
            version: Version::V2,
            image_num: if n >= 10 { 2 } else { 1 },
            variant: 0,
            tags: BTreeMap::from([("n".to_string(), n.to_string())]),
            vars: template
                .map(|(_, vars)| {
                    vars.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            template: template.map(|(t, _)| t.to_string()),
            line: n,
            origin: Origin::JobFile,
        }
    }

    /// Items in file order: a template of one size with two vars (pivoted), a template of two
    /// sizes, two plain prompts of one size, two plain prompts of two sizes each.
    fn job() -> Vec<Item> {
        let t1 = "{a}在{b}";
        let t2 = "{c}画";
        vec![
            item(0, "x在p", (512, 512), Some((t1, &[("a", "x"), ("b", "p")]))),
            item(1, "x在q", (512, 512), Some((t1, &[("a", "x"), ("b", "q")]))),
            item(2, "y在p", (512, 512), Some((t1, &[("a", "y"), ("b", "p")]))),
            item(3, "y在q", (512, 512), Some((t1, &[("a", "y"), ("b", "q")]))),
            item(4, "m画", (512, 512), Some((t2, &[("c", "m")]))),
            item(5, "m画", (1024, 1024), Some((t2, &[("c", "m")]))),
            item(6, "n画", (512, 512), Some((t2, &[("c", "n")]))),
            item(7, "n画", (1024, 1024), Some((t2, &[("c", "n")]))),
            item(8, "一", (512, 512), None),
            item(9, "二", (512, 512), None),
            item(10, "三", (512, 512), None),
            item(11, "三", (1024, 1024), None),
            // The other size first: the same set of columns, so the same group.
            item(12, "四", (1024, 1024), None),
            item(13, "四", (512, 512), None),
        ]
    }

    async fn store_with_job() -> (tempfile::TempDir, SqliteStore, Vec<Item>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        let items = job();
        store
            .load_items("b", ArchivePolicy::default(), "f", &items)
            .await
            .unwrap();
        (dir, store, items)
    }

    fn pivots() -> BTreeMap<String, String> {
        BTreeMap::from([("{a}在{b}".to_string(), "b".to_string())])
    }

    #[tokio::test]
    async fn items_are_grouped_by_template_and_by_the_columns_of_plain_prompts() {
        let (_dir, store, _) = store_with_job().await;
        let templates = store.report_templates("b").await.unwrap();
        assert_eq!(
            templates,
            vec![("{a}在{b}".to_string(), 1), ("{c}画".to_string(), 2)]
        );
        let groups = store.report_groups("b", &pivots()).await.unwrap();
        assert_eq!(groups.len(), 4, "{groups:#?}");
        let sizes = |g: &Group| {
            g.columns
                .iter()
                .map(|c| c.size.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(groups[0].template.as_deref(), Some("{a}在{b}"));
        assert_eq!(
            groups[0].pivot,
            Some(Pivot {
                var: "b".into(),
                values: vec!["p".into(), "q".into()]
            })
        );
        assert_eq!((groups[0].rows, groups[0].items), (2, 4));
        assert_eq!(sizes(&groups[0]), vec!["512x512"]);
        assert_eq!(groups[1].template.as_deref(), Some("{c}画"));
        assert_eq!(groups[1].pivot, None);
        assert_eq!(sizes(&groups[1]), vec!["512x512", "1024x1024"]);
        assert_eq!((groups[1].rows, groups[1].items), (2, 4));
        assert_eq!(groups[2].template, None);
        assert_eq!(sizes(&groups[2]), vec!["512x512"]);
        assert_eq!((groups[2].rows, groups[2].items), (2, 2));
        assert_eq!(sizes(&groups[3]), vec!["512x512", "1024x1024"]);
        assert_eq!((groups[3].rows, groups[3].items), (2, 4));
        assert!(
            store
                .report_groups("nope", &pivots())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn cells_come_in_group_row_column_order_with_their_images() {
        let (_dir, store, items) = store_with_job().await;
        // Item 13 (四 512x512, two images) succeeds; item 9 (二) fails.
        let done = &items[13];
        store.mark_submitting(&done.key).await.unwrap();
        store.mark_running(&done.key, "77").await.unwrap();
        let listed = |idx, verdict| ListedImage {
            idx,
            url: format!("http://h/{idx}.png"),
            url_expires_at: crate::api::now_ms() + 60_000,
            width: 512,
            height: 512,
            verdict,
            keep: ArchivePolicy::default().keeps(verdict),
        };
        store
            .mark_succeeded(
                &done.key,
                &[listed(0, Verdict::Pass), listed(1, Verdict::Block)],
            )
            .await
            .unwrap();
        store.mark_submitting(&items[9].key).await.unwrap();
        store
            .mark_failed(
                &items[9].key,
                crate::api::ErrorClass::Permanent,
                Some(501),
                "censored",
            )
            .await
            .unwrap();

        let cells: Vec<Cell> = store
            .report_cells("b", &pivots())
            .try_collect()
            .await
            .unwrap();
        let places: Vec<(u32, u32, u32, &str, Option<u32>)> = cells
            .iter()
            .map(|c| {
                (
                    c.group,
                    c.row,
                    c.column,
                    c.prompt.as_str(),
                    c.image.as_ref().map(|i| i.index),
                )
            })
            .collect();
        assert_eq!(
            places,
            vec![
                (0, 0, 0, "x在p", None),
                (0, 0, 1, "x在q", None),
                (0, 1, 0, "y在p", None),
                (0, 1, 1, "y在q", None),
                (1, 0, 0, "m画", None),
                (1, 0, 1, "m画", None),
                (1, 1, 0, "n画", None),
                (1, 1, 1, "n画", None),
                (2, 0, 0, "一", None),
                (2, 1, 0, "二", None),
                (3, 0, 0, "三", None),
                (3, 0, 1, "三", None),
                // 四 wrote 1024x1024 first, but the group's columns are in file order.
                (3, 1, 0, "四", Some(0)),
                (3, 1, 0, "四", Some(1)),
                (3, 1, 1, "四", None),
            ]
        );
        let failed = &cells[9];
        assert_eq!(failed.state, crate::store::ItemState::Failed);
        let f = failed.failure.as_ref().unwrap();
        assert_eq!(
            (f.class.as_str(), f.code, f.message.as_str()),
            ("permanent", Some(501), "censored")
        );
        let blocked = cells[13].image.as_ref().unwrap();
        assert_eq!(
            (blocked.state, blocked.verdict),
            (ImageState::Skipped, Verdict::Block)
        );
        assert_eq!(cells[12].image.as_ref().unwrap().state, ImageState::Listed);
        assert_eq!(cells[0].vars["a"], "x");
        assert_eq!(cells[0].tags["n"], "0");
        // Without the pivot the first template has one column and four rows.
        let plain: Vec<Cell> = store
            .report_cells("b", &BTreeMap::new())
            .try_collect()
            .await
            .unwrap();
        let first: Vec<(u32, u32)> = plain.iter().take(4).map(|c| (c.row, c.column)).collect();
        assert_eq!(first, vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    }

    #[tokio::test]
    async fn timeline_quota_runs_and_exports() {
        let (_dir, store, items) = store_with_job().await;
        let before = crate::api::now_ms();
        let run = store.start_run("submit").await.unwrap();
        for it in &items[..3] {
            store.mark_submitting(&it.key).await.unwrap();
            store.mark_running(&it.key, "1").await.unwrap();
        }
        store
            .mark_succeeded(
                &items[0].key,
                &[ListedImage {
                    idx: 0,
                    url: "http://h/0.png".into(),
                    url_expires_at: crate::api::now_ms() + 60_000,
                    width: 512,
                    height: 512,
                    verdict: Verdict::Review,
                    keep: true,
                }],
            )
            .await
            .unwrap();
        store
            .mark_archived(&items[0].key, 0, "images/00/k-0.png", "ab", 9)
            .await
            .unwrap();
        store.end_run(run, 0, "{}").await.unwrap();

        let bins = store.report_timeline("b").await.unwrap();
        assert_eq!(bins.iter().map(|b| b.submitted).sum::<u32>(), 3);

        assert_eq!(bins.iter().map(|b| b.finished).sum::<u32>(), 1);
        assert!(bins.iter().all(|b| b.minute_ms % 60_000 == 0));
        assert_eq!(store.images_submitted_since(before).await.unwrap(), 3);
        store.mark_submitting(&items[10].key).await.unwrap();
        store.mark_running(&items[10].key, "2").await.unwrap();
        // Item 10 makes two images.
        assert_eq!(store.images_submitted_since(before).await.unwrap(), 5);
        assert_eq!(
            store
                .images_submitted_since(crate::api::now_ms() + 1)
                .await
                .unwrap(),
            0
        );
        let last = store.last_run().await.unwrap().unwrap();
        assert_eq!((last.id, last.exit_code), (run, Some(0)));
        assert_eq!(
            store
                .runs_between(before, crate::api::now_ms())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .runs_between(0, before - 1000)
                .await
                .unwrap()
                .is_empty()
        );

        let rows: Vec<ExportRow> = store.export_rows(Some("b")).try_collect().await.unwrap();
        assert_eq!(rows.len(), 1, "listed images are not exported");
        let r = &rows[0];
        assert_eq!(r.path.as_deref(), Some("b/images/00/k-0.png"));
        assert_eq!(
            (r.verdict, r.state, r.bytes),
            (Verdict::Review, ImageState::Archived, Some(9))
        );
        assert_eq!(r.vars["a"], "x");
        assert_eq!(r.template.as_deref(), Some("{a}在{b}"));
        assert!(r.archived_at.as_deref().unwrap().ends_with('Z'));
        let all: Vec<ExportRow> = store.export_rows(None).try_collect().await.unwrap();
        assert_eq!(all, rows);
        let none: Vec<ExportRow> = store
            .export_rows(Some("other"))
            .try_collect()
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
