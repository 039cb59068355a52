//! Prometheus text-format (0.0.4) metrics of the whole store, written at the end of each run
//! (`--metrics FILE`) for node_exporter's textfile collector.
//!
//! The file is written beside its destination and renamed over it, so the collector never reads
//! half of it; it is readable by everyone (the collector usually runs as another user).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::ReportError;
use crate::api::Verdict;
use crate::api::now_ms;
use crate::store::{BatchStatus, ImageState, ItemState, Store, StoreError};

/// How the run that writes the metrics ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastRun {
    /// Its exit code.
    pub exit_code: i32,
    /// When it ended, Unix ms.
    pub ended_at_ms: i64,
    /// How long it took, seconds.
    pub duration_secs: f64,
}

/// Everything the metrics say, read from the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per batch.
    pub batches: Vec<BatchStatus>,
    /// Error answers by API code over the store's history.
    pub errors_by_code: BTreeMap<i64, i64>,
    /// Images submitted in the current quota day.
    pub quota_used_images: i64,
    /// Start of the current quota day, Unix ms.
    pub quota_day_start_ms: i64,
    /// The run that wrote the metrics.
    pub last_run: Option<LastRun>,
}

/// Reads the snapshot from the store at `now`.
pub async fn snapshot(
    store: &dyn Store,
    last_run: Option<LastRun>,
    now: i64,
) -> Result<Snapshot, StoreError> {
    let day = crate::api::quota_day_start(now);
    Ok(Snapshot {
        batches: store.status().await?,
        errors_by_code: store.errors_by_code().await?,
        quota_used_images: store.images_submitted_since(day).await?,
        quota_day_start_ms: day,
        last_run,
    })
}

/// A metric family being written: HELP and TYPE first, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, `NaN`, `+Inf`, `-Inf` as the format spells them.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The metrics as Prometheus text format 0.0.4.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let count = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0) as f64;
    {
        let mut f = Family::new(
            &mut out,
            "runner_items",
            "gauge",
            "Items (one submit each) by state.",
        );
        for b in &s.batches {
            for st in ItemState::ALL {
                f.sample(
                    &[("batch", &b.batch), ("state", st.as_str())],
                    count(&b.items, st.as_str()),
                );
            }
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_images",
            "gauge",
            "Images the API returned, by moderation verdict.",
        );
        for b in &s.batches {
            for v in [Verdict::Pass, Verdict::Review, Verdict::Block] {
                f.sample(
                    &[("batch", &b.batch), ("verdict", v.as_str())],
                    count(&b.verdicts, v.as_str()),
                );
            }
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_image_outcomes",
            "gauge",
            "Images by outcome: listed (not yet on disk), archived, skipped (by policy), lost.",
        );
        for b in &s.batches {
            for st in ImageState::ALL {
                f.sample(
                    &[("batch", &b.batch), ("state", st.as_str())],
                    count(&b.images, st.as_str()),
                );
            }
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_images_requested",
            "gauge",
            "Images the batch asks for (sum of image_num over its items).",
        );
        for b in &s.batches {
            f.sample(&[("batch", &b.batch)], b.images_requested as f64);
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_failed_items",
            "gauge",
            "Failed items by error class.",
        );
        for b in &s.batches {
            for (class, n) in &b.failed_by_class {
                f.sample(&[("batch", &b.batch), ("class", class)], *n as f64);
            }
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_ambiguous_items",
            "gauge",
            "Items whose submit was ambiguous at least once (resubmitted: at-least-once).",
        );
        for b in &s.batches {
            f.sample(&[("batch", &b.batch)], b.ambiguous_items as f64);
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_api_errors_total",
            "counter",
            "API error answers seen, by error code, over the store's history.",
        );
        for (code, n) in &s.errors_by_code {
            f.sample(&[("code", &code.to_string())], *n as f64);
        }
    }
    {
        let mut f = Family::new(
            &mut out,
            "runner_url_slack_min_seconds",
            "gauge",
            "Smallest time left on an image URL when the image was archived (batches with archived images).",
        );
        for b in &s.batches {
            if let Some(ms) = b.min_slack_ms {
                f.sample(&[("batch", &b.batch)], ms as f64 / 1000.0);
            }
        }
    }
    Family::new(
        &mut out,
        "runner_quota_used_images",
        "gauge",
        "Images submitted in the current quota day (calendar day in Asia/Shanghai).",
    )
    .sample(&[], s.quota_used_images as f64);
    Family::new(
        &mut out,
        "runner_quota_day_start_timestamp_seconds",
        "gauge",
        "Start of the current quota day (midnight Asia/Shanghai), Unix seconds.",
    )
    .sample(&[], (s.quota_day_start_ms / 1000) as f64);
    if let Some(r) = s.last_run {
        Family::new(
            &mut out,
            "runner_last_run_timestamp_seconds",
            "gauge",
            "When the last run ended, Unix seconds.",
        )
        .sample(&[], r.ended_at_ms as f64 / 1000.0);
        Family::new(
            &mut out,
            "runner_last_run_exit_code",
            "gauge",
            "Exit code of the last run (0 done, 1 error, 2 invalid input, 3 some failed, 4 work remaining).",
        )
        .sample(&[], f64::from(r.exit_code));
        Family::new(
            &mut out,
            "runner_last_run_duration_seconds",
            "gauge",
            "Wall time of the last run, seconds.",
        )
        .sample(&[], (r.duration_secs * 1000.0).round() / 1000.0);
    }
    out
}

