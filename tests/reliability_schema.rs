//! Answers that break the API's schema, from a tiny server of our own: wrong types, missing
//! fields, huge numbers, nested nulls, cut or non-JSON bodies. The client answers each with
//! `ClientError::Malformed` and a message that says which request and what was wrong; the runner
//! retries, reports and finishes, and never panics. Image URLs that are not http(s) (or lead to
//! an oversized body) are refused, the images recorded as lost with the reason.

#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/reliability.rs"]
mod reliability;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pipeline::{DEADLINE, Env, assert_exit, check_archive, quick_sim, text};
use runner::api::SubmitRequest;
use runner::client::{Client, ClientConfig, ClientError, Credentials, Secret};
use serde_json::{Value, json};

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// The client against canned answers

/// The next answer of the canned server: status and body.
#[derive(Clone, Default)]
struct Canned(Arc<Mutex<(u16, Vec<u8>)>>);

impl Canned {
    fn set(&self, status: u16, body: impl Into<Vec<u8>>) {
        *self.0.lock().unwrap() = (status, body.into());
    }
}

async fn canned(State(c): State<Canned>) -> Response {
    let (status, body) = c.0.lock().unwrap().clone();
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn request() -> SubmitRequest {
    SubmitRequest {
        prompt: "一只猫".into(),
        width: 512,
        height: 512,
        version: Some("v2".into()),
        image_num: Some(1),
        task_time_out: None,
        text_check: None,
    }
}

/// Bodies that break the submit answer's schema.
fn bad_submit_answers() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "",
        "not json",
        "<html><body>502 Bad Gateway</body></html>",
        "[]",
        "null",
        "42",
        "\"data\"",
        "{}",
        "{\"data\": null}",
        "{\"data\": {}}",
        "{\"data\": []}",
        "{\"data\": \"task\"}",
        "{\"data\": {\"task_id\": null}}",
        "{\"data\": {\"task_id\": {}}}",
        "{\"data\": {\"task_id\": [1]}}",
        "{\"data\": {\"task_id\": true}}",
        "{\"data\": {\"task_id\": 1.5}}",
        "{\"data\": {\"task_id\": 1e400}}",
        "{\"data\": {\"task_id\": 18446744073709551616}}",
        "{\"data\": {\"task_id\": \"\"}}",
        "{\"data\": {\"task_id\": \"0\"}}",
        "{\"data\": {\"task_id\": \"1\", \"primary_task_id\": -1}}",
        "{\"data\": {\"task_id\": \"1\", \"primary_task_id\": \"x\"}}",
        "{\"error_code\": \"17\"}",
        "{\"error_code\": 1e999}",
        "{\"error_code\": 99999999999999999999999}",
        "{\"error_code\": null}",
        "{\"error_code\": 0}",
        "{\"log_id\": {}, \"data\": {\"task_id\": \"1\"}}",
        "{\"data\": {\"task_id\": \"1\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(vec![0xff, 0xfe, 0x00, 0x7b]);
    // Nesting deeper than any parser should follow.
    v.push(format!("{}{}", "{\"data\":".repeat(100_000), "}".repeat(100_000)).into_bytes());
    v.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    v
}

