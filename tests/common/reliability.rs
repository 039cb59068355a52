//! Helpers for the reliability tests (chaos, fault matrix, storage faults, hostile input,
//! secrets): the batch's plan, the store read directly with SQL, and [`check_batch`], every
//! invariant a finished batch must satisfy, checked against the simulator, the store, the
//! manifest and the disk at once.
//!
//! Include beside the pipeline helpers:
//!
//! ```ignore
//! #[path = "common/pipeline.rs"]
//! mod pipeline;
//! #[path = "common/reliability.rs"]
//! mod reliability;
//! ```
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use runner::sim::{Stats, TaskRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Row, SqlitePool};

use crate::pipeline::{Env, assert_exit, check_archive, files_below, text};

/// What the simulator counts submits by: (prompt, width, height, version, image_num).
pub type SubmitKey = (String, u64, u64, String, u64);

/// A job of `n` items over the small sizes, `image_num` 1 or 2, with tags.
pub fn job(batch: &str, n: usize) -> String {
    let sizes = ["512x512", "640x360", "360x640"];
    let mut s = format!("batch: {batch}\ntags: {{suite: reliability}}\nprompts:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - prompt: 第{i}号可靠性测试图，一只小猫在花园里\n    sizes: [{}]\n    image_num: {}\n    tags: {{n: \"{i}\"}}\n",
            sizes[i % sizes.len()],
            1 + i % 2
        ));
    }
    s
}

/// `runner plan --json`'s `item_list`.
pub async fn plan_items(env: &Env, job: &Path) -> Vec<Value> {
    let out = env
        .plain(&["plan", job.to_str().expect("UTF-8 path"), "--json"])
        .await;
    assert_exit(&out, 0);
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    plan["item_list"].as_array().expect("item_list").clone()
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

/// The submit key of a plan item.
pub fn submit_key(item: &Value) -> SubmitKey {
    let (w, h) = size_of(&item["size"]);
    (
        item["prompt"].as_str().unwrap_or_default().to_string(),
        w,
        h,
        item["version"].as_str().unwrap_or_default().to_string(),
        item["image_num"].as_u64().unwrap_or(0),
    )
}

/// Submits the plan asks for, by submit key.
pub fn expected_submits(items: &[Value]) -> BTreeMap<SubmitKey, u64> {
    let mut m = BTreeMap::new();
    for it in items {
        *m.entry(submit_key(it)).or_default() += 1;
    }
    m
}

/// Tasks the simulator accepted beyond what the plan asks for, by submit key.
pub fn extra_by_key(
    stats: &Stats,
    expected: &BTreeMap<SubmitKey, u64>,
) -> BTreeMap<SubmitKey, u64> {
    let mut out = BTreeMap::new();
    for s in &stats.submits_per_item {
        let key = (
            s.prompt.clone(),
            u64::from(s.width),
            u64::from(s.height),
            s.version.clone(),
            u64::from(s.image_num),
        );
        let extra = s
            .count
            .saturating_sub(expected.get(&key).copied().unwrap_or(0));
        if extra > 0 {
            out.insert(key, extra);
        }
    }
    out
}

/// Requests of every kind the simulator has received: the clock the chaos test kills by.
pub fn events(stats: &Stats) -> u64 {
    stats.token_requests + stats.submit_requests + stats.queries + stats.download_requests
}

/// A read-only SQL connection to the store (no runner may hold it for writing meanwhile).
pub async fn store_sql(db: &Path) -> SqlitePool {
    runner::store::pool_options()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(db)
                .read_only(true)
                .create_if_missing(false),
        )
        .await
        .expect("open the store with SQL")
}

/// One item row.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub key: String,
    pub submit_key: SubmitKey,
    pub state: String,
    pub task_id: Option<String>,
    pub image_num: i64,
    pub ambiguous: i64,
    pub error_class: Option<String>,
    pub error_msg: Option<String>,
    /// Times the task failed in a way that allows a new submit (216303, 201): each one is a
    /// legitimate second submit.
    pub task_retries: i64,
}