/// Reads the store and writes the metrics file atomically.
pub async fn write(
    store: &dyn Store,
    path: &Path,
    last_run: Option<LastRun>,
) -> Result<(), ReportError> {
    let snap = snapshot(store, last_run, now_ms()).await?;
    super::write_public(path, render(&snap).as_bytes())
}

/// The end of a run: writes `path` (when given) for a run that ended with `exit_code` after
/// `duration_secs` (`None`: from the store's latest run record). A failure is reported on
/// stderr and does not change the run's exit code: the run itself is done, and the file's stale
/// `runner_last_run_timestamp_seconds` shows it.
pub async fn write_after_run(
    store: &dyn Store,
    path: Option<&Path>,
    exit_code: i32,
    duration_secs: Option<f64>,
) {
    let Some(path) = path else {
        return;
    };
    let ended_at_ms = now_ms();
    let duration_secs = match duration_secs {
        Some(d) => d,
        None => store
            .last_run()
            .await
            .ok()
            .flatten()
            .map_or(0.0, |r| (ended_at_ms - r.started_at).max(0) as f64 / 1000.0),
    };
    let last = LastRun {
        exit_code,
        ended_at_ms,
        duration_secs,
    };
    if let Err(e) = write(store, path, Some(last)).await {
        eprintln!(
            "error: cannot write the metrics file {}: {e}",
            path.display()
        );
    }
}

