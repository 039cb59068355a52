//! `runner export`: one row per image (archived, skipped, lost) with its metadata and path, as
//! JSON lines or CSV (RFC 4180), streamed from the store.

use std::fmt::Write as _;
use std::io::{self, Write};

use futures::StreamExt;

use super::{ExportRow, ReportError};
use crate::store::Store;

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line, RFC 4180 quoting and CRLF line ends.
    Csv,
}

/// The CSV columns, in order (the JSON objects have the same keys in the same order).
pub const CSV_COLUMNS: [&str; 23] = [
    "batch",
    "item_key",
    "index",
    "prompt",
    "width",
    "height",
    "version",
    "image_num",
    "variant",
    "verdict",
    "state",
    "path",
    "sha256",
    "bytes",
    "task_id",
    "tags",
    "vars",
    "template",
    "error",
    "submitted_at",
    "finished_at",
    "archived_at",
    "url_expires_at",
];

/// Appends one CSV field: quoted (with quotes doubled) when it holds a comma, a quote, a line
/// break, or leading or trailing spaces; as is otherwise.
pub fn csv_field(out: &mut String, field: &str) {
    let needs_quotes = field.contains([',', '"', '\r', '\n'])
        || field.starts_with([' ', '\t'])
        || field.ends_with([' ', '\t']);
    if needs_quotes {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The header line of the CSV.
pub fn csv_header() -> String {
    let mut out = String::new();
    for (i, c) in CSV_COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, c);
    }
    out.push_str("\r\n");
    out
}

/// One row as a CSV line; missing values are empty fields, tags and vars are JSON objects.
pub fn csv_line(row: &ExportRow) -> String {
    let json = |m| serde_json::to_string(m).unwrap_or_default();
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let fields: [String; 23] = [
        row.batch.clone(),
        row.item_key.clone(),
        row.index.to_string(),
        row.prompt.clone(),
        row.width.to_string(),
        row.height.to_string(),
        row.version.as_str().into(),
        row.image_num.to_string(),
        row.variant.to_string(),
        row.verdict.as_str().into(),
        row.state.as_str().into(),
        opt(&row.path),
        opt(&row.sha256),
        row.bytes.map(|b| b.to_string()).unwrap_or_default(),
        row.task_id.clone(),
        json(&row.tags),
        json(&row.vars),
        opt(&row.template),
        opt(&row.error),
        opt(&row.submitted_at),
        opt(&row.finished_at),
        opt(&row.archived_at),
        opt(&row.url_expires_at),
    ];
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, f);
    }
    out.push_str("\r\n");
    out
}

/// One row as a JSON line.
pub fn json_line(row: &ExportRow) -> String {
    let mut s = serde_json::to_string(row).unwrap_or_default();
    let _ = writeln!(s);
    s
}

/// Streams the rows of `batch` (or of every batch) to `out`; returns how many were written.
/// `bom` starts a CSV with a UTF-8 byte-order mark (for spreadsheets that otherwise guess a
/// legacy encoding for the Chinese text).
pub async fn write(
    store: &dyn Store,
    batch: Option<&str>,
    format: Format,
    bom: bool,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        if bom {
            out.write_all("\u{feff}".as_bytes())?;
        }
        out.write_all(csv_header().as_bytes())?;
    }
    let mut rows = store.export_rows(batch);
    let mut n = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(ReportError::from)?;
        let line = match format {
            Format::Jsonl => json_line(&row),
            Format::Csv => csv_line(&row),
        };
        out.write_all(line.as_bytes())?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Writing the output failed.
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

impl ExportError {
    /// Whether the reader went away (`runner export | head`): not an error worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ExportError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::{Verdict, Version};
    use crate::store::ImageState;

    /// A minimal RFC 4180 reader: fields, quoted fields with doubled quotes, CRLF records.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                (false, c) => field.push(c),
            }
        }
        assert!(field.is_empty() && record.is_empty(), "unterminated record");
        records
    }

    fn row() -> ExportRow {
        ExportRow {
            batch: "b".into(),
            item_key: "0123456789abcdef0123456789abcdef".into(),
            index: 1,
            prompt: "猫说：\"你好\", 然后\n走了".into(),
            width: 512,
            height: 512,
            version: Version::V2,
            image_num: 2,
            variant: 0,
            verdict: Verdict::Review,
            state: ImageState::Archived,
            path: Some("b/images/01/0123456789abcdef0123456789abcdef-1.png".into()),
            sha256: Some("ab".repeat(32)),
            bytes: Some(1234),
            task_id: "1659384536691865192".into(),
            tags: BTreeMap::from([("sku".into(), "A,1".into())]),
            vars: BTreeMap::new(),
            template: None,
            error: None,
            submitted_at: Some("2026-11-21T08:00:00.000Z".into()),
            finished_at: None,
            archived_at: None,
            url_expires_at: None,
        }
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let q = |s: &str| {
            let mut out = String::new();
            csv_field(&mut out, s);
            out
        };
        assert_eq!(q("plain"), "plain");
        assert_eq!(q("一只猫"), "一只猫");
        assert_eq!(q(""), "");
        assert_eq!(q("a,b"), "\"a,b\"");
        assert_eq!(q("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(q("two\nlines"), "\"two\nlines\"");
        assert_eq!(q("cr\r"), "\"cr\r\"");
        assert_eq!(q(" padded"), "\" padded\"");
    }

    #[test]
    fn a_row_round_trips_through_an_rfc4180_reader() {
        let r = row();
        let text = format!("{}{}", csv_header(), csv_line(&r));
        let records = parse_csv(&text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], CSV_COLUMNS.map(String::from).to_vec());
        let get = |name: &str| {
            let i = CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
            records[1][i].clone()
        };
        assert_eq!(get("prompt"), r.prompt);
        assert_eq!(get("tags"), "{\"sku\":\"A,1\"}");
        assert_eq!(get("vars"), "{}");
        assert_eq!(get("verdict"), "review");
        assert_eq!(get("bytes"), "1234");
        assert_eq!(get("finished_at"), "");
        assert_eq!(get("task_id"), "1659384536691865192");
    }

    #[test]
    fn json_lines_have_the_csv_columns_in_order() {
        let line = json_line(&row());
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), CSV_COLUMNS.len());
        let at: Vec<usize> = CSV_COLUMNS
            .iter()
            .map(|c| {
                line.find(&format!("\"{c}\":"))
                    .unwrap_or_else(|| panic!("no {c}"))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "keys out of order: {line}"
        );
        assert_eq!(v["tags"]["sku"], "A,1");
        assert!(v["finished_at"].is_null());
        assert_eq!(v["task_id"], "1659384536691865192");
    }
}
