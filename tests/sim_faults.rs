//! Injected faults: each kind, whether it strikes before or after processing, reproducibility by
//! seed, and the `/__sim/*` endpoints staying clear of them.

#[path = "common/sim.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, http, images_of};
use runner::api;
use runner::sim::{FaultKind, FaultKinds, SimConfig, SimHandle, spawn};
use serde_json::{Value, json};

/// What a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// HTTP 200 with a JSON body.
    Json(Value),
    /// HTTP 200 whose body is not JSON.
    Malformed,
    /// Another HTTP status.
    Status(u16),
    /// The connection broke before the answer was complete.
    Broken,
}

impl Outcome {
    fn class(&self) -> String {
        match self {
            Outcome::Json(v) if v.get("error_code").is_some() => {
                format!("error {}", v["error_code"])
            }
            Outcome::Json(_) => "ok".into(),
            Outcome::Malformed => "malformed".into(),
            Outcome::Status(s) => s.to_string(),
            Outcome::Broken => "broken".into(),
        }
    }
}

async fn send(request: reqwest::RequestBuilder) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match request.send().await {
        Err(_) => Outcome::Broken,
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Err(_) => Outcome::Broken,
                Ok(_) if status != 200 => Outcome::Status(status),
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(v) => Outcome::Json(v),
                    Err(_) => Outcome::Malformed,
                },
            }
        }
    };
    (outcome, started.elapsed())
}

/// A client that asks for a token until it gets one (retrying is what a client does).
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    log: Vec<String>,
}

impl Client {
    async fn connect(sim: &SimHandle) -> Client {
        let http = http();
        let base = sim.base_url();
        let mut log = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        let token = loop {
            let (outcome, _) = send(http.get(format!(
                "{base}{}?grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk",
                api::TOKEN_PATH
            )))
            .await;
            log.push(format!("token {}", outcome.class()));
            if let Outcome::Json(v) = outcome
                && let Some(t) = v["access_token"].as_str()
            {
                break t.to_owned();
            }
            assert!(Instant::now() < deadline, "no token: {log:?}");
        };
        Client {
            http,
            base,
            token,
            log,
        }
    }

    async fn post(&mut self, path: &str, body: Value) -> (Outcome, Duration) {
        let result = send(
            self.http
                .post(format!("{}{path}?access_token={}", self.base, self.token))
                .body(body.to_string()),
        )
        .await;
        self.log.push(format!("{path} {}", result.0.class()));
        result
    }

    async fn submit(&mut self, i: usize) -> (Outcome, Duration) {
        self.post(
            api::SUBMIT_PATH,
            json!({"prompt": format!("故障 {i}"), "width": 512, "height": 512}),
        )
        .await
    }
}

/// Delay of a slow fault in these tests.
const SLOW_MS: u64 = 300;

fn only(kind: FaultKind, rate: f64, seed: u64) -> SimConfig {
    SimConfig {
        fault_rate: rate,
        faults: FaultKinds::from_kinds([kind]),
        slow_ms: SLOW_MS,
        seed,
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    }
}

/// Runs `n` submits under faults of `kind` at rate 0.5; returns the sim, the outcomes and the
/// time each took.
async fn submits_under(kind: FaultKind, n: usize) -> (SimHandle, Client, Vec<(Outcome, Duration)>) {
    let sim = spawn(only(kind, 0.5, 3)).await.unwrap();
    let mut client = Client::connect(&sim).await;
    let mut outcomes = Vec::new();
    for i in 0..n {
        outcomes.push(client.submit(i).await);
    }
    (sim, client, outcomes)
}

#[tokio::test]
async fn http_500_and_502_strike_before_processing() {
    for (kind, status) in [(FaultKind::Http500, 500), (FaultKind::Http502, 502)] {
        let (sim, client, outcomes) = submits_under(kind, 20).await;
        let faulted = outcomes
            .iter()
            .filter(|(o, _)| *o == Outcome::Status(status))
            .count();
        let ok = outcomes.iter().filter(|(o, _)| o.class() == "ok").count();
        assert!(faulted > 0 && ok > 0, "{:?}", client.log);
        assert_eq!(faulted + ok, 20, "{:?}", client.log);
        // No task behind a 500 or 502: a retry is safe.
        assert_eq!(sim.tasks().len(), ok);
        let stats = sim.stats();
        let token_faults = client
            .log
            .iter()
            .filter(|l| l.starts_with("token") && l.ends_with(&status.to_string()))
            .count();
        assert_eq!(
            stats.fault_count(kind.as_str()),
            (faulted + token_faults) as u64
        );
        assert_eq!(stats.status_count(status), (faulted + token_faults) as u64);
    }
}

#[tokio::test]
async fn dropped_connections_strike_after_processing_leaving_ambiguous_submits() {
    let (sim, client, outcomes) = submits_under(FaultKind::Drop, 20).await;
    let broken = outcomes
        .iter()
        .filter(|(o, _)| *o == Outcome::Broken)
        .count();
    let ok = outcomes.iter().filter(|(o, _)| o.class() == "ok").count();
    assert!(broken > 0 && ok > 0, "{:?}", client.log);
    assert_eq!(broken + ok, 20);
    // Every submit created its task, also those whose answer was lost.
    assert_eq!(sim.tasks().len(), 20);
    let stats = sim.stats();
    assert_eq!(stats.submits, 20);
    let token_drops = client.log.iter().filter(|l| *l == "token broken").count();
    assert_eq!(stats.fault_count("drop"), (broken + token_drops) as u64);
    // Lost answers are not counted as answered statuses.
    assert_eq!(stats.status_count(200), (ok + 1) as u64);
}