/// Checks `text` against the grammar of the text format 0.0.4 and returns the number of
/// samples: HELP and TYPE at most once per family and before its samples, names and labels
/// well formed, values numbers, no series twice, a final line feed. (What `promtool check
/// metrics` checks of the syntax, for machines without promtool.)
pub fn check_format(text: &str) -> Result<usize, String> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut series = std::collections::BTreeSet::new();
    let mut samples = 0;
    if !text.ends_with('\n') {
        return Err("no final line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| err("HELP without text"))?;
            if !is_name(name, true) || !helped.insert(name.to_string()) {
                return Err(err("bad or repeated HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without kind"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err("unknown type"));
            }
            if typed.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(err("repeated TYPE"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line"));
        }
        let (series_part, value) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim_start()),
            None => line.split_once(' ').ok_or_else(|| err("no value"))?,
        };
        let (name, labels) = match series_part.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or_else(|| err("unclosed labels"))?,
            ),
            None => (series_part, ""),
        };
        if !is_name(name, true) {
            return Err(err("bad metric name"));
        }
        if !typed.contains_key(name) {
            return Err(err("sample before its TYPE"));
        }
        // Labels: name="value" pairs, values with \\, \" and \n escapes only.
        let mut rest = labels;
        let mut names = Vec::new();
        while !rest.is_empty() {
            let (lname, after) = rest.split_once("=\"").ok_or_else(|| err("bad label"))?;
            if !is_name(lname, false) || names.contains(&lname) {
                return Err(err("bad or repeated label name"));
            }
            names.push(lname);
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return Err(err("bad escape in label value")),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\n' => return Err(err("raw line feed in label value")),
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| err("unclosed label value"))?;
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        let value = value.split(' ').next().unwrap_or("");
        if !(["NaN", "+Inf", "-Inf"].contains(&value) || value.parse::<f64>().is_ok()) {
            return Err(err("value is not a number"));
        }
        if !series.insert(series_part.to_string()) {
            return Err(err("series repeated"));
        }
        samples += 1;
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(batch: &str) -> BatchStatus {
        let mut b = BatchStatus {
            batch: batch.into(),
            images_requested: 5,
            min_slack_ms: Some(3_599_250),
            ambiguous_items: 1,
            ..BatchStatus::default()
        };
        b.items.insert("done".into(), 3);
        b.items.insert("failed".into(), 1);
        b.images.insert("archived".into(), 4);
        b.verdicts.insert("pass".into(), 3);
        b.verdicts.insert("block".into(), 1);
        b.failed_by_class.insert("permanent".into(), 1);
        b
    }

    #[test]
    fn the_format_follows_the_grammar() {
        let snap = Snapshot {
            batches: vec![status("spring"), status("we\"ird\\batch\nname")],
            errors_by_code: BTreeMap::from([(18, 4), (282004, 1)]),
            quota_used_images: 7,
            quota_day_start_ms: 1_763_654_400_000,
            last_run: Some(LastRun {
                exit_code: 3,
                ended_at_ms: 1_763_712_000_500,
                duration_secs: 12.3456,
            }),
        };
        let text = render(&snap);
        let samples = check_format(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(samples > 30, "{samples}");
        for line in [
            "runner_items{batch=\"spring\",state=\"done\"} 3",
            "runner_items{batch=\"spring\",state=\"pending\"} 0",
            "runner_images{batch=\"spring\",verdict=\"block\"} 1",
            "runner_image_outcomes{batch=\"spring\",state=\"archived\"} 4",
            "runner_api_errors_total{code=\"282004\"} 1",
            "runner_url_slack_min_seconds{batch=\"spring\"} 3599.25",
            "runner_failed_items{batch=\"spring\",class=\"permanent\"} 1",
            "runner_quota_used_images 7",
            "runner_last_run_exit_code 3",
            "runner_last_run_timestamp_seconds 1763712000.5",
            "runner_last_run_duration_seconds 12.346",
            "runner_items{batch=\"we\\\"ird\\\\batch\\nname\",state=\"done\"} 3",
            "# TYPE runner_api_errors_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn the_grammar_check_catches_mistakes() {
        for bad in [
            "runner_x 1\n",                                               // no TYPE
            "# TYPE runner_x gauge\nrunner_x{a=\"1\"} one\n",             // not a number
            "# TYPE runner_x gauge\nrunner_x{a=\"1} 1\n",                 // unclosed value
            "# TYPE runner_x gauge\nrunner_x{a=\"\\t\"} 1\n",             // bad escape
            "# TYPE runner_x gauge\nrunner_x 1\nrunner_x 2\n",            // repeated series
            "# TYPE runner_x gauge\n# TYPE runner_x gauge\nrunner_x 1\n", // repeated TYPE
            "# TYPE runner_x gauge\nrunner_x 1",                          // no final line feed
            "# TYPE 1runner gauge\n1runner 1\n",                          // bad name
        ] {
            assert!(check_format(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            check_format("# HELP a b\n# TYPE a gauge\na{x=\"\\\"\"} +Inf\n"),
            Ok(1)
        );
    }

    #[test]
    fn values_are_spelled_as_the_format_wants() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-2.0), "-2");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
