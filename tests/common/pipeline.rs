//! Helpers for the pipeline's integration tests: a temp dir with a store and an archive, a
//! simulator on port 0, the `runner` binary run against it, and checks of the archive.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use runner::sim::{SimConfig, SimHandle, Stats, spawn};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Upper bound for any wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A simulator with quick generations and generous limits.
pub fn quick_sim() -> SimConfig {
    SimConfig {
        gen_ms: (50, 250),
        submit_qps: Some(50.0),
        query_qps: Some(100.0),
        concurrency: Some(8),
        seed: 11,
        ..SimConfig::default()
    }
}

/// A test workspace: temp dir, store, archive, simulator.
pub struct Env {
    pub dir: TempDir,
    pub db: PathBuf,
    pub archive: PathBuf,
    pub sim: SimHandle,
    /// Limit flags passed to every run.
    pub limits: Vec<String>,
}

impl Env {
    /// A workspace with a fresh simulator.
    pub async fn new(config: SimConfig) -> Env {
        let sim = spawn(config).await.expect("spawn the simulator");
        let dir = tempfile::tempdir().expect("temp dir");
        Env {
            db: dir.path().join("runner.db"),
            archive: dir.path().join("archive"),
            dir,
            sim,
            limits: vec![
                "--submit-qps=40".into(),
                "--query-qps=80".into(),
                "--concurrency=8".into(),
            ],
        }
    }

    /// Writes a file into the workspace.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// The `runner` binary with this workspace's store, archive, simulator and credentials.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("RUNNER_DB", &self.db)
            .env("RUNNER_ARCHIVE", &self.archive)
            .env("RUNNER_BASE_URL", self.sim.base_url())
            .env("EB_AK", "sim-ak")
            .env("EB_SK", "sim-sk")
            .env_remove("EB_ACCESS_TOKEN")
            .env_remove("RUNNER_SUBMIT_QPS")
            .env_remove("RUNNER_QUERY_QPS")
            .env_remove("RUNNER_CONCURRENCY")
            .env(
                "RUST_LOG",
                std::env::var("RUNNER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `submit` or `resume` (with the limit flags) to the end.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.limits.iter().map(String::as_str));
        finish(self.cmd(&all).spawn().expect("start runner")).await
    }

    /// Starts `submit` or `resume` in the background.
    pub fn start(&self, args: &[&str]) -> Child {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.limits.iter().map(String::as_str));
        self.cmd(&all).spawn().expect("start runner")
    }

    /// Runs a command that needs no limits (status, verify, retry).
    pub async fn plain(&self, args: &[&str]) -> Output {
        finish(self.cmd(args).spawn().expect("start runner")).await
    }

    /// `runner status --json`.
    pub async fn status(&self) -> Value {
        let out = self.plain(&["status", "--json"]).await;
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The simulator's counters.
    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// Polls until `cond` holds for the simulator's counters (bounded by [`DEADLINE`]).
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Stats) -> bool) {
        let start = tokio::time::Instant::now();
        while !cond(&self.stats()) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Waits for a runner process; past [`DEADLINE`] it is killed and the test fails with what the
/// process wrote so far (so a hang shows where it hung).
pub async fn finish(mut child: Child) -> Output {
    use tokio::io::AsyncReadExt;
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let waited = tokio::time::timeout(DEADLINE, async {
        let (a, b, status) = tokio::join!(
            out.read_to_end(&mut out_buf),
            err.read_to_end(&mut err_buf),
            child.wait()
        );
        a.and(b).and(status)
    })
    .await;
    match waited {
        Ok(status) => Output {
            status: status.expect("runner ran"),
            stdout: out_buf,
            stderr: err_buf,
        },
        Err(_) => {
            let _ = child.start_kill();
            panic!(
                "runner did not finish within {DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
                text(&out_buf),
                text(&err_buf)
            );
        }
    }
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The exit code, with the output in the message when it is not the expected one.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Kills a child with SIGKILL and reaps it.
pub async fn kill9(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read image")))
}

/// Every file below `dir`, relative, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// What the archive of one batch holds, checked against itself: every manifest line with a
/// path names a PNG on disk of the stated size whose hash matches the line and the sidecar; no
/// temp files; no image on disk without a manifest line. Returns the manifest lines.
pub fn check_archive(archive: &Path, batch: &str) -> Vec<Value> {
    let dir = archive.join(batch);
    let manifest = std::fs::read_to_string(dir.join("manifest.jsonl")).expect("manifest");
    let lines: Vec<Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line is JSON"))
        .collect();
    let mut on_disk: Vec<String> = files_below(&dir)
        .into_iter()
        .filter(|f| f.ends_with(".png"))
        .collect();
    on_disk.sort();
    let mut listed = Vec::new();
    let mut seen = BTreeMap::new();
    for l in &lines {
        let key = (
            l["item_key"].as_str().unwrap_or_default().to_string(),
            l["index"].as_u64().unwrap_or(0),
        );
        assert!(
            seen.insert(key, ()).is_none(),
            "duplicate manifest line {l}"
        );
        for field in [
            "sha256", "verdict", "prompt", "width", "height", "item_key", "task_id",
        ] {
            assert!(l.get(field).is_some(), "manifest line without {field}: {l}");
        }
        let Some(rel) = l["path"].as_str() else {
            assert_ne!(l["verdict"], "pass", "a passed image must be kept: {l}");
            continue;
        };
        listed.push(rel.to_string());
        let p = dir.join(rel);
        let sha = sha256_file(&p);
        assert_eq!(
            l["sha256"].as_str(),
            Some(sha.as_str()),
            "manifest hash of {rel}"
        );
        let sidecar: Value =
            serde_json::from_slice(&std::fs::read(p.with_extension("json")).expect("sidecar"))
                .expect("sidecar JSON");
        assert_eq!(
            sidecar["sha256"].as_str(),
            Some(sha.as_str()),
            "sidecar hash of {rel}"
        );
        assert_eq!(sidecar["prompt"], l["prompt"]);
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&p).expect("open"),
        ));
        let mut reader = decoder.read_info().expect("PNG header");
        let (w, h) = (reader.info().width, reader.info().height);
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).expect("PNG decodes");
        assert_eq!(Some(u64::from(w)), l["width"].as_u64(), "{rel} width");
        assert_eq!(Some(u64::from(h)), l["height"].as_u64(), "{rel} height");
    }
    listed.sort();
    assert_eq!(listed, on_disk, "images on disk = images in the manifest");
    let temp: Vec<String> = files_below(&dir)
        .into_iter()
        .filter(|f| f.starts_with(".tmp") || f.contains(".part"))
        .collect();
    assert!(temp.is_empty(), "temp files left: {temp:?}");
    lines
}

/// Simulator submits per distinct item that were made more than once.
pub fn duplicate_submits(stats: &Stats) -> u64 {
    stats
        .submits_per_item
        .iter()
        .filter(|i| i.count > 1)
        .map(|i| i.count - 1)
        .sum()
}