#[tokio::test]
async fn malformed_json_strikes_after_processing_with_status_200() {
    let (sim, client, outcomes) = submits_under(FaultKind::Json, 20).await;
    let malformed = outcomes
        .iter()
        .filter(|(o, _)| *o == Outcome::Malformed)
        .count();
    let ok = outcomes.iter().filter(|(o, _)| o.class() == "ok").count();
    assert!(malformed > 0 && ok > 0, "{:?}", client.log);
    assert_eq!(malformed + ok, 20);
    assert_eq!(sim.tasks().len(), 20);
    let token_faults = client
        .log
        .iter()
        .filter(|l| *l == "token malformed")
        .count();
    assert_eq!(
        sim.stats().fault_count("json"),
        (malformed + token_faults) as u64
    );
}

#[tokio::test]
async fn slow_answers_arrive_late_but_whole() {
    let (sim, client, outcomes) = submits_under(FaultKind::Slow, 12).await;
    assert!(
        outcomes.iter().all(|(o, _)| o.class() == "ok"),
        "{:?}",
        client.log
    );
    let slow = outcomes
        .iter()
        .filter(|(_, t)| *t >= Duration::from_millis(SLOW_MS))
        .count() as u64;
    assert!(slow > 0, "no slow answer among 12");
    assert!(slow < 12, "every answer slow at rate 0.5");
    // Each slow fault delayed one answer (the token's or a submit's) by at least slow_ms.
    let faults = sim.stats().fault_count("slow");
    assert!(
        faults == slow || faults == slow + 1,
        "{faults} faults, {slow} slow submits"
    );
    assert_eq!(sim.tasks().len(), 12);
}

#[tokio::test]
async fn image_downloads_are_truncated_both_ways() {
    let sim = spawn(only(FaultKind::Truncate, 1.0, 9)).await.unwrap();
    // Truncation applies to images only, so the API answers normally.
    let mut client = Client::connect(&sim).await;
    let (submit, _) = client.submit(0).await;
    let Outcome::Json(submit) = submit else {
        panic!("{submit:?}")
    };
    let id = submit["data"]["task_id"].as_str().unwrap().to_owned();
    let (answer, _) = client.post(api::QUERY_PATH, json!({"task_id": id})).await;
    let Outcome::Json(answer) = answer else {
        panic!("{answer:?}")
    };
    let (url, _) = images_of(&answer).remove(0);
    let full = runner::sim::png::render_png("故障 0", 512, 512, 0).unwrap();
    let (mut short_with_length, mut aborted) = (0, 0);
    for _ in 0..20 {
        let response = client.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let declared = response.content_length();
        match response.bytes().await {
            Ok(bytes) => {
                assert!(bytes.len() < full.len());
                assert_eq!(declared, Some(bytes.len() as u64));
                assert_eq!(&bytes[..], &full[..bytes.len()]);
                short_with_length += 1;
            }
            Err(_) => {
                assert_eq!(declared, Some(full.len() as u64));
                aborted += 1;
            }
        }
    }
    assert!(
        short_with_length > 0 && aborted > 0,
        "{short_with_length} short, {aborted} aborted"
    );
    let stats = sim.stats();
    assert_eq!(stats.fault_count("truncate"), 20);
    assert_eq!(stats.downloads, 0, "a truncated image is no download");
    assert_eq!(stats.download_requests, 20);
}

/// Outcome classes of a fixed request sequence under all fault kinds at rate 0.4.
async fn fault_sequence(seed: u64) -> Vec<String> {
    let sim = spawn(SimConfig {
        fault_rate: 0.4,
        slow_ms: 5,
        seed,
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await
    .unwrap();
    let mut client = Client::connect(&sim).await;
    for i in 0..30 {
        client.submit(i).await;
    }
    let first = sim.tasks()[0].task_id.clone();
    for _ in 0..20 {
        client
            .post(api::QUERY_PATH, json!({"task_id": first}))
            .await;
    }
    for _ in 0..20 {
        // A download of a freshly signed URL each time the query gets through.
        if let (Outcome::Json(answer), _) = client
            .post(api::QUERY_PATH, json!({"task_id": first}))
            .await
            && let Some((url, _)) = images_of(&answer).first()
        {
            let class = match send(client.http.get(url)).await.0 {
                Outcome::Malformed => "png".to_owned(),
                other => other.class(),
            };
            client.log.push(format!("image {class}"));
        }
    }
    client.log
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let a = fault_sequence(21).await;
    let b = fault_sequence(21).await;
    assert_eq!(a, b);
    let kinds: std::collections::BTreeSet<&str> =
        a.iter().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert!(
        kinds.contains("ok")
            && kinds.contains("500")
            && kinds.contains("502")
            && kinds.contains("broken")
            && kinds.contains("malformed"),
        "{kinds:?}"
    );
    let c = fault_sequence(22).await;
    assert_ne!(a, c);
}

#[tokio::test]
async fn sim_endpoints_are_never_faulted() {
    let sim = spawn(SimConfig {
        fault_rate: 1.0,
        ..SimConfig::unlimited()
    })
    .await
    .unwrap();
    let http = http();
    for path in ["/__sim/stats", "/__sim/tasks"] {
        for _ in 0..10 {
            let response = http
                .get(format!("{}{path}", sim.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let _: Value = response.json().await.unwrap();
        }
    }
    assert!(sim.stats().faults.is_empty());
}
