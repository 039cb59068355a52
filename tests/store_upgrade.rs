//! A store made by an earlier release opens and resumes with this one.
//!
//! `tests/fixtures/store-0.1.0/` holds a store written by runner 0.1.0 (main at b4d8c2e) with
//! the job file it was loaded from: `runner submit catalog.yaml` against `runner sim --banned
//! 奔跑 --block-rate 0.2 --review-rate 0.2 --seed 3`, stopped by `--max-runtime 4s`. It left 10
//! items done (15 images archived, 1 skipped), 5 failed by censorship (501) and 28 pending.

#[path = "common/pipeline.rs"]
mod common;

use std::path::Path;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-0.1.0");

/// Copies the fixture's store and job files into the workspace (the fixture itself is never
/// opened for writing).
fn copy_fixture(env: &Env) {
    for name in ["runner.db", "catalog.yaml", "catalog-prompts.txt"] {
        let to = if name == "runner.db" {
            env.db.clone()
        } else {
            env.dir.path().join(name)
        };
        std::fs::copy(Path::new(FIXTURE).join(name), to).expect("copy fixture");
    }
}

fn items(status: &serde_json::Value) -> (i64, i64, i64) {
    let it = &status["batches"][0]["items"];
    let n = |k: &str| it[k].as_i64().unwrap_or(-1);
    (n("done"), n("failed"), n("pending"))
}

#[tokio::test]
async fn a_store_of_the_previous_release_opens_and_resumes() {
    let env = Env::new(quick_sim()).await;
    copy_fixture(&env);

    let before = env.status().await;
    assert_eq!(items(&before), (10, 5, 28), "{before:#}");
    assert_eq!(before["batches"][0]["images"]["archived"], 15);

    // The same job file adds nothing: item keys are stable across releases.
    let out = env.run(&["submit", "catalog.yaml", "--json"]).await;
    // 3: finished, with the 5 censored items of the earlier run still failed.
    assert_exit(&out, 3);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(
        summary["loaded"][0][1],
        serde_json::json!({"added": 0, "existing": 43}),
        "{summary:#}"
    );
    assert_eq!(summary["submitted"], 28, "{summary:#}");
    assert_eq!(
        env.stats().submits,
        28,
        "only the pending items were submitted"
    );

    let after = env.status().await;
    assert_eq!(items(&after), (38, 5, 0), "{after:#}");
    let images = &after["batches"][0]["images"];
    // The earlier run's 15 archived images stay recorded; the new ones join them.
    assert!(images["archived"].as_i64().unwrap_or(0) > 15, "{after:#}");
    assert_eq!(images["listed"], 0);
    // The manifest is rewritten from the whole store: the earlier images' lines are kept.
    let manifest = std::fs::read_to_string(env.archive.join("spring-catalog/manifest.jsonl"))
        .expect("manifest");
    let lines = manifest.lines().count() as i64;
    let recorded = images["archived"].as_i64().unwrap_or(0)
        + images["skipped"].as_i64().unwrap_or(0)
        + images["lost"].as_i64().unwrap_or(0);
    assert_eq!(lines, recorded);
}
