//! Runs of the scheduler in this process, on tokio's paused clock (paused once the store's
//! connections are open), against the simulator's own
//! routes (no socket): generation times, rate windows and backoffs pass in virtual time, so a run
//! of minutes takes milliseconds. Each test has its own store, archive and seeded simulator.

use std::collections::BTreeMap;

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use super::*;
use crate::api::{Size, SubmitData, TokenAnswer, Version};
use crate::archive::LocalArchive;
use crate::client::{Downloaded, ImageBuf, check_download_status, check_task_id, read_answer};
use crate::jobfile::{Item, Origin};
use crate::sim::{InProcess, SimConfig, Stats};
use crate::store::{ItemState, Queries, SqliteStore};

/// The API over the simulator's router, as [`Client`](crate::client::Client) speaks it over HTTP.
#[derive(Debug)]
struct SimApi {
    sim: InProcess,
    token: String,
}

impl SimApi {
    async fn new(sim: InProcess) -> SimApi {
        let uri = format!(
            "{}?grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk",
            crate::api::TOKEN_PATH
        );
        let (status, body) = call(&sim, "POST", &uri, Bytes::new()).await;
        assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
        let answer: TokenAnswer = serde_json::from_slice(&body).expect("token answer");
        SimApi {
            sim,
            token: answer.access_token,
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let uri = format!("{path}?access_token={}", self.token);
        let body = Bytes::from(serde_json::to_vec(body).expect("request JSON"));
        let (status, bytes) = call(&self.sim, "POST", &uri, body).await;
        read_answer(what, status, &bytes)
    }
}

/// One request through the router; a body cut by a fault reads as an empty one (which no answer
/// parses: malformed, as a dropped connection is to the HTTP client).
async fn call(sim: &InProcess, method: &str, uri: &str, body: Bytes) -> (u16, Bytes) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("host", "127.0.0.1:9")
        .body(Body::from(body))
        .expect("request");
    let resp = sim.router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    (status, bytes)
}

impl Api for SimApi {
    fn submit<'a>(
        &'a self,
        req: &'a SubmitRequest,
    ) -> BoxFuture<'a, Result<SubmitData, ClientError>> {
        Box::pin(
            async move { check_task_id(self.post("submit", crate::api::SUBMIT_PATH, req).await?) },
        )
    }

    fn query<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<QueryData, ClientError>> {
        Box::pin(async move {
            let req = crate::api::QueryRequest {
                task_id: task_id.to_string(),
            };
            self.post("query", crate::api::QUERY_PATH, &req).await
        })
    }

    fn download<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Downloaded, ClientError>> {
        Box::pin(async move {
            let at = url.find("/img/").ok_or(ClientError::BadUrl)?;
            let (status, bytes) = call(&self.sim, "GET", &url[at..], Bytes::new()).await;
            check_download_status(status)?;
            let mut body = ImageBuf::with_capacity(bytes.len());
            body.extend_from_slice(&bytes);
            Ok(Downloaded {
                sha256: hex::encode(Sha256::digest(&bytes)),
                body,
            })
        })
    }
}

/// Keeps the paused clock from leaping while a query waits on SQLite's thread, which tokio
/// cannot see: with nothing runnable the clock jumps to the next timer, and a run's next timer
/// may be an hour or a quota day away. A timer every 5 virtual milliseconds, each costing 20 µs
/// of real time, caps the clock at 250 times real time: the store then looks like a disk that
/// much slower than this one, and nothing else changes.
async fn clock_rate_limit() {
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A run's workspace: store and archive in a temp dir, the simulator, the API over it.
struct Bench {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    archive: Arc<LocalArchive>,
    sim: InProcess,
    api: Arc<SimApi>,
    /// The clock's rate limit, for as long as the store is in use.
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// A simulator of the real account's limits (1 submit/s, 2 queries/s, 2 images), seeded, with
/// generations of 1 to 3 s.
fn real_sim() -> SimConfig {
    SimConfig {
        gen_ms: (1000, 3000),
        seed: 5,
        ..SimConfig::default()
    }
}

fn limits() -> Limits {
    Limits {
        downloads: 2,
        ..Limits::default()
    }
}

impl Bench {
    async fn new(config: SimConfig, items: usize, image_num: u8) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("s.db"))
                .await
                .expect("store"),
        );
        let items: Vec<Item> = (0..items).map(|n| item(n, image_num)).collect();
        store
            .load_items("b", ArchivePolicy::default(), "t.yaml", &items)
            .await
            .expect("load");
        store.open_all_connections().await;
        let sim = InProcess::new(config);
        let api = Arc::new(SimApi::new(sim.clone()).await);
        // From here on time is virtual: it stands still while anything can run, and jumps to
        // the next timer when nothing can.
        tokio::time::pause();
        Bench {
            ticker: tokio::spawn(clock_rate_limit()),
            archive: Arc::new(LocalArchive::new(dir.path().join("archive"))),
            _dir: dir,
            store,
            sim,
            api,
        }
    }

    fn opts(&self, limits: Limits) -> RunOptions {
        RunOptions {
            batches: Vec::new(),
            limits,
            deadline: None,
            assumed_url_ttl: Duration::from_secs(1800),
        }
    }

    async fn run(&self, opts: RunOptions, halt: CancellationToken) -> RunSummary {
        run(
            self.store.clone(),
            self.api.clone(),
            self.archive.clone(),
            opts,
            halt,
        )
        .await
        .expect("run")
    }

    async fn count(&self, state: ItemState) -> i64 {
        self.store.count_items(&[], state).await.expect("count")
    }

    fn stats(&self) -> Stats {
        self.sim.stats()
    }
}