/// Every item of `batch` (none while no run has created the store and its tables yet: a run
/// may be killed that early).
pub async fn item_rows(db: &Path, batch: &str) -> Vec<ItemRow> {
    if !db.exists() {
        return Vec::new();
    }
    let pool = store_sql(db).await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'events')",
    )
    .fetch_one(&pool)
    .await
    .expect("tables");
    if tables < 2 {
        pool.close().await;
        return Vec::new();
    }
    let retries: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT item_key, COUNT(*) FROM events WHERE kind = 'task_retry' AND batch = ? GROUP BY item_key",
    )
    .bind(batch)
    .fetch_all(&pool)
    .await
    .expect("events")
    .into_iter()
    .collect();
    let rows = sqlx::query(
        "SELECT key, prompt, width, height, version, image_num, state, task_id, ambiguous,
                error_class, error_msg
         FROM items WHERE batch = ? ORDER BY seq",
    )
    .bind(batch)
    .fetch_all(&pool)
    .await
    .expect("items");
    let out = rows
        .iter()
        .map(|r| {
            let key: String = r.get("key");
            ItemRow {
                submit_key: (
                    r.get("prompt"),
                    r.get::<i64, _>("width") as u64,
                    r.get::<i64, _>("height") as u64,
                    r.get("version"),
                    r.get::<i64, _>("image_num") as u64,
                ),
                state: r.get("state"),
                task_id: r.get("task_id"),
                image_num: r.get("image_num"),
                ambiguous: r.get("ambiguous"),
                error_class: r.get("error_class"),
                error_msg: r.get("error_msg"),
                task_retries: retries.get(&key).copied().unwrap_or(0),
                key,
            }
        })
        .collect();
    pool.close().await;
    out
}

/// What the store says of every image of `batch`, as the manifest writes it.
pub async fn store_records(db: &Path, batch: &str) -> Vec<Value> {
    let store = runner::store::open_read_only(db)
        .await
        .expect("open the store read-only");
    let records = store.image_records(batch).await.expect("image records");
    store.close().await;
    records
        .iter()
        .map(|r| serde_json::to_value(r).expect("record JSON"))
        .collect()
}

/// What the archive policy keeps.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Keep images with verdict `review`.
    pub review: bool,
    /// Keep images with verdict `block`.
    pub block: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            review: true,
            block: false,
        }
    }
}

/// What [`check_batch`] may tolerate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Items that failed (with a reason) are fine.
    pub failed: bool,
    /// Images lost (URL dead for good) are fine.
    pub lost: bool,
}

/// The figures of a checked batch.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub items: usize,
    pub done: usize,
    pub failed: usize,
    pub images: usize,
    pub archived: usize,
    pub skipped: usize,
    pub lost: usize,
    /// Items whose submit was ambiguous at least once (`status`'s `ambiguous_items`).
    pub ambiguous_items: u64,
    /// Ambiguous submits in all (an item can have several).
    pub ambiguous_submits: u64,
    /// Tasks the simulator accepted beyond the plan.
    pub extra_submits: u64,
    /// Legitimate resubmits after a task failed on the server (216303, 201).
    pub task_retries: u64,
    /// Tasks the simulator accepted.
    pub sim_submits: u64,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every invariant of a finished batch:
