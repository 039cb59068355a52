//! The report in a real browser: a batch run against the simulator, `runner report`, then
//! headless Chromium (driven by `tests/browser/check_report.mjs` with playwright-core) checks
//! that the thumbnails load and the verdict filter works, and keeps a screenshot at
//! `target/test-artifacts/report.png`.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`), `node`, and `npm ci --prefix tests/browser`.
//! Without them the test prints a loud skip, unless `RUNNER_REQUIRE_BROWSER=1` (set by `.ci/run`)
//! makes it fail.

#[path = "common/pipeline.rs"]
mod common;
#[path = "common/report.rs"]
mod report_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use report_common::*;
use serde_json::Value;

/// What is missing for the browser test, if anything.
fn missing_tools(manifest: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing.push(format!("chromium ({chromium}; Debian package `chromium`)"));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node".into());
    }
    if !manifest
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core (`npm ci --prefix tests/browser`)".into());
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_works_in_headless_chromium() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let missing = missing_tools(&manifest);
    if !missing.is_empty() {
        let msg = format!("the browser test needs: {}", missing.join(", "));
        if std::env::var("RUNNER_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("{msg} (RUNNER_REQUIRE_BROWSER=1)");
        }
        eprintln!("\n\n!!!!!!!! SKIPPED report_browser: {msg} !!!!!!!!\n");
        return;
    }

    let env = Env::new(gallery_sim()).await;
    let job = env.write("gallery.yaml", GALLERY_JOB);
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 3);
    let report = env.dir.path().join("report");
    let o = env
        .plain(&["report", "--out", report.to_str().unwrap()])
        .await;
    assert_exit(&o, 0);
    let status = env.status().await;
    let verdicts = &status["batches"][0]["verdicts"];
    let archived = status["batches"][0]["images"]["archived"].as_u64().unwrap();

    let artifacts = manifest.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact folder");
    let shot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let run = tokio::process::Command::new("node")
        .arg(manifest.join("tests/browser/check_report.mjs"))
        .arg(report.join("gallery/index.html"))
        .arg(&shot)
        .current_dir(manifest.join("tests/browser"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the browser check finished in time")
        .expect("node ran");
    assert!(
        run.status.success(),
        "browser check failed:\n{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let r: Value = serde_json::from_slice(&run.stdout).expect("the check's JSON");

    // Every thumbnail loaded.
    let images = r["images"].as_array().expect("images");
    assert_eq!(images.len() as u64, archived, "{r}");
    for img in images {
        assert!(
            img["naturalWidth"].as_u64().unwrap_or(0) > 0 && img["complete"] == true,
            "thumbnail did not load: {img}"
        );
    }
    assert_eq!(r["requests_outside"], serde_json::json!([]), "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");

    // The filter: counts, "only pass", and unchecking block.
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    let (pass, review, block) = (
        n(verdicts, "pass"),
        n(verdicts, "review"),
        n(verdicts, "block"),
    );
    assert!(pass > 0 && review > 0 && block > 0, "{verdicts}");
    let total = &r["total"];
    assert_eq!(
        (
            n(total, "pass"),
            n(total, "review"),
            n(total, "block"),
            n(total, "failed")
        ),
        (pass, review, block, 1)
    );
    assert_eq!(
        total["label_block"],
        block.to_string(),
        "the filter shows the counts"
    );
    let all = pass + review + block + 1;
    let before = &r["before"];
    assert_eq!(n(before, "all"), all, "{r}");
    assert_eq!(before["shown_label"], all.to_string());
    let only = &r["only_pass"];
    assert_eq!(
        (
            n(only, "all"),
            n(only, "pass"),
            n(only, "review"),
            n(only, "block"),
            n(only, "failed")
        ),
        (pass, pass, 0, 0, 0),
        "only pass: {r}"
    );
    assert_eq!(only["shown_label"], pass.to_string());
    let without = &r["without_block"];
    assert_eq!(n(without, "all"), all - block, "{r}");
    assert_eq!(n(without, "block"), 0);
    assert_eq!(n(without, "review"), review);
    assert_eq!(n(&r["after"], "all"), all);

    // The screenshot is a real, full-page PNG.
    let (w, h) = png_size(&shot);
    assert!(w >= 1000 && h > 1000, "screenshot {w}x{h}");
    eprintln!("screenshot: {}", shot.display());
}