fn item(n: usize, image_num: u8) -> Item {
    Item {
        key: format!("{:032x}", n as u128 + 0x5ced_0000),
        batch: "b".into(),
        prompt: format!("第{n}号测试图，一只小猫"),
        size: Size::new(512, 512),
        version: Version::V2,
        image_num,
        variant: 0,
        tags: BTreeMap::new(),
        vars: BTreeMap::new(),
        template: None,
        line: n as u32,
        origin: Origin::JobFile,
    }
}

fn errors(stats: &Stats, code: i64) -> u64 {
    stats.errors.get(&code.to_string()).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_batch_runs_to_done_within_the_accounts_limits() {
    let b = Bench::new(real_sim(), 6, 1).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::Finished);
    assert_eq!((s.submitted, s.succeeded, s.archived), (6, 6, 6));
    assert_eq!(b.count(ItemState::Done).await, 6);
    let st = b.stats();
    assert_eq!(st.submits, 6, "one submit per item");
    assert!(st.max_in_generation <= 2, "{}", st.max_in_generation);
    assert!(st.max_submit_rate <= 1, "{}", st.max_submit_rate);
    assert_eq!(errors(&st, 15) + errors(&st, 18), 0, "{:?}", st.errors);
}

#[tokio::test]
async fn error_15_shrinks_the_slots_and_costs_no_attempt() {
    // The account really has one slot; the runner is told three.
    let config = SimConfig {
        concurrency: Some(1),
        ..real_sim()
    };
    let b = Bench::new(config, 5, 1).await;
    let s = b
        .run(
            b.opts(Limits {
                concurrency: 3,
                max_attempts: 2,
                ..limits()
            }),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(s.stop, StopReason::Finished);
    assert_eq!(b.count(ItemState::Done).await, 5, "{s:?}");
    let st = b.stats();
    assert!(errors(&st, 15) >= 1, "the account refused: {:?}", st.errors);
    // Once refused, the runner holds to the slots it has until a task finishes, then tries the
    // configured number again: a refusal or two per finished task, never a stream of them.
    assert!(errors(&st, 15) <= 2 * 5, "{:?}", st.errors);
    assert_eq!(st.max_in_generation, 1);
}

#[tokio::test]
async fn rate_refusals_back_off_and_never_count_as_attempts() {
    // The runner is told 5 submits/s; the account takes 1.
    let b = Bench::new(real_sim(), 6, 1).await;
    let s = b
        .run(
            b.opts(Limits {
                submit_qps: 5.0,
                concurrency: 8,
                max_attempts: 1,
                ..limits()
            }),
            CancellationToken::new(),
        )
        .await;
    let st = b.stats();
    assert!(errors(&st, 18) >= 1, "{:?}", st.errors);
    // With one attempt allowed, a counted refusal would have failed an item.
    assert_eq!(b.count(ItemState::Failed).await, 0, "{s:?}");
    assert_eq!(b.count(ItemState::Done).await, 6);
    // Backing off: refusals stay a fraction of the submits, not a retry storm.
    assert!(errors(&st, 18) < st.submit_requests, "{st:?}");
}

#[tokio::test]
async fn the_daily_quota_parks_submits_and_the_run_stops_with_work_pending() {
    let config = SimConfig {
        daily_quota: Some(2),
        ..real_sim()
    };
    let b = Bench::new(config, 5, 1).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::QuotaParked, "{s:?}");
    assert_eq!(s.archived, 2);
    assert_eq!((s.pending, s.in_flight), (3, 0));
    assert_eq!(b.count(ItemState::Failed).await, 0);
    assert_eq!(b.stats().submits, 2);
}