/// Query answers that break the schema (each inside a well-formed envelope, or not).
fn bad_query_answers() -> Vec<Vec<u8>> {
    let data = |d: &str| format!("{{\"log_id\": 1, \"data\": {d}}}");
    let sub = |s: &str| {
        data(&format!(
            "{{\"task_status\": \"SUCCESS\", \"task_progress\": 1, \"sub_task_result_list\": [{s}]}}"
        ))
    };
    let image = |i: &str| {
        sub(&format!(
            "{{\"sub_task_status\": \"SUCCESS\", \"sub_task_progress\": 1, \"sub_task_error_code\": 0, \"final_image_list\": [{i}]}}"
        ))
    };
    vec![
        data("null"),
        data("{}"),
        data("[]"),
        data("{\"task_status\": null}"),
        data("{\"task_status\": \"DONE\"}"),
        data("{\"task_status\": 5}"),
        data("{\"task_status\": \"success\"}"),
        data("{\"task_status\": \"RUNNING\", \"task_progress\": \"abc\"}"),
        data("{\"task_status\": \"RUNNING\", \"task_progress\": {}}"),
        data("{\"task_status\": \"RUNNING\", \"task_progress\": 1e999}"),
        data("{\"task_status\": \"SUCCESS\", \"sub_task_result_list\": null}"),
        data("{\"task_status\": \"SUCCESS\", \"sub_task_result_list\": {}}"),
        data("{\"task_status\": \"SUCCESS\", \"sub_task_result_list\": \"x\"}"),
        sub("null"),
        sub("{}"),
        sub("{\"sub_task_status\": \"SUCCESS\", \"final_image_list\": null}"),
        sub("{\"sub_task_status\": \"FAILED\", \"sub_task_error_code\": \"x\"}"),
        sub("{\"sub_task_status\": \"FAILED\", \"sub_task_error_code\": 1e30}"),
        image("null"),
        image("{}"),
        image(
            "{\"img_url\": 5, \"width\": 512, \"height\": 512, \"img_approve_conclusion\": \"pass\"}",
        ),
        image(
            "{\"img_url\": \"http://x/a.png\", \"width\": -1, \"height\": 512, \"img_approve_conclusion\": \"pass\"}",
        ),
        image(
            "{\"img_url\": \"http://x/a.png\", \"width\": 1e10, \"height\": 512, \"img_approve_conclusion\": \"pass\"}",
        ),
        image(
            "{\"img_url\": \"http://x/a.png\", \"width\": 512, \"height\": \"512\", \"img_approve_conclusion\": \"pass\"}",
        ),
        image(
            "{\"img_url\": \"http://x/a.png\", \"width\": 512, \"height\": 512, \"img_approve_conclusion\": \"maybe\"}",
        ),
        image(
            "{\"img_url\": \"http://x/a.png\", \"width\": 512, \"height\": 512, \"img_approve_conclusion\": null}",
        ),
        image("{\"img_url\": null, \"width\": null, \"height\": null}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_the_schema_are_malformed_errors_with_a_clear_message() {
    let c = Canned::default();
    let base = serve(
        Router::new()
            .route(runner::api::SUBMIT_PATH, post(canned))
            .route(runner::api::QUERY_PATH, post(canned))
            .with_state(c.clone()),
    )
    .await;
    let client = Client::new(
        ClientConfig::new(&base),
        Credentials::Token(Secret::new("24.test-token")),
        None,
    )
    .unwrap();

    for body in bad_submit_answers() {
        c.set(200, body.clone());
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let e = client.submit(&request()).await.unwrap_err();
        assert!(
            matches!(e, ClientError::Malformed { what: "submit", .. }),
            "{shown}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("malformed answer from submit: ") && msg.len() > 30,
            "{shown}: {msg}"
        );
        assert!(
            e.is_ambiguous(),
            "a garbled submit answer may hide a created task"
        );
    }
    for body in bad_query_answers() {
        c.set(200, body.clone());
        let shown = String::from_utf8_lossy(&body).into_owned();
        let e = client.query("1700000000000000001").await.unwrap_err();
        assert!(
            matches!(e, ClientError::Malformed { what: "query", .. }),
            "{shown}: {e:?}"
        );
        assert!(
            e.to_string().starts_with("malformed answer from query: "),
            "{e}"
        );
    }
    // Non-success statuses without an API error: a status error, not a parse of the page.
    for status in [301, 404, 500, 502, 503] {
        c.set(status, b"<html>oops</html>".to_vec());
        let e = client.query("1").await.unwrap_err();
        assert!(
            matches!(e, ClientError::Status { status: s, what: "query" } if s == status),
            "{status}: {e:?}"
        );
    }
    // Strange but well-typed values are accepted, and clamped where they are used.
    for progress in ["\"NaN\"", "\"inf\"", "-5", "7", "\"0.5\"", "null"] {
        c.set(
            200,
            format!(
                "{{\"data\": {{\"task_status\": \"RUNNING\", \"task_progress\": {progress}}}}}"
            ),
        );
        client.query("1").await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The runner against a fake API

/// A fake API: tokens, submits and queries, the first answers of each task garbled as told, and
/// image URLs chosen by the prompt.
#[derive(Default)]
struct Fake {
    base: Mutex<String>,
    /// Garbled query answers: task number k meets `garbage[k * per_task ..][.. per_task]`
    /// before its real answer (wrapping around the list).
    garbage: Vec<Vec<u8>>,
    /// Garbled answers per task.
    per_task: usize,
    /// Every submit's first answer is garbled after the task was created (an ambiguous submit).
    garble_first_submit: bool,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    next_id: u64,
    /// id → (prompt, width, height, image_num, queries so far, task number).
    tasks: HashMap<u64, (String, u32, u32, u32, usize, usize)>,
    submits_by_prompt: HashMap<String, u32>,
}

impl Fake {
    fn url_for(&self, prompt: &str, id: u64, i: u32) -> String {
        let base = self.base.lock().unwrap().clone();
        if prompt.contains("本地文件") {
            "file:///etc/passwd".into()
        } else if prompt.contains("文件传输") {
            "ftp://127.0.0.1/x.png".into()
        } else if prompt.contains("跳转") {
            format!("{base}/to-file")
        } else if prompt.contains("超大") {
            format!("{base}/huge.png")
        } else {
            format!("{base}/img/{id}/{i}.png")
        }
    }
}

type Shared = State<Arc<Fake>>;

async fn fake_token() -> Response {
    Json(json!({"access_token": "24.fake-token", "expires_in": 2_592_000})).into_response()
}

use axum::Json;

async fn fake_submit(State(f): Shared, body: Bytes) -> Response {
    let req: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return Json(json!({"error_code": 282003, "error_msg": "bad"})).into_response(),
    };
    let (id, first) = {
        let mut st = f.state.lock().unwrap();
        st.next_id += 1;
        let number = st.next_id as usize - 1;
        let id = 1_700_000_000_000_000_000 + st.next_id;
        st.tasks.insert(
            id,
            (
                req.prompt.clone(),
                req.width,
                req.height,
                req.image_num.unwrap_or(1),
                0,
                number,
            ),
        );
        let n = st.submits_by_prompt.entry(req.prompt.clone()).or_default();
        *n += 1;
        (id, *n == 1)
    };
    if f.garble_first_submit && first {
        return (StatusCode::OK, "{\"log_id\": 1, \"data\": {\"task_id\": \"").into_response();
    }
    Json(json!({"log_id": 1, "data": {"task_id": id.to_string(), "primary_task_id": id}}))
        .into_response()
}

async fn fake_query(State(f): Shared, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id: u64 = v["task_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (prompt, n, q, k) = {
        let mut st = f.state.lock().unwrap();
        let Some(t) = st.tasks.get_mut(&id) else {
            return Json(json!({"error_code": 216100, "error_msg": "no such task"}))
                .into_response();
        };
        t.4 += 1;
        (t.0.clone(), t.3, t.4 - 1, t.5)
    };
    if q < f.per_task && !f.garbage.is_empty() {
        let g = &f.garbage[(k * f.per_task + q) % f.garbage.len()];
        return (StatusCode::OK, g.clone()).into_response();
    }
    let subs: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "sub_task_status": "SUCCESS",
                "sub_task_progress": 1,
                "sub_task_error_code": 0,
                "final_image_list": [{
                    "img_url": f.url_for(&prompt, id, i),
                    "width": 512,
                    "height": 512,
                    "img_approve_conclusion": "pass",
                }],
            })
        })
        .collect();
    Json(json!({"log_id": "2", "data": {
        "task_id": id,
        "task_status": "SUCCESS",
        "task_progress": 1,
        "sub_task_result_list": subs,
    }}))
    .into_response()
}

