//! The pipeline end to end: `runner submit` / `resume` / `status` / `verify` against `runner sim`.

#[path = "common/pipeline.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use runner::sim::{FaultKind, FaultKinds, SimConfig, Stats};
use serde_json::Value;

/// A job of `n` items with mixed sizes and image_num (and so mixed verdicts at the sim's rates).
fn mixed_job(batch: &str, n: usize) -> String {
    let sizes = ["512x512", "640x360", "360x640", "1024x1024"];
    let mut s = format!("batch: {batch}\nprompts:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - prompt: 第{i}号测试图，一只小猫在花园里\n    sizes: [{}]\n    image_num: {}\n",
            sizes[i % sizes.len()],
            1 + i % 3
        ));
    }
    s
}

/// Expected submits per (prompt, width, height, version, image_num), from `runner plan --json`.
async fn expected_submits(env: &Env, job: &str) -> BTreeMap<(String, u64, u64, String, u64), u64> {
    let out = env.plain(&["plan", job, "--json"]).await;
    assert_exit(&out, 0);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let mut m = BTreeMap::new();
    for it in plan["item_list"].as_array().expect("item_list") {
        let (w, h) = size_of(&it["size"]);
        *m.entry((
            it["prompt"].as_str().unwrap_or_default().to_string(),
            w,
            h,
            it["version"].as_str().unwrap_or_default().to_string(),
            it["image_num"].as_u64().unwrap_or(0),
        ))
        .or_default() += 1;
    }
    m
}

fn size_of(v: &Value) -> (u64, u64) {
    if let Some(s) = v.as_str() {
        let (w, h) = s.split_once('x').expect("WxH");
        return (w.parse().expect("w"), h.parse().expect("h"));
    }
    (
        v["width"].as_u64().expect("width"),
        v["height"].as_u64().expect("height"),
    )
}

/// Submits beyond what the items ask for.
fn extra_submits(stats: &Stats, expected: &BTreeMap<(String, u64, u64, String, u64), u64>) -> u64 {
    let mut extra = 0;
    for s in &stats.submits_per_item {
        let key = (
            s.prompt.clone(),
            u64::from(s.width),
            u64::from(s.height),
            s.version.clone(),
            u64::from(s.image_num),
        );
        let want = expected.get(&key).copied().unwrap_or(0);
        extra += s.count.saturating_sub(want);
    }
    extra
}