#[tokio::test]
async fn unanswered_submits_are_ambiguous_and_submitted_again() {
    // A fifth of the answers are cut off or garbled on the way.
    let config = SimConfig {
        fault_rate: 0.2,
        faults: "drop,json,truncate".parse().expect("fault kinds"),
        ..real_sim()
    };
    let b = Bench::new(config, 6, 1).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert!(!s.ambiguous.is_empty(), "{s:?}");
    assert_eq!(b.count(ItemState::Done).await, 6, "{s:?}");
    let st = b.stats();
    // At-least-once in the ambiguous window only: extra tasks exist only for ambiguous items.
    let extra: u64 = st
        .submits_per_item
        .iter()
        .map(|i| i.count.saturating_sub(1))
        .sum();
    assert!(extra <= s.ambiguous.len() as u64, "{extra} extra, {s:?}");
}

#[tokio::test]
async fn a_censored_prompt_fails_its_item_and_the_others_finish() {
    let config = SimConfig {
        banned: vec!["第3号".into()],
        ..real_sim()
    };
    let b = Bench::new(config, 5, 1).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::Finished);
    assert_eq!((s.failed, s.failed_total), (1, 1));
    assert_eq!(b.count(ItemState::Done).await, 4);
    assert_eq!(
        b.stats().submits,
        5,
        "a censored prompt is never submitted again"
    );
}

#[tokio::test]
async fn model_failures_are_submitted_again_within_the_attempt_budget() {
    let config = SimConfig {
        fail_rate: 0.4,
        ..real_sim()
    };
    let b = Bench::new(config, 4, 1).await;
    let opts = b.opts(Limits {
        max_attempts: 3,
        ..limits()
    });
    let s = b.run(opts, CancellationToken::new()).await;
    let st = b.stats();
    assert!(st.tasks_failed >= 1, "{st:?}");
    assert!(st.submits > 4, "failed tasks were submitted again: {st:?}");
    assert!(
        st.submits <= 4 * 3,
        "within the budget of 3 attempts: {st:?}"
    );
    assert_eq!(
        b.count(ItemState::Done).await + b.count(ItemState::Failed).await,
        4,
        "{s:?}"
    );
    assert_eq!(s.pending + s.in_flight, 0);
}

#[tokio::test]
async fn a_run_whose_images_are_all_skipped_ends_when_its_last_task_does() {
    // Every image is blocked: recorded skipped, nothing to download; the run must still end.
    let config = SimConfig {
        block_rate: 1.0,
        ..real_sim()
    };
    let b = Bench::new(config, 4, 2).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::Finished);
    assert_eq!((s.succeeded, s.archived), (4, 0));
    assert_eq!(b.count(ItemState::Done).await, 4);
    assert_eq!(b.stats().downloads, 0);
}

#[tokio::test]
async fn an_account_refusal_stops_the_run_as_fatal() {
    // 19: the account's total quota is gone; nothing more can be submitted.
    let config = SimConfig {
        burst_rate: 1.0,
        burst_codes: vec![19],
        ..real_sim()
    };
    let b = Bench::new(config, 4, 1).await;
    let s = b.run(b.opts(limits()), CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::Fatal, "{s:?}");
    assert!(
        s.fatal.as_deref().unwrap_or_default().contains("19"),
        "{s:?}"
    );
    // The refused submit is pending again, not failed: another account could take it.
    assert_eq!(b.count(ItemState::Failed).await, 0);
    assert_eq!(b.count(ItemState::Pending).await, 4);
}

#[tokio::test]
async fn the_time_box_stops_submits_and_drains_what_runs() {
    let b = Bench::new(real_sim(), 20, 1).await;
    let mut opts = b.opts(limits());
    opts.deadline = Some(Instant::now() + Duration::from_secs(5));
    let s = b.run(opts, CancellationToken::new()).await;
    assert_eq!(s.stop, StopReason::Deadline);
    assert!(s.submitted >= 1 && s.pending > 0, "{s:?}");
    // Drained: every task submitted was seen to its end and archived.
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.archived, s.submitted);
}

#[tokio::test]
async fn an_interrupt_during_submits_always_ends_interrupted_with_work_pending() {
    // Ctrl-C at several moments of the submits: the run always says interrupted (it once said
    // "finished" when the halt raced the idle check) and leaves the rest pending.
    for at_ms in [1, 700, 1500, 2300, 3100, 4200] {
        let b = Bench::new(real_sim(), 12, 1).await;
        let halt = CancellationToken::new();
        let h = halt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at_ms)).await;
            h.cancel();
        });
        let s = b.run(b.opts(limits()), halt).await;
        assert_eq!(s.stop, StopReason::Interrupted, "halt at {at_ms} ms: {s:?}");
        assert!(s.pending > 0, "halt at {at_ms} ms: {s:?}");
        assert_eq!(
            b.count(ItemState::Submitting).await,
            0,
            "no intent left uncommitted"
        );
        tokio::time::resume();
    }
}