///
/// - every item of the plan is in the store, `done`, or `failed` with a class and a message;
/// - every image of a done item is listed once per `image_num`, with the verdict the simulator
///   gave that task; the policy's images are `archived`, the others `skipped`; none `lost`;
/// - every archived file holds exactly the simulator's image (SHA-256 of the rendered PNG), its
///   sidecar and its manifest line agree with the store; manifest = store = disk; no temp files;
/// - no task was submitted twice beyond the item's reported ambiguous submits and server-side
///   task failures, per submit key and in total;
/// - `runner verify` is clean.
pub async fn check_batch(
    env: &Env,
    batch: &str,
    plan: &[Value],
    policy: Policy,
    allow: Allow,
) -> Figures {
    let mut fig = Figures::default();
    let items = item_rows(&env.db, batch).await;
    let plan_keys: BTreeSet<&str> = plan
        .iter()
        .map(|i| i["key"].as_str().expect("plan key"))
        .collect();
    let store_keys: BTreeSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(plan_keys, store_keys, "the store holds exactly the plan");
    fig.items = items.len();

    let sim_tasks: HashMap<String, TaskRecord> = env
        .sim
        .tasks()
        .into_iter()
        .map(|t| (t.task_id.clone(), t))
        .collect();
    let records = store_records(&env.db, batch).await;
    let mut by_item: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in &records {
        by_item
            .entry(r["item_key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(r);
    }
    for it in &items {
        match it.state.as_str() {
            "done" => fig.done += 1,
            "failed" => {
                assert!(allow.failed, "item {} failed: {:?}", it.key, it.error_msg);
                assert!(
                    it.error_class.as_deref().is_some_and(|c| !c.is_empty())
                        && it.error_msg.as_deref().is_some_and(|m| !m.is_empty()),
                    "a failed item has a reason: {it:?}"
                );
                fig.failed += 1;
                continue;
            }
            other => panic!("item {} is still {other}", it.key),
        }
        let task_id = it.task_id.as_deref().expect("a done item has its task id");
        let task = sim_tasks
            .get(task_id)
            .unwrap_or_else(|| panic!("task {task_id} of item {} unknown to the sim", it.key));
        assert_eq!(
            (
                task.prompt.as_str(),
                u64::from(task.width),
                u64::from(task.height)
            ),
            (it.submit_key.0.as_str(), it.submit_key.1, it.submit_key.2),
            "the stored task id belongs to this item's submit"
        );
        let imgs = by_item.get(&it.key).cloned().unwrap_or_default();
        assert_eq!(
            imgs.len() as i64,
            it.image_num,
            "item {} lists one image per image_num",
            it.key
        );
        for img in imgs {
            let idx = img["index"].as_u64().expect("index") as usize;
            let verdict = img["verdict"].as_str().expect("verdict");
            assert_eq!(
                task.verdicts.get(idx).map(|v| v.as_str()),
                Some(verdict),
                "verdict of {}-{idx} is the simulator's",
                it.key
            );
            let keep = match verdict {
                "pass" => true,
                "review" => policy.review,
                _ => policy.block,
            };
            let state = img["state"].as_str().expect("state");
            fig.images += 1;
            match state {
                "archived" => {
                    assert!(keep, "{verdict} image archived against the policy");
                    fig.archived += 1;
                }
                "skipped" => {
                    assert!(!keep, "{verdict} image skipped against the policy");
                    assert!(img["path"].is_null());
                    fig.skipped += 1;
                }
                "lost" => {
                    assert!(allow.lost, "image {}-{idx} lost", it.key);
                    fig.lost += 1;
                }
                other => panic!("image {}-{idx} is still {other}", it.key),
            }
        }
    }

    // The disk: every manifest line's file hashes to its line and sidecar, decodes at its size,
    // nothing on disk without a line (the pipeline's own check), and more below.
    let lines = check_archive(&env.archive, batch);
    let key_of = |v: &Value| {
        (
            v["item_key"].as_str().unwrap_or_default().to_string(),
            v["index"].as_u64().unwrap_or(0),
        )
    };
    let manifest: BTreeMap<_, &Value> = lines.iter().map(|l| (key_of(l), l)).collect();
    let store: BTreeMap<_, &Value> = records.iter().map(|r| (key_of(r), r)).collect();
    assert_eq!(manifest.len(), lines.len(), "no duplicate manifest lines");
    assert_eq!(
        manifest.keys().collect::<Vec<_>>(),
        store.keys().collect::<Vec<_>>(),
        "manifest = store: the same images"
    );
    for (k, line) in &manifest {
        assert_eq!(
            *line, store[k],
            "manifest = store: the same record for {k:?}"
        );
    }
    let dir = env.archive.join(batch);
    let mut renders = Vec::new();
    for r in records.iter().filter(|r| r["state"] == "archived") {
        let rel = r["path"].as_str().expect("archived image has a path");
        let png = dir.join(rel);
        let sidecar: Value =
            serde_json::from_slice(&std::fs::read(png.with_extension("json")).expect("sidecar"))
                .expect("sidecar JSON");
        assert_eq!(&sidecar, r, "sidecar = store for {rel}");
        renders.push((
            png,
            r["sha256"].as_str().expect("sha").to_string(),
            r["prompt"].as_str().expect("prompt").to_string(),
            r["width"].as_u64().expect("width") as u32,
            r["height"].as_u64().expect("height") as u32,
            r["index"].as_u64().expect("index") as u32,
        ));
    }
    // Exactly the simulator's image: hash of the rendered original.
    tokio::task::spawn_blocking(move || {
        for (png, sha, prompt, w, h, idx) in renders {
            let original = runner::sim::png::render_png(&prompt, w, h, idx).expect("render");
            assert_eq!(
                sha256_hex(&original),
                sha,
                "{} is the simulator's image",
                png.display()
            );
        }
    })
    .await
    .expect("hash check");
    let all = files_below(&env.archive);
    let temp: Vec<&String> = all
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.starts_with(".tmp") || name.ends_with(".part") || f.contains("/.tmp/")
        })
        .collect();
    assert!(temp.is_empty(), "temp files left: {temp:?}");

    // Submits: nothing twice beyond what the store reports as ambiguous (or server-side
    // failures, which are resubmitted on purpose).
    let stats = env.stats();
    fig.sim_submits = stats.submits;
    let extra = extra_by_key(&stats, &expected_submits(plan));
    let mut allowance: BTreeMap<SubmitKey, i64> = BTreeMap::new();
    for it in &items {
        *allowance.entry(it.submit_key.clone()).or_default() += it.ambiguous + it.task_retries;
        fig.ambiguous_submits += it.ambiguous as u64;
        fig.task_retries += it.task_retries as u64;
        fig.ambiguous_items += u64::from(it.ambiguous > 0);
    }
    for (k, n) in &extra {
        let allowed = allowance.get(k).copied().unwrap_or(0);
        assert!(
            *n as i64 <= allowed,
            "{n} extra submit(s) of {k:?}, but only {allowed} ambiguous or retried"
        );
    }
    fig.extra_submits = extra.values().sum();
    let status = env.status().await;
    let reported = status["ambiguous_items"].as_u64().expect("ambiguous_items");
    assert_eq!(reported, fig.ambiguous_items, "status reports them");
    assert!(
        fig.extra_submits <= fig.ambiguous_submits + fig.task_retries,
        "{} extra submits, {} ambiguous, {} retried",
        fig.extra_submits,
        fig.ambiguous_submits,
        fig.task_retries
    );

    let verify = env.plain(&["verify"]).await;
    assert_exit(&verify, 0);
    assert!(
        text(&verify.stderr).contains("0 missing, 0 corrupt"),
        "{}",
        text(&verify.stderr)
    );
    fig
}

