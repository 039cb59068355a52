//! The store's queries for reports, exports, metrics and `status --json`: read-only, and
//! streamed where a batch can be large.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{ImageState, Result, Store, StoreError, verdict_of, version_of};
use crate::api::Size;
use crate::report::{
    Cell, CellImage, Column, ExportRow, Failure, Group, Pivot, RunRecord, TimelineBin, rfc3339_ms,
};

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

impl Store {
    /// The templates of a batch with how many distinct (size, version, image_num, variant)
    /// columns each has, in file order: what the report decides its pivots from.
    pub async fn report_templates(&self, batch: &str) -> Result<Vec<(String, u32)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT template, COUNT(DISTINCT width || 'x' || height || ' ' || version || ' ' || image_num
                 || ' ' || variant) FROM items
             WHERE batch = ? AND template IS NOT NULL GROUP BY template ORDER BY MIN(seq)",
        )
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(t, n)| (t, n as u32)).collect())
    }

    /// The groups of a batch's report, in file order, each with its columns; a template named in
    /// `pivots` (template → var) is pivoted on that var. Empty when the batch has no items.
    pub async fn report_groups(
        &self,
        batch: &str,
        pivots: &BTreeMap<String, String>,
    ) -> Result<Vec<Group>> {
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
            let g = groups
                .get_mut(idx)
                .ok_or_else(|| StoreError::Invalid(format!("report group {idx} out of order")))?;
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
    }

    /// Every item of a batch with its images (one [`Cell`] per image; one per item that has no
    /// images yet or failed), in report order: group, row, column, image index. Streamed, so a
    /// large batch is never held in memory.
    pub fn report_cells(
        &self,
        batch: &str,
        pivots: &BTreeMap<String, String>,
    ) -> BoxStream<'_, Result<Cell>> {
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

    /// Submits, finishes and failures of a batch per minute, from its event history, oldest
    /// first; minutes without any are left out.
    pub async fn report_timeline(&self, batch: &str) -> Result<Vec<TimelineBin>> {
        let rows = sqlx::query(
            "SELECT (at / 60000) * 60000 AS minute,
                 SUM(kind = 'submitted') AS submitted, SUM(kind = 'finished') AS finished,
                 SUM(kind = 'failed') AS failed
             FROM events WHERE batch = ? AND kind IN ('submitted', 'finished', 'failed')
             GROUP BY minute ORDER BY minute",
        )
        .bind(batch)
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
    }

    /// Runs that overlap the time span `[from_ms, to_ms]` (a run still going, or whose process
    /// died, counts as open-ended), oldest first.
    pub async fn runs_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(
            "SELECT id, command, started_at, ended_at, exit_code FROM runs
             WHERE started_at <= ?2 AND COALESCE(ended_at, ?2) >= ?1 ORDER BY started_at, id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_of).collect())
    }

    /// The latest run record, if any.
    pub async fn last_run(&self) -> Result<Option<RunRecord>> {
        let row = sqlx::query(
            "SELECT id, command, started_at, ended_at, exit_code FROM runs
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(run_of))
    }

    /// Images submitted since `since_ms` (the sum of `image_num` over answered submits), what
    /// the API's daily quota counts. Submits that got no answer are not counted: the API may
    /// have counted them too.
    pub async fn images_submitted_since(&self, since_ms: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(i.image_num), 0) FROM events e JOIN items i ON i.key = e.item_key
             WHERE e.kind = 'submitted' AND e.at >= ?",
        )
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Archived, skipped and lost images of one batch (or of every batch) with their items'
    /// metadata, by batch and file order. Streamed.
    pub fn export_rows(&self, batch: Option<&str>) -> BoxStream<'_, Result<ExportRow>> {
        sqlx::query(
            "SELECT i.batch, m.item_key, m.idx, i.prompt, i.width, i.height, i.version,
                 i.image_num, i.variant, m.verdict, m.state, m.path, m.sha256, m.bytes, i.task_id,
                 i.tags, i.vars, i.template, m.error, i.submitted_at, i.finished_at, m.archived_at,
                 m.url_expires_at
             FROM images m JOIN items i ON i.key = m.item_key
             WHERE m.state != 'listed' AND (?1 IS NULL OR i.batch = ?1)
             ORDER BY i.batch, i.seq, m.idx",
        )
        .bind(batch.map(str::to_owned))
        .fetch(&self.pool)
        .map(|row| export_row_of(&row?))
        .boxed()
    }
}

fn pivot_json(pivots: &BTreeMap<String, String>) -> String {
    serde_json::to_string(pivots).unwrap_or_else(|_| "{}".into())
}

fn json_map(r: &SqliteRow, col: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(&r.get::<String, _>(col))
        .map_err(|e| StoreError::Invalid(format!("{col}: {e}")))
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
            state: r.get::<String, _>("image_state").parse()?,
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
    let state: ImageState = r.get::<String, _>("state").parse()?;
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