fn item_counts(status: &Value, batch: &str) -> BTreeMap<String, i64> {
    let b = status["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .find(|b| b["batch"] == batch)
        .expect("batch in status");
    serde_json::from_value(b["items"].clone()).expect("items")
}

fn all_done(status: &Value, batch: &str) -> bool {
    let c = item_counts(status, batch);
    c.iter().all(|(k, v)| k == "done" || *v == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_every_kept_image_is_archived_and_verified() {
    let env = Env::new(SimConfig {
        review_rate: 0.2,
        block_rate: 0.1,
        ..quick_sim()
    })
    .await;
    let job = env.write("job.yaml", &mixed_job("e2e", 36));
    let out = env.run(&["submit", job.to_str().unwrap(), "--json"]).await;
    assert_exit(&out, 0);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["submitted"], 36);

    let lines = check_archive(&env.archive, "e2e");
    let images: u64 = (0..36).map(|i| 1 + (i % 3) as u64).sum();
    assert_eq!(lines.len() as u64, images, "one manifest line per image");
    let verdicts: BTreeMap<String, usize> = lines.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l["verdict"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
        m
    });
    assert!(
        verdicts.get("pass").copied().unwrap_or(0) > 0,
        "{verdicts:?}"
    );
    assert!(
        verdicts.get("review").copied().unwrap_or(0) > 0,
        "{verdicts:?}"
    );
    assert!(
        verdicts.get("block").copied().unwrap_or(0) > 0,
        "{verdicts:?}"
    );
    // Default policy: review kept, block recorded without bytes.
    for l in &lines {
        match l["verdict"].as_str() {
            Some("block") => assert!(l["path"].is_null(), "{l}"),
            _ => assert!(l["path"].is_string(), "{l}"),
        }
    }
    let sizes: std::collections::BTreeSet<(u64, u64)> = lines
        .iter()
        .map(|l| (l["width"].as_u64().unwrap(), l["height"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes.len(), 4, "mixed sizes: {sizes:?}");

    let status = env.status().await;
    assert!(all_done(&status, "e2e"), "{status}");
    let stats = env.stats();
    assert_eq!(stats.submits, 36);
    let verify = env.plain(&["verify"]).await;
    assert_exit(&verify, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_again_submits_nothing_and_edits_submit_only_new_items() {
    let env = Env::new(quick_sim()).await;
    let job = env.write("job.yaml", &mixed_job("idem", 10));
    assert_exit(&env.run(&["submit", job.to_str().unwrap()]).await, 0);
    assert_eq!(env.stats().submits, 10);

    // The same file again: nothing new.
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("0 new, 10 already in the store"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.stats().submits, 10, "no new submits");

    // Reformatted (flow style, reordered keys): still nothing new.
    let mut flow = String::from("prompts:\n");
    for i in 0..10 {
        let sizes = ["512x512", "640x360", "360x640", "1024x1024"];
        flow.push_str(&format!(
            "  - {{image_num: {}, sizes: [{}], prompt: 第{i}号测试图，一只小猫在花园里}}\n",
            1 + i % 3,
            sizes[i % 4]
        ));
    }
    flow.push_str("batch: idem\n");
    let reformatted = env.write("job2.yaml", &flow);
    assert_exit(
        &env.run(&["submit", reformatted.to_str().unwrap()]).await,
        0,
    );
    assert_eq!(env.stats().submits, 10, "reformatting adds nothing");

    // Two new prompts: exactly two new submits.
    let mut edited = mixed_job("idem", 10);
    edited.push_str("  - 新增的提示词一\n  - 新增的提示词二\n");
    let job3 = env.write("job3.yaml", &edited);
    assert_exit(&env.run(&["submit", job3.to_str().unwrap()]).await, 0);
    let stats = env.stats();
    assert_eq!(stats.submits, 12);
    assert!(
        stats.submits_per_item.iter().all(|s| s.count == 1),
        "{:?}",
        stats.submits_per_item
    );
    check_archive(&env.archive, "idem");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_point_and_resumed_everything_is_done_once() {
    let env = Env::new(SimConfig {
        gen_ms: (100, 400),
        review_rate: 0.1,
        block_rate: 0.05,
        ..quick_sim()
    })
    .await;
    let job = env.write("job.yaml", &mixed_job("crash", 40));
    let job_s = job.to_str().unwrap();
    let expected = expected_submits(&env, job_s).await;

    // Killed during submits.
    let mut child = env.start(&["submit", job_s]);
    env.wait_for("some submits", |s| s.submits >= 5).await;
    kill9(&mut child).await;
    // Killed during polling.
    let before = env.stats().queries;
    let mut child = env.start(&["resume"]);
    env.wait_for("some queries", |s| s.queries >= before + 10)
        .await;
    kill9(&mut child).await;
    // Killed during downloads.
    let before = env.stats().downloads;
    let mut child = env.start(&["resume"]);
    env.wait_for("some downloads", |s| s.downloads >= before + 5)
        .await;
    kill9(&mut child).await;
    // Killed right at the start of a run.
    let before = env.stats().submit_requests + env.stats().queries;
    let mut child = env.start(&["resume"]);
    env.wait_for("any request", |s| s.submit_requests + s.queries > before)
        .await;
    kill9(&mut child).await;

    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let status = env.status().await;
    assert!(all_done(&status, "crash"), "{status}");
    let ambiguous = status["ambiguous_items"].as_i64().unwrap_or(0) as u64;
    let extra = extra_submits(&env.stats(), &expected);
    assert!(
        extra <= ambiguous,
        "{extra} extra submits but only {ambiguous} reported ambiguous"
    );
    check_archive(&env.archive, "crash");
    let verify = env.plain(&["verify"]).await;
    assert_exit(&verify, 0);
    assert!(
        text(&verify.stderr).contains("0 missing, 0 corrupt"),
        "{}",
        text(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_keeps_to_the_configured_limits() {
    let mut env = Env::new(SimConfig {
        gen_ms: (100, 300),
        submit_qps: Some(4.0),
        query_qps: Some(6.0),
        concurrency: Some(3),
        ..quick_sim()
    })
    .await;
    env.limits = vec![
        "--submit-qps=4".into(),
        "--query-qps=6".into(),
        "--concurrency=3".into(),
    ];
    let mut job = String::from("batch: limits\nprompts:\n");
    for i in 0..16 {
        job.push_str(&format!(
            "  - prompt: 限速测试{i}\n    image_num: {}\n    sizes: [512x512]\n",
            1 + i % 2
        ));
    }
    let job = env.write("job.yaml", &job);
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let s = env.stats();
    assert!(s.max_submit_rate <= 4, "submit rate {}", s.max_submit_rate);
    assert!(s.max_query_rate <= 6, "query rate {}", s.max_query_rate);
    assert!(
        s.max_in_generation <= 3,
        "in generation {}",
        s.max_in_generation
    );
    assert!(
        s.max_in_generation >= 2,
        "slots were used: {}",
        s.max_in_generation
    );
    for code in ["13", "15", "18"] {
        assert_eq!(
            s.errors.get(code).copied().unwrap_or(0),
            0,
            "error {code}: {:?}",
            s.errors
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_quota_parks_the_batch_and_a_later_run_finishes_it() {
    let env = Env::new(SimConfig {
        daily_quota: Some(6),
        quota_window: Some(Duration::from_secs(2)),
        ..quick_sim()
    })
    .await;
    let mut job = String::from("batch: quota\nsizes: [512x512]\nprompts:\n");
    for i in 0..10 {
        job.push_str(&format!("  - 配额测试{i}\n"));
    }
    let job = env.write("job.yaml", &job);
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 4);
    assert!(
        text(&out.stderr).contains("daily quota"),
        "{}",
        text(&out.stderr)
    );
    let counts = item_counts(&env.status().await, "quota");
    assert_eq!(counts["done"], 6, "{counts:?}");
    assert_eq!(counts["pending"], 4, "{counts:?}");
    assert!(env.stats().errors.get("17").copied().unwrap_or(0) >= 1);

    // Later runs: each either finds the quota still used up (exit 4, nothing lost) or finishes.
    let start = tokio::time::Instant::now();
    loop {
        let out = env.run(&["resume"]).await;
        match out.status.code() {
            Some(0) => break,
            Some(4) => assert!(start.elapsed() < DEADLINE, "quota never reset"),
            _ => assert_exit(&out, 0),
        }
    }
    assert!(all_done(&env.status().await, "quota"));
    assert_eq!(env.stats().submits, 10);
    check_archive(&env.archive, "quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_urls_are_refreshed_and_every_image_is_archived() {
    let mut env = Env::new(SimConfig {
        // A slow download (0.7 s) holds the single download slot; URLs queued behind two of them
        // outlive their one-second lifetime.
        url_ttl: Duration::from_millis(1000),
        fault_rate: 0.4,
        faults: FaultKinds::from_kinds([FaultKind::Slow]),
        slow_ms: 700,
        ..quick_sim()
    })
    .await;
    env.limits.push("--downloads=1".into());
    let job = env.write("job.yaml", &mixed_job("expiry", 12));
    let out = env.run(&["submit", job.to_str().unwrap(), "--json"]).await;
    assert_exit(&out, 0);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    let s = env.stats();
    // URLs died under the runner: met as a 403, or seen expired (from their signature) before
    // the download started; either way fresh ones were queried.
    let refreshes = summary["url_refreshes"].as_u64().unwrap_or(0);
    assert!(
        refreshes > 0,
        "the test must make URLs expire: {summary} {s:?}"
    );
    assert!(
        s.queries >= 12 + refreshes.min(1),
        "fresh URLs come from queries"
    );
    let lines = check_archive(&env.archive, "expiry");
    assert_eq!(lines.len(), (0..12).map(|i| 1 + i % 3).sum::<usize>());
    assert!(lines.iter().all(|l| l["state"] != "lost"), "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_faults_the_batch_completes_and_nothing_is_lost() {
    let env = Env::new(SimConfig {
        fault_rate: 0.1,
        slow_ms: 300,
        review_rate: 0.1,
        ..quick_sim()
    })
    .await;
    let job = env.write("job.yaml", &mixed_job("faults", 30));
    let job_s = job.to_str().unwrap();
    let expected = expected_submits(&env, job_s).await;
    let out = env.run(&["submit", job_s]).await;
    assert_exit(&out, 0);
    let s = env.stats();
    assert!(
        s.faults.values().sum::<u64>() > 0,
        "faults happened: {:?}",
        s.faults
    );
    let status = env.status().await;
    assert!(all_done(&status, "faults"), "{status}");
    let lines = check_archive(&env.archive, "faults");
    assert_eq!(lines.len(), (0..30).map(|i| 1 + i % 3).sum::<usize>());
    let ambiguous = status["ambiguous_items"].as_i64().unwrap_or(0) as u64;
    assert!(extra_submits(&s, &expected) <= ambiguous);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_error_names_every_way_out() {
    let env = Env::new(quick_sim()).await;
    let job = env.write("job.yaml", &mixed_job("creds", 1));
    let mut cmd = env.cmd(&["submit", job.to_str().unwrap()]);
    cmd.env_remove("EB_AK")
        .env_remove("EB_SK")
        .env_remove("RUNNER_BASE_URL");
    let out = cmd.output().await.expect("run");
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    for word in ["EB_AK", "EB_SK", "EB_ACCESS_TOKEN", "--sim"] {
        assert!(err.contains(word), "{word} missing from: {err}");
    }
    assert_eq!(env.stats().submit_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_store_is_refused_with_exit_4() {
    let env = Env::new(quick_sim()).await;
    let _held = runner::store::open(&env.db).await.expect("open store");
    let job = env.write("job.yaml", &mixed_job("busy", 2));
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 4);
    assert!(
        text(&out.stderr).contains("in use by another runner process"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.stats().submit_requests, 0);
}

fn count(status: &Value, batch: &str, state: &str) -> i64 {
    item_counts(status, batch).get(state).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_submitting_exits_4_and_resume_finishes() {
    let mut env = Env::new(SimConfig {
        gen_ms: (200, 400),
        ..quick_sim()
    })
    .await;
    env.limits = vec![
        "--submit-qps=5".into(),
        "--query-qps=20".into(),
        "--concurrency=4".into(),
    ];
    let job = env.write("job.yaml", &mixed_job("intr", 30));
    let job_s = job.to_str().unwrap();
    let expected = expected_submits(&env, job_s).await;
    let child = env.start(&["submit", job_s]);
    env.wait_for("some submits", |s| s.submits >= 3).await;
    let pid = child.id().expect("pid").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill");
    assert!(kill.success());
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert_exit(&out, 4);
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    let status = env.status().await;
    assert_eq!(
        count(&status, "intr", "submitting"),
        0,
        "no submit left half-recorded"
    );
    assert!(
        count(&status, "intr", "pending") > 0,
        "it stopped submitting: {status}"
    );

    assert_exit(&env.run(&["resume"]).await, 0);
    let status = env.status().await;
    assert!(all_done(&status, "intr"), "{status}");
    let ambiguous = status["ambiguous_items"].as_i64().unwrap_or(0) as u64;
    assert!(extra_submits(&env.stats(), &expected) <= ambiguous);
    check_archive(&env.archive, "intr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_box_drains_running_tasks_exits_4_and_resume_finishes() {
    let mut env = Env::new(SimConfig {
        gen_ms: (200, 400),
        ..quick_sim()
    })
    .await;
    env.limits = vec![
        "--submit-qps=4".into(),
        "--query-qps=20".into(),
        "--concurrency=4".into(),
    ];
    let job = env.write("job.yaml", &mixed_job("tbox", 24));
    let out = env
        .run(&[
            "submit",
            job.to_str().unwrap(),
            "--max-runtime",
            "1s",
            "--json",
        ])
        .await;
    assert_exit(&out, 4);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(summary["stop"], "deadline");
    assert_eq!(
        summary["in_flight"], 0,
        "running tasks were drained: {summary}"
    );
    let status = env.status().await;
    assert_eq!(
        count(&status, "tbox", "running") + count(&status, "tbox", "fetching"),
        0
    );
    let pending = count(&status, "tbox", "pending");
    assert!(pending > 0 && pending < 24, "{status}");
    assert_exit(&env.run(&["resume"]).await, 0);
    assert!(all_done(&env.status().await, "tbox"));
    assert_eq!(env.stats().submits, 24);
    check_archive(&env.archive, "tbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_are_reported_retried_and_verify_repairs_the_archive() {
    let env = Env::new(SimConfig {
        banned: vec!["禁词".into()],
        ..quick_sim()
    })
    .await;
    let mut job = mixed_job("repair", 6);
    job.push_str("  - 这里有禁词\n");
    let job = env.write("job.yaml", &job);
    let out = env.run(&["submit", job.to_str().unwrap()]).await;
    assert_exit(&out, 3);
    let status = env.status().await;
    assert_eq!(count(&status, "repair", "failed"), 1);
    assert_eq!(
        status["batches"][0]["failed_by_class"]["permanent"], 1,
        "{status}"
    );
    let human = env.plain(&["status"]).await;
    assert!(
        text(&human.stdout).contains("501"),
        "the reason is shown: {}",
        text(&human.stdout)
    );

    // A deleted image: verify requeues it, resume downloads it again with fresh URLs.
    let lines = check_archive(&env.archive, "repair");
    let victim = lines
        .iter()
        .find_map(|l| l["path"].as_str())
        .expect("an archived image")
        .to_string();
    let victim_path = env.archive.join("repair").join(&victim);
    let sha = lines.iter().find(|l| l["path"] == victim.as_str()).unwrap()["sha256"].clone();
    std::fs::remove_file(&victim_path).expect("delete");
    let out = env.plain(&["verify"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );
    let downloads = env.stats().downloads;
    // The failed item stays failed: exit 3 again, but the image is back.
    assert_exit(&env.run(&["resume"]).await, 3);
    assert_eq!(env.stats().downloads, downloads + 1);
    let lines = check_archive(&env.archive, "repair");
    let again = lines
        .iter()
        .find(|l| l["path"] == victim.as_str())
        .expect("back in the manifest");
    assert_eq!(
        again["sha256"], sha,
        "the same image (deterministic per prompt)"
    );
    assert_exit(&env.plain(&["verify"]).await, 0);

    // Retry the failed item (the prompt is still banned, so it fails again, once).
    let out = env.plain(&["retry", "--class", "permanent"]).await;
    assert_exit(&out, 0);
    assert!(
        text(&out.stdout).contains("requeued 1 item"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(count(&env.status().await, "repair", "pending"), 1);
    assert_exit(&env.run(&["resume"]).await, 3);
    assert_exit(&env.plain(&["retry"]).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_mid_run_and_a_valid_one_is_reused() {
    let mut env = Env::new(SimConfig {
        gen_ms: (200, 400),
        ..quick_sim()
    })
    .await;
    env.limits = vec![
        "--submit-qps=8".into(),
        "--query-qps=40".into(),
        "--concurrency=4".into(),
    ];
    let job = env.write("job.yaml", &mixed_job("token", 16));
    let child = env.start(&["submit", job.to_str().unwrap()]);
    env.wait_for("some submits", |s| s.submits >= 4).await;
    // The token dies long before its advertised 30 days.
    env.sim.expire_tokens();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert_exit(&out, 0);
    let s = env.stats();
    assert!(
        s.errors.get("111").copied().unwrap_or(0) >= 1,
        "the token expired mid-run: {:?}",
        s.errors
    );
    assert_eq!(s.tokens_issued, 2, "one new token was fetched");
    assert_eq!(s.submits, 16);
    check_archive(&env.archive, "token");

    // A long-lived token is fetched once and reused from the store by the next run.
    let env = Env::new(quick_sim()).await;
    let job = env.write("job.yaml", &mixed_job("cache", 2));
    assert_exit(&env.run(&["submit", job.to_str().unwrap()]).await, 0);
    let job2 = env.write("job2.yaml", &mixed_job("cache2", 2));
    assert_exit(&env.run(&["submit", job2.to_str().unwrap()]).await, 0);
    assert_eq!(env.stats().tokens_issued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_access_token_is_used_as_given() {
    let env = Env::new(quick_sim()).await;
    let url = format!(
        "{}/oauth/2.0/token?grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk",
        env.sim.base_url()
    );
    let token: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("JSON");
    let job = env.write("job.yaml", &mixed_job("preset", 3));
    let mut all = vec!["submit", job.to_str().unwrap()];
    all.extend(env.limits.iter().map(String::as_str));
    let mut cmd = env.cmd(&all);
    cmd.env_remove("EB_AK").env_remove("EB_SK").env(
        "EB_ACCESS_TOKEN",
        token["access_token"].as_str().expect("token"),
    );
    let out = cmd.output().await.expect("run");
    assert_exit(&out, 0);
    assert_eq!(
        env.stats().tokens_issued,
        1,
        "no token fetched by the runner"
    );
    check_archive(&env.archive, "preset");
}