/// Every file below `dir` with its SHA-256, to prove a folder was left untouched.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    files_below(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap_or_default();
            let sha = sha256_hex(&bytes);
            (f, sha)
        })
        .collect()
}

/// Runs `resume` until it exits 0 (each run either finishes or stops with exit 4, work
/// remaining); returns the exit codes seen. Panics on any other code or after `max_runs`.
pub async fn resume_to_completion(env: &Env, max_runs: usize) -> Vec<i32> {
    let mut codes = Vec::new();
    for _ in 0..max_runs {
        let out = env.run(&["resume"]).await;
        let code = out.status.code().unwrap_or(-1);
        codes.push(code);
        match code {
            0 => return codes,
            4 => continue,
            _ => assert_exit(&out, 0),
        }
    }
    panic!("not finished after {max_runs} runs: exit codes {codes:?}");
}

/// A tmpfs mounted for a test (root only), unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (for example `2m`) at `path`. When mounting is not permitted
    /// the test is skipped with a loud message, unless `RUNNER_REQUIRE_TMPFS=1`, which fails it.
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => text(&o.stderr),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("RUNNER_REQUIRE_TMPFS").as_deref() != Ok("1"),
                    "RUNNER_REQUIRE_TMPFS=1 but a tmpfs cannot be mounted: {why}"
                );
                eprintln!(
                    "\n*** SKIPPED: this test needs to mount a tmpfs (root): {why}\n*** set RUNNER_REQUIRE_TMPFS=1 to make that a failure\n"
                );
                None
            }
        }
    }

    /// `mount -o remount,OPTS`, retried while the kernel answers busy (a file open for writing
    /// keeps a file system from turning read-only), for at most `DEADLINE`.
    pub fn remount(&self, opts: &str) {
        let start = std::time::Instant::now();
        loop {
            let out = std::process::Command::new("mount")
                .args(["-o", &format!("remount,{opts}")])
                .arg(&self.path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < crate::pipeline::DEADLINE,
                "remount,{opts} failed: {}",
                text(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Archived images of `batch` in the store, each checked on disk against its recorded hash:
/// returns (relative path, sha256) of every one.
pub async fn archived_on_disk(env: &Env, batch: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in store_records(&env.db, batch).await {
        if r["state"] != "archived" {
            continue;
        }
        let rel = r["path"].as_str().expect("path").to_string();
        let sha = r["sha256"].as_str().expect("sha").to_string();
        let bytes = std::fs::read(env.archive.join(batch).join(&rel))
            .unwrap_or_else(|e| panic!("archived image {rel} is gone: {e}"));
        assert_eq!(sha256_hex(&bytes), sha, "archived image {rel} is intact");
        out.push((rel, sha));
    }
    out
}