async fn fake_image(State(f): Shared, UrlPath((id, file)): UrlPath<(u64, String)>) -> Response {
    let Some((prompt, w, h)) = f
        .state
        .lock()
        .unwrap()
        .tasks
        .get(&id)
        .map(|t| (t.0.clone(), t.1, t.2))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let i: u32 = file.trim_end_matches(".png").parse().unwrap_or(0);
    let png = runner::sim::png::render_png(&prompt, w, h, i).expect("render");
    ([(header::CONTENT_TYPE, "image/png")], png).into_response()
}

async fn fake_huge() -> Response {
    // 65 MiB of zeros without a length: past the 64 MiB cap while streaming.
    let stream = futures::stream::iter(
        (0..65).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20]))),
    );
    Body::from_stream(stream).into_response()
}

async fn start_fake(fake: Fake) -> (String, Arc<Fake>) {
    let fake = Arc::new(fake);
    let router = Router::new()
        .route(runner::api::TOKEN_PATH, get(fake_token).post(fake_token))
        .route(runner::api::SUBMIT_PATH, post(fake_submit))
        .route(runner::api::QUERY_PATH, post(fake_query))
        .route("/img/{id}/{file}", get(fake_image))
        .route("/huge.png", get(fake_huge))
        .route(
            "/to-file",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "file:///etc/passwd")],
                )
            }),
        )
        .with_state(fake.clone());
    let base = serve(router).await;
    *fake.base.lock().unwrap() = base.clone();
    (base, fake)
}

