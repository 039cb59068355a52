//! Helpers for the simulator's integration tests: a small raw client that speaks the wire
//! protocol by hand (so the tests check the bytes, not a client's interpretation of them).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use runner::api;
use runner::sim::{SimConfig, SimHandle, spawn};
use serde_json::{Value, json};

/// How long any wait for the simulator may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// No limits, short generation: the base of most tests.
pub fn fast() -> SimConfig {
    SimConfig {
        gen_ms: (20, 40),
        ..SimConfig::unlimited()
    }
}

/// A plain HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build a reqwest client")
}

/// A raw API client with a token.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The access token.
    pub token: String,
}

impl Api {
    /// Fetches a token with the default credentials.
    pub async fn new(sim: &SimHandle) -> Api {
        let http = http();
        let base = sim.base_url();
        let (status, body) = token_request(&http, &base, "sim-ak", "sim-sk").await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        Api { base, http, token }
    }

    /// Starts a simulator with `config` and a client for it.
    pub async fn start(config: SimConfig) -> (SimHandle, Api) {
        let sim = spawn(config).await.expect("spawn the simulator");
        let api = Api::new(&sim).await;
        (sim, api)
    }

    /// POSTs `body` to an API `path` with the token, without a Content-Type (as the SDK does).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}?access_token={}", self.base, self.token))
            .body(body)
            .send()
            .await
            .expect("send")
    }

    /// POSTs JSON to `path` and parses the JSON answer, checking it is HTTP 200 JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let response = self.post_raw(path, body.to_string().into_bytes()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "JSON answers carry a JSON content type"
        );
        response.json().await.expect("JSON answer")
    }

    /// A submit; returns the whole answer.
    pub async fn submit(&self, body: Value) -> Value {
        self.post(api::SUBMIT_PATH, &body).await
    }

    /// A submit of `prompt` at 512x512 with `image_num`; returns the task id (panics on error).
    pub async fn submit_ok(&self, prompt: &str, image_num: u32) -> String {
        let answer = self
            .submit(json!({"prompt": prompt, "width": 512, "height": 512, "image_num": image_num}))
            .await;
        task_id_of(&answer)
    }

    /// A query of `task_id` (a JSON string or number); returns the whole answer.
    pub async fn query(&self, task_id: Value) -> Value {
        self.post(api::QUERY_PATH, &json!({ "task_id": task_id }))
            .await
    }

    /// Polls until the task is final (or answers an error); returns that answer.
    pub async fn wait_final(&self, task_id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = self.query(json!(task_id)).await;
            if answer.get("error_code").is_some() {
                return answer;
            }
            let status = answer["data"]["task_status"].as_str().unwrap_or("");
            if status == "SUCCESS" || status == "FAILED" {
                return answer;
            }
            assert!(Instant::now() < deadline, "task {task_id} never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// GETs a URL.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.expect("GET")
    }
}

/// The token endpoint with the given keys: (status, body).
pub async fn token_request(http: &reqwest::Client, base: &str, ak: &str, sk: &str) -> (u16, Value) {
    let response = http
        .post(format!(
            "{base}{}?grant_type=client_credentials&client_id={ak}&client_secret={sk}",
            api::TOKEN_PATH
        ))
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON token answer"))
}

/// The task id of a successful submit answer, checked against `primary_task_id`.
pub fn task_id_of(answer: &Value) -> String {
    let data = &answer["data"];
    let id = data["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("submit failed: {answer}"))
        .to_owned();
    assert_eq!(
        data["primary_task_id"].as_u64().map(|n| n.to_string()),
        Some(id.clone())
    );
    id
}

/// Every image URL of a final query answer, with its verdict.
pub fn images_of(answer: &Value) -> Vec<(String, String)> {
    answer["data"]["sub_task_result_list"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s["final_image_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|i| {
            (
                i["img_url"].as_str().unwrap_or_default().to_owned(),
                i["img_approve_conclusion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// The error code of an answer, if it is an error.
pub fn error_code(answer: &Value) -> Option<i64> {
    answer.get("error_code").and_then(Value::as_i64)
}

/// Decodes a PNG: (width, height, pixels).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
