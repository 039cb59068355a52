//! `runner report`, `runner export`, `--metrics FILE` and `runner status --json` against the
//! simulator, through the real binary.

#[path = "common/pipeline.rs"]
mod common;
#[path = "common/report.rs"]
mod report_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use report_common::*;
use serde_json::Value;

/// A workspace with the gallery job run to its end (one item fails: exit 3).
async fn gallery_env() -> Env {
    let env = Env::new(gallery_sim()).await;
    let job = env.write("gallery.yaml", GALLERY_JOB);
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 3);
    env
}

fn batch_status<'a>(status: &'a Value, batch: &str) -> &'a Value {
    status["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .find(|b| b["batch"] == batch)
        .expect("batch in status")
}

fn count(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or(0) as usize
}

async fn report(env: &Env, out: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["report", "--out", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = env.plain(&args).await;
    assert_exit(&o, 0);
    let summary: Value = serde_json::from_slice(&o.stdout).expect("report JSON");
    (summary, text(&o.stderr))
}

fn mtimes(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    std::fs::read_dir(dir)
        .expect("thumbs")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path(),
                e.metadata().expect("meta").modified().expect("mtime"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_shows_every_image_and_item_and_loads_nothing_from_the_network() {
    let env = gallery_env().await;
    let status = env.status().await;
    let b = batch_status(&status, "gallery");
    let (archived, skipped) = (
        count(&b["images"], "archived"),
        count(&b["images"], "skipped"),
    );
    let failed = count(&b["items"], "failed");
    assert_eq!(failed, 1, "{status}");
    assert_eq!(archived + skipped + 1, GALLERY_IMAGES, "{status}");
    for v in ["pass", "review", "block"] {
        assert!(
            count(&b["verdicts"], v) > 0,
            "the job makes every verdict: {status}"
        );
    }

    let out = env.dir.path().join("report");
    let (summary, _) = report(&env, &out, &[]).await;
    let br = &summary["batches"][0];
    assert_eq!(br["batch"], "gallery");
    assert_eq!(count(br, "thumbs_made"), archived);
    assert_eq!(count(br, "thumbs_failed"), 0);
    assert_eq!(count(br, "cards"), archived + skipped + failed);
    assert_eq!(
        summary["index"].as_str(),
        Some(out.join("index.html").to_str().unwrap())
    );

    let page_path = out.join("gallery/index.html");
    let page = std::fs::read_to_string(&page_path).expect("batch page");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.trim_end().ends_with("</html>"));
    assert_eq!(network_resources(&page), Vec::<String>::new());
    // Thumbnails: one per archived image, files beside the page, at most 256 px, the size the
    // page says.
    let imgs: Vec<String> = attr_values(&page, "src");
    assert_eq!(imgs.len(), archived, "one <img> per archived image");
    let widths = attr_values(&page, "width");
    for src in &imgs {
        assert!(src.starts_with("thumbs/") && src.ends_with(".png"), "{src}");
        let (w, h) = png_size(&out.join("gallery").join(src));
        assert!(w.max(h) <= 256 && w.max(h) >= 144, "{src}: {w}x{h}");
        assert!(widths.contains(&w.to_string()));
    }
    // Each thumbnail links to its full image in the archive.
    let links: Vec<String> = attr_values(&page, "href")
        .into_iter()
        .filter(|h| h.ends_with(".png"))
        .collect();
    assert_eq!(links.len(), archived);
    for l in &links {
        let full = out.join("gallery").join(l);
        assert!(full.exists(), "{l} → {}", full.display());
    }
    // Cards by verdict, placeholders with their reasons.
    let cards = |class: &str| {
        page.matches(&format!("<figure class=\"card v-{class}\""))
            .count()
    };
    assert_eq!(cards("pass"), count(&b["verdicts"], "pass"));
    assert_eq!(cards("review"), count(&b["verdicts"], "review"));
    assert_eq!(cards("block"), count(&b["verdicts"], "block"));
    assert_eq!(cards("failed"), 1);
    assert_eq!(cards("waiting"), 0);
    assert_eq!(page.matches("aria-label=\"blocked\"").count(), skipped);
    assert!(page.contains("archive policy skips block images"));
    assert!(page.contains("暴力的场面"));
    assert!(page.contains("censorship"), "the failure's reason is shown");
    // Grouping: the 3x3 template is a table with the last var across, the other template has
    // its sizes and variants across; the quoted prompt and the hostile tags are escaped.
    assert!(
        page.contains(
            "<th>animal</th><th>place: 草原</th><th>place: 海边</th><th>place: 雪地</th>"
        )
    );
    assert!(page.contains("<th>style</th><th>512x512 · v2 · variant 0</th><th>512x512 · v2 · variant 1</th><th>360x640 · v2 · variant 0</th>"), "{page}");
    assert!(page.contains("猫说&quot;你好&quot;, 然后走了"));
    assert!(page.contains("campaign=&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("owner=a&amp;b"));
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own script"
    );
    // Totals and time line.
    assert!(page.contains("<section id=\"totals\">"));
    assert!(page.contains("<svg class=\"bars\""));
    let mut sums = [0u64; 3];
    for title in page.split("<title>").skip(2) {
        let title = title.split("</title>").next().unwrap();
        let counts = title.rsplit(": ").next().unwrap();
        for (i, part) in counts.split(", ").enumerate() {
            sums[i] += part
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .expect("a count");
        }
    }
    assert_eq!(
        sums,
        [GALLERY_ITEMS as u64, GALLERY_ITEMS as u64 - 1, 1],
        "submitted, finished, failed"
    );
    // The index links to the page.
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("<a href=\"gallery/index.html\">gallery</a>"));
    assert_eq!(network_resources(&index), Vec::<String>::new());

    // Regenerating makes nothing new and touches no thumbnail.
    let thumbs = out.join("gallery/thumbs");
    let before = mtimes(&thumbs);
    let (again, _) = report(&env, &out, &["--batch", "gallery"]).await;
    assert_eq!(count(&again["batches"][0], "thumbs_made"), 0);
    assert_eq!(count(&again["batches"][0], "thumbs_unchanged"), archived);
    assert_eq!(mtimes(&thumbs), before);
    assert!(
        files_below(&out).iter().all(|f| !f.contains(".runner-tmp")),
        "no temp files"
    );

    // An archived file gone missing: a placeholder that says so, and a warning.
    let manifest = check_archive(&env.archive, "gallery");
    let gone = manifest
        .iter()
        .find_map(|l| l["path"].as_str())
        .expect("an archived image");
    std::fs::remove_file(env.archive.join("gallery").join(gone)).expect("remove");
    let (third, stderr) = report(&env, &out, &[]).await;
    assert_eq!(count(&third["batches"][0], "thumbs_failed"), 1);
    assert!(stderr.contains("could not be read"), "{stderr}");
    let page = std::fs::read_to_string(&page_path).expect("batch page");
    assert!(page.contains("is missing from the archive"));
    assert_eq!(attr_values(&page, "src").len(), archived - 1);

    // An unknown batch is a usage error.
    let o = env
        .plain(&["report", "--out", out.to_str().unwrap(), "--batch", "nope"])
        .await;
    assert_exit(&o, 2);
    assert!(text(&o.stderr).contains("no batch named \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_have_one_row_per_image_as_json_lines_and_csv() {
    let env = gallery_env().await;
    let manifest = check_archive(&env.archive, "gallery");

    let o = env.plain(&["export"]).await;
    assert_exit(&o, 0);
    let rows: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        rows.len(),
        manifest.len(),
        "one row per archived, skipped or lost image"
    );
    assert_eq!(rows.len(), GALLERY_IMAGES - 1);
    let keys: BTreeSet<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["item_key"].as_str().unwrap().to_string(),
                r["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys.len(), rows.len(), "no image twice");
    for r in &rows {
        assert_eq!(r["batch"], "gallery");
        assert!(r["task_id"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(r["submitted_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        match r["state"].as_str() {
            Some("archived") => {
                let path = r["path"].as_str().expect("path");
                assert!(path.starts_with("gallery/images/"), "{path}");
                let bytes = std::fs::read(env.archive.join(path)).expect("the file");
                assert_eq!(Some(bytes.len() as u64), r["bytes"].as_u64());
                use sha2::Digest;
                assert_eq!(
                    r["sha256"].as_str(),
                    Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
                );
            }
            Some("skipped") => {
                assert!(r["path"].is_null());
                assert_eq!(r["verdict"], "block");
            }
            other => panic!("unexpected state {other:?}"),
        }
        assert_eq!(r["tags"]["campaign"], "<script>alert(1)</script>");
    }
    let templated: Vec<&Value> = rows
        .iter()
        .filter(|r| r["template"] == "{animal}在{place}奔跑")
        .collect();
    assert_eq!(templated.len(), 9);
    assert!(
        templated
            .iter()
            .all(|r| r["vars"]["animal"].is_string() && r["vars"]["place"].is_string())
    );

    // CSV to a file, with a byte-order mark.
    let csv_path = env.dir.path().join("out/images.csv");
    std::fs::create_dir_all(csv_path.parent().unwrap()).unwrap();
    let o = env
        .plain(&[
            "export",
            "--format",
            "csv",
            "--batch",
            "gallery",
            "--bom",
            "--out",
            csv_path.to_str().unwrap(),
        ])
        .await;
    assert_exit(&o, 0);
    assert!(o.stdout.is_empty());
    let csv = std::fs::read_to_string(&csv_path).expect("csv");
    let csv = csv.strip_prefix('\u{feff}').expect("byte-order mark");
    let records = parse_csv(csv);
    assert_eq!(records.len(), rows.len() + 1);
    assert_eq!(
        records[0],
        runner::report::export::CSV_COLUMNS
            .map(String::from)
            .to_vec()
    );
    let col = |name: &str| records[0].iter().position(|c| c == name).unwrap();
    assert!(records.iter().all(|r| r.len() == records[0].len()));
    let quoted: Vec<&Vec<String>> = records[1..]
        .iter()
        .filter(|r| r[col("prompt")] == "猫说\"你好\", 然后走了")
        .collect();
    assert_eq!(
        quoted.len(),
        4,
        "the prompt with a comma and quotes survives: 2 sizes x 2 images"
    );
    for r in &records[1..] {
        let tags: BTreeMap<String, String> =
            serde_json::from_str(&r[col("tags")]).expect("tags are JSON");
        assert_eq!(tags["owner"], "a&b");
        let json = rows
            .iter()
            .find(|j| {
                j["item_key"] == r[col("item_key")].as_str()
                    && j["index"].as_u64().map(|i| i.to_string()).as_deref()
                        == Some(r[col("index")].as_str())
            })
            .expect("the same row in JSON");
        assert_eq!(json["sha256"].as_str().unwrap_or(""), r[col("sha256")]);
        assert_eq!(json["path"].as_str().unwrap_or(""), r[col("path")]);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&csv_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
    let o = env.plain(&["export", "--batch", "nope"]).await;
    assert_exit(&o, 2);
}

/// Values of the samples of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_write_prometheus_metrics_for_the_textfile_collector() {
    let env = Env::new(gallery_sim()).await;
    let job = env.write("gallery.yaml", GALLERY_JOB);
    let prom_dir = env.dir.path().join("textfile");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = prom_dir.join("runner.prom");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = env
        .run(&[
            "submit",
            job.to_str().unwrap(),
            "--metrics",
            prom.to_str().unwrap(),
        ])
        .await;
    assert_exit(&out, 3);
    let prom_text = std::fs::read_to_string(&prom).expect("metrics file");
    let samples = runner::report::metrics::check_format(&prom_text)
        .unwrap_or_else(|e| panic!("{e}\n{prom_text}"));
    assert!(samples >= 20, "{samples}");
    // Checked by promtool too where it is installed.
    if let Ok(o) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom).unwrap())
        .output()
    {
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("error")
                && !String::from_utf8_lossy(&o.stderr).contains("error"),
            "promtool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let status = env.status().await;
    let b = batch_status(&status, "gallery");
    for st in ["done", "failed", "pending"] {
        assert_eq!(
            sample(
                &prom_text,
                "runner_items",
                &[("batch", "gallery"), ("state", st)]
            ),
            Some(count(&b["items"], st) as f64),
            "{st}\n{prom_text}"
        );
    }
    for v in ["pass", "review", "block"] {
        assert_eq!(
            sample(
                &prom_text,
                "runner_images",
                &[("batch", "gallery"), ("verdict", v)]
            ),
            Some(count(&b["verdicts"], v) as f64)
        );
    }
    for st in ["archived", "skipped", "lost", "listed"] {
        assert_eq!(
            sample(
                &prom_text,
                "runner_image_outcomes",
                &[("batch", "gallery"), ("state", st)]
            ),
            Some(count(&b["images"], st) as f64)
        );
    }
    // The banned prompt's sub-task error.
    assert_eq!(
        sample(&prom_text, "runner_api_errors_total", &[("code", "501")]),
        Some(1.0),
        "{prom_text}"
    );
    let slack = sample(
        &prom_text,
        "runner_url_slack_min_seconds",
        &[("batch", "gallery")],
    )
    .expect("slack");
    // URLs live an hour; their expiry is a whole second, so the slack may pass 3600 a little.
    assert!(slack > 0.0 && slack <= 3601.0, "{slack}");
    assert_eq!(
        sample(&prom_text, "runner_quota_used_images", &[]),
        Some(GALLERY_IMAGES as f64)
    );
    assert_eq!(
        sample(&prom_text, "runner_last_run_exit_code", &[]),
        Some(3.0)
    );
    let at = sample(&prom_text, "runner_last_run_timestamp_seconds", &[]).expect("timestamp");
    assert!(
        at >= started.floor() && at < started + 120.0,
        "{at} vs {started}"
    );
    assert_eq!(status["quota_used_images"], GALLERY_IMAGES);
    assert_eq!(status["last_run"]["exit_code"], 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "readable by the collector's user");
    }
    assert_eq!(
        files_below(&prom_dir),
        vec!["runner.prom".to_string()],
        "no temp files left"
    );

    // A second run (nothing left to do) rewrites the file with its own exit code.
    let out = env
        .run(&["resume", "--metrics", prom.to_str().unwrap()])
        .await;
    assert_exit(&out, 3);
    let again = std::fs::read_to_string(&prom).unwrap();
    let at2 = sample(&again, "runner_last_run_timestamp_seconds", &[]).unwrap();
    assert!(at2 >= at, "{at2} < {at}");
    let o = env.plain(&["retry", "--failed"]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Retried, the banned prompt fails again: the error counter grows.
    let out = env
        .run(&["resume", "--metrics", prom.to_str().unwrap()])
        .await;
    assert_exit(&out, 3);
    let third = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        sample(&third, "runner_api_errors_total", &[("code", "501")]),
        Some(2.0),
        "{third}"
    );
    assert_eq!(
        sample(&third, "runner_quota_used_images", &[]),
        Some(GALLERY_IMAGES as f64 + 1.0)
    );
}

/// Every key of the `status --json` document as a path (`batches[].items`), and every path the
/// README documents, must be the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_documented_field_by_field() {
    let env = gallery_env().await;
    let status = env.status().await;
    let mut actual = BTreeSet::new();
    for (k, v) in status.as_object().expect("object") {
        actual.insert(k.clone());
        match k.as_str() {
            "batches" => {
                for (bk, _) in v[0].as_object().expect("a batch") {
                    actual.insert(format!("batches[].{bk}"));
                }
            }
            "last_run" => {
                for (rk, _) in v.as_object().expect("a run") {
                    actual.insert(format!("last_run.{rk}"));
                }
            }
            _ => {}
        }
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let section = readme
        .split("### `runner status --json`")
        .nth(1)
        .expect("README has a `runner status --json` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let section = section.split("\n### ").next().unwrap_or(section);
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_string()))
        .collect();
    assert_eq!(documented, actual, "README vs runner status --json");
    assert_eq!(status["version"], 1);
    // The documented example parses and has the same keys at the top.
    let example = section
        .split("```json")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("an example");
    let example: Value = serde_json::from_str(example).expect("the example is JSON");
    let top = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(top(&example), top(&status));
}