async fn run_against(env: &Env, base: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(env.limits.iter().map(String::as_str));
    let mut cmd = env.cmd(&all);
    cmd.env("RUNNER_BASE_URL", base);
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("in time")
        .expect("ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_rides_out_garbled_answers_and_finishes_without_a_panic() {
    let env = Env::new(quick_sim()).await;
    // Each of the 6 tasks meets 4 garbled answers (24 of the list) before its real one.
    let (base, fake) = start_fake(Fake {
        garbage: bad_query_answers(),
        per_task: 4,
        garble_first_submit: true,
        ..Fake::default()
    })
    .await;
    let mut yaml = String::from("batch: garbled\nsizes: [512x512]\nprompts:\n");
    for i in 0..6 {
        yaml.push_str(&format!("  - 第{i}号乱码测试\n"));
    }
    let job_path = env.write("job.yaml", &yaml);
    let out = run_against(
        &env,
        &base,
        &["submit", job_path.to_str().unwrap(), "--max-attempts=20"],
    )
    .await;
    assert_exit(&out, 0);
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("ambiguous"), "garbled submits reported: {err}");
    let lines = check_archive(&env.archive, "garbled");
    assert_eq!(lines.len(), 6);
    // Every garbled submit was ambiguous and submitted again, and reported as such.
    let status = env.status().await;
    assert_eq!(status["ambiguous_items"], 6, "{status}");
    let st = fake.state.lock().unwrap();
    assert!(st.submits_by_prompt.values().all(|n| *n == 2));
    // The six tasks whose ids came back were polled through their garbled answers.
    let polled: Vec<usize> = st.tasks.values().map(|t| t.4).filter(|q| *q > 0).collect();
    assert_eq!(polled.len(), 6, "{polled:?}");
    assert!(polled.iter().all(|q| *q > 4), "{polled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_that_are_not_http_or_too_large_are_refused_and_recorded_as_lost() {
    let env = Env::new(quick_sim()).await;
    let (base, _fake) = start_fake(Fake::default()).await;
    let yaml = "batch: badurls\nsizes: [512x512]\nprompts:\n  - 一张本地文件图\n  - 一张文件传输图\n  - 一张跳转图\n  - 一张超大图\n  - 一张正常图\n";
    let job_path = env.write("job.yaml", yaml);
    let out = run_against(&env, &base, &["submit", job_path.to_str().unwrap()]).await;
    assert_exit(&out, 3);
    let status = env.status().await;
    let b = &status["batches"][0];
    assert_eq!(b["images"]["lost"], 4, "{status}");
    assert_eq!(b["images"]["archived"], 1, "{status}");
    // The manifest records all five, the one kept image on disk.
    let manifest = std::fs::read_to_string(env.archive.join("badurls/manifest.jsonl")).unwrap();
    let lines: Vec<Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines.iter().filter(|l| l["state"] == "lost").count(), 4);
    let pngs: Vec<String> = pipeline::files_below(&env.archive)
        .into_iter()
        .filter(|f| f.ends_with(".png"))
        .collect();
    assert_eq!(pngs.len(), 1, "{pngs:?}");
    let pool = reliability::store_sql(&env.db).await;
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM images WHERE state = 'lost' ORDER BY item_key")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(errors.len(), 4);
    for e in &errors {
        assert!(e.starts_with("refused download: "), "{e}");
    }
    assert_eq!(
        errors.iter().filter(|e| e.contains("larger than")).count(),
        1,
        "{errors:?}"
    );
    // Nothing of /etc/passwd (or anything else) was copied into the archive.
    for f in pipeline::files_below(&env.archive) {
        let bytes = std::fs::read(env.archive.join(&f)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("root:x:"), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_request_timeout_is_an_ambiguous_transport_error() {
    let base = serve(Router::new().route(
        runner::api::SUBMIT_PATH,
        post(|| async {
            futures::future::pending::<()>().await;
            "never"
        }),
    ))
    .await;
    let mut config = ClientConfig::new(&base);
    config.request_timeout = std::time::Duration::from_millis(300);
    let client = Client::new(
        config,
        Credentials::Token(Secret::new("24.test-token")),
        None,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = client.submit(&request()).await.unwrap_err();
    match &e {
        ClientError::Transport { what, source } => {
            assert_eq!(*what, "submit");
            assert!(source.is_timeout(), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.is_ambiguous(),
        "the task may exist: submitted again and reported"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
}
