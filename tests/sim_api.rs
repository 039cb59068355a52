//! The simulator's endpoints and task behaviour, each test against its own simulator on port 0.

#[path = "common/sim.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{
    Api, DEADLINE, decode_png, error_code, fast, http, images_of, task_id_of, token_request,
};
use runner::api::{self, Envelope, QueryData, SubmitData, TaskStatus};
use runner::sim::{SimConfig, Stats, TaskRecord, spawn};
use serde_json::{Value, json};

#[tokio::test]
async fn token_endpoint_issues_and_refuses_like_the_real_one() {
    let sim = spawn(fast()).await.unwrap();
    let http = http();
    let base = sim.base_url();

    let (status, body) = token_request(&http, &base, "sim-ak", "sim-sk").await;
    assert_eq!(status, 200);
    let token: api::TokenAnswer = serde_json::from_value(body).unwrap();
    assert!(token.access_token.starts_with("24."));
    assert_eq!(token.expires_in, 2_592_000);

    // GET works too, as the SDK uses it.
    let response = http
        .get(format!(
            "{base}/oauth/2.0/token?grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");

    // Credentials in a form body.
    let response = http
        .post(format!("{base}/oauth/2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for (ak, sk, description) in [
        ("wrong", "sim-sk", "unknown client id"),
        ("sim-ak", "wrong", "Client authentication failed"),
    ] {
        let (status, body) = token_request(&http, &base, ak, sk).await;
        assert_eq!(status, 401);
        let err: api::OAuthError = serde_json::from_value(body).unwrap();
        assert_eq!(err.error, "invalid_client");
        assert_eq!(err.error_description, description);
    }
    let response = http
        .post(format!(
            "{base}/oauth/2.0/token?grant_type=password&client_id=sim-ak&client_secret=sim-sk"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let stats = sim.stats();
    assert_eq!(stats.token_requests, 6);
    assert_eq!(stats.tokens_issued, 3);
    assert_eq!(stats.errors.get("invalid_client"), Some(&2));
    assert_eq!(stats.status_count(401), 2);
}

#[tokio::test]
async fn unknown_missing_and_expired_tokens_answer_110_100_111() {
    let (sim, mut api) = Api::start(SimConfig {
        token_ttl: Duration::from_millis(300),
        ..fast()
    })
    .await;
    let valid = api.token.clone();
    let body = json!({"prompt": "猫", "width": 512, "height": 512});
    assert_eq!(error_code(&api.submit(body.clone()).await), None);

    api.token = "24.not-a-token".into();
    let answer = api.submit(body.clone()).await;
    assert_eq!(error_code(&answer), Some(110));
    assert!(answer["error_msg"].is_string());
    assert!(answer.get("log_id").is_some());
    assert_eq!(error_code(&api.query(json!("1")).await), Some(110));

    api.token = String::new();
    assert_eq!(error_code(&api.submit(body.clone()).await), Some(100));

    // Wait for the short-lived token to expire by asking until it says so.
    api.token = valid;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = api.query(json!("1")).await;
        if error_code(&answer) == Some(111) {
            break;
        }
        assert!(Instant::now() < deadline, "token never expired: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(error_code(&api.submit(body).await), Some(111));
    let stats = sim.stats();
    assert_eq!(stats.error_count(110), 2);
    assert_eq!(stats.error_count(100), 1);
    assert!(stats.error_count(111) >= 2);
    assert_eq!(stats.submits, 1);
}

#[tokio::test]
async fn a_task_goes_init_wait_running_success_with_float_progress_and_n_sub_tasks() {
    let (sim, api) = Api::start(SimConfig {
        gen_ms: (3000, 3000),
        ..SimConfig::unlimited()
    })
    .await;
    let submit = api
        .submit(json!({"prompt": "山水画", "width": 1280, "height": 720, "image_num": 3}))
        .await;
    // The answer parses with the shared wire types; the id is a 19-digit string above 2^53.
    let parsed: Envelope<SubmitData> = serde_json::from_value(submit.clone()).unwrap();
    let id = parsed.data.unwrap().task_id;
    assert_eq!(id.len(), 19);
    assert!(id.parse::<u64>().unwrap() > 1 << 53);
    assert!(submit["log_id"].is_number() || submit["log_id"].is_string());

    let mut seen: Vec<TaskStatus> = Vec::new();
    let mut float_progress = false;
    let deadline = Instant::now() + DEADLINE;
    let last = loop {
        let answer = api.query(json!(id)).await;
        let data: Envelope<QueryData> = serde_json::from_value(answer.clone()).unwrap();
        let data = data.data.unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(data.sub_task_result_list.len(), 3);
        if seen.last() != Some(&data.task_status) {
            seen.push(data.task_status);
        }
        let progress = &answer["data"]["task_progress"];
        if data.task_status == TaskStatus::Running
            && progress.is_f64()
            && (0.0..1.0).contains(&progress.as_f64().unwrap())
            && progress.as_f64().unwrap() > 0.0
        {
            float_progress = true;
        }
        if data.task_status.is_final() {
            break answer;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        seen,
        vec![
            TaskStatus::Init,
            TaskStatus::Wait,
            TaskStatus::Running,
            TaskStatus::Success
        ]
    );
    assert!(float_progress, "no fractional progress seen while RUNNING");
    let data = &last["data"];
    assert_eq!(data["task_progress"], json!(1));
    for sub in data["sub_task_result_list"].as_array().unwrap() {
        assert_eq!(sub["sub_task_status"], "SUCCESS");
        assert_eq!(sub["sub_task_error_code"], 0);
        let images = sub["final_image_list"].as_array().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(
            (images[0]["width"].as_u64(), images[0]["height"].as_u64()),
            (Some(1280), Some(720))
        );
        assert_eq!(images[0]["img_approve_conclusion"], "pass");
    }
    let record = &sim.tasks()[0];
    assert_eq!(record.task_id, id);
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(record.image_num, 3);
    assert!(record.finished_ms.unwrap() >= record.submitted_ms + 3000);
    assert!(record.first_final_query_ms.unwrap() >= record.finished_ms.unwrap());
}

#[tokio::test]
async fn task_id_may_be_sent_as_a_number_and_bodies_need_no_content_type() {
    let (_sim, api) = Api::start(fast()).await;
    // `post_raw` sends no Content-Type at all, as the erniebot SDK does.
    let response = api
        .post_raw(
            api::SUBMIT_PATH,
            br#"{"prompt":"a","width":512,"height":512}"#.to_vec(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let id = task_id_of(&response.json().await.unwrap());
    let number: u64 = id.parse().unwrap();
    let by_number = api.query(json!(number)).await;
    let by_string = api.query(json!(id)).await;
    assert!(by_number.get("data").is_some(), "{by_number}");
    assert!(by_string.get("data").is_some(), "{by_string}");
    // A form content type on a JSON body is accepted as well.
    let response = api
        .http
        .post(format!(
            "{}{}?access_token={}",
            api.base,
            api::QUERY_PATH,
            api.token
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(r#"{{"task_id":{number}}}"#))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert!(answer.get("data").is_some(), "{answer}");
}

#[tokio::test]
async fn ids_and_log_ids_come_in_every_shape_seen_in_reality() {
    let (_sim, api) = Api::start(SimConfig {
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    let id = api.submit_ok("形状", 1).await;
    let mut log_id_kinds = BTreeSet::new();
    let mut task_id_kinds = BTreeSet::new();
    for _ in 0..60 {
        let answer = api.query(json!(id)).await;
        log_id_kinds.insert(if answer["log_id"].is_string() {
            "string"
        } else {
            "number"
        });
        let t = &answer["data"]["task_id"];
        task_id_kinds.insert(if t.is_string() {
            "string"
        } else if t == &json!(0) {
            "zero"
        } else {
            assert_eq!(t.as_u64().unwrap().to_string(), id);
            "number"
        });
    }
    assert_eq!(log_id_kinds.len(), 2, "{log_id_kinds:?}");
    assert_eq!(task_id_kinds.len(), 3, "{task_id_kinds:?}");
}

#[tokio::test]
async fn images_are_real_pngs_of_the_size_deterministic_and_different_per_prompt() {
    let (sim, api) = Api::start(fast()).await;
    let mut pixels = Vec::new();
    for prompt in ["一只猫", "一只猫", "一条狗"] {
        let id = api.submit_ok(prompt, 2).await;
        let answer = api.wait_final(&id).await;
        let images = images_of(&answer);
        assert_eq!(images.len(), 2);
        let mut per_task = Vec::new();
        for (url, _) in images {
            let response = api.get(&url).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "image/png");
            let bytes = response.bytes().await.unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            let (w, h, px) = decode_png(&bytes);
            assert_eq!((w, h), (512, 512));
            assert_eq!(
                bytes,
                runner::sim::png::render_png(prompt, 512, 512, per_task.len() as u32).unwrap()
            );
            per_task.push(px);
        }
        pixels.push(per_task);
    }
    let differing = |a: &[u8], b: &[u8]| {
        a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count() as f64 / (a.len() / 3) as f64
    };
    // Same prompt, other task: the same images.
    assert_eq!(pixels[0], pixels[1]);
    // Other prompt: visibly different; other index: different too.
    assert!(differing(&pixels[0][0], &pixels[2][0]) > 0.5);
    assert!(differing(&pixels[0][0], &pixels[0][1]) > 0.5);
    let stats = sim.stats();
    assert_eq!(stats.downloads, 6);
    // Six downloads of four distinct images: two came from the cache.
    assert_eq!((stats.png_cache_misses, stats.png_cache_hits), (4, 2));
    assert!(sim.tasks().iter().all(|t| t.first_download_ms.is_some()));
}

#[tokio::test]
async fn large_images_are_rendered_once_then_served_from_the_cache() {
    let (sim, api) = Api::start(SimConfig {
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    let answer = api
        .submit(json!({"prompt": "大图", "width": 2560, "height": 1440, "version": "v1"}))
        .await;
    let id = task_id_of(&answer);
    let (url, _) = images_of(&api.wait_final(&id).await).remove(0);
    let first = api.get(&url).await.bytes().await.unwrap();
    let second = api.get(&url).await.bytes().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(decode_png(&first).0, 2560);
    let stats = sim.stats();
    assert_eq!((stats.png_cache_misses, stats.png_cache_hits), (1, 1));
}

/// Verdicts of every image of `tasks` tasks of 8 images each.
async fn verdicts(config: SimConfig, tasks: usize) -> Vec<String> {
    let (_sim, api) = Api::start(SimConfig {
        gen_ms: (0, 0),
        ..config
    })
    .await;
    let mut all = Vec::new();
    for i in 0..tasks {
        let id = api.submit_ok(&format!("verdict {i}"), 8).await;
        all.extend(
            images_of(&api.wait_final(&id).await)
                .into_iter()
                .map(|(_, v)| v),
        );
    }
    all
}

#[tokio::test]
async fn verdicts_follow_the_rates() {
    let base = SimConfig {
        seed: 11,
        ..SimConfig::unlimited()
    };
    assert!(verdicts(base.clone(), 3).await.iter().all(|v| v == "pass"));
    let all_review = SimConfig {
        review_rate: 1.0,
        ..base.clone()
    };
    assert!(verdicts(all_review, 3).await.iter().all(|v| v == "review"));
    let all_block = SimConfig {
        block_rate: 1.0,
        ..base.clone()
    };
    assert!(verdicts(all_block, 3).await.iter().all(|v| v == "block"));

    // 800 images at review 0.2 and block 0.1: each count within 5 standard deviations.
    let mixed = SimConfig {
        review_rate: 0.2,
        block_rate: 0.1,
        ..base
    };
    let sample = verdicts(mixed.clone(), 100).await;
    assert_eq!(sample.len(), 800);
    let count = |v: &str| sample.iter().filter(|x| *x == v).count() as f64;
    for (verdict, p) in [("review", 0.2f64), ("block", 0.1), ("pass", 0.7)] {
        let mean = 800.0 * p;
        let sd = (800.0 * p * (1.0 - p)).sqrt();
        assert!(
            (count(verdict) - mean).abs() < 5.0 * sd,
            "{verdict}: {} of 800",
            count(verdict)
        );
    }
    // The same seed gives the same verdicts.
    assert_eq!(verdicts(mixed, 100).await, sample);
}

#[tokio::test]
async fn banned_words_fail_sub_tasks_with_501_or_the_submit_with_282004() {
    let banned = SimConfig {
        banned: vec!["暴力".into(), "Gore".into()],
        ..fast()
    };
    let (sim, api) = Api::start(banned.clone()).await;
    let id = api.submit_ok("一幅暴力的画", 2).await;
    let answer = api.wait_final(&id).await;
    assert_eq!(answer["data"]["task_status"], "FAILED");
    for sub in answer["data"]["sub_task_result_list"].as_array().unwrap() {
        assert_eq!(sub["sub_task_status"], "FAILED");
        assert_eq!(sub["sub_task_error_code"], 501);
        assert!(sub["final_image_list"].as_array().unwrap().is_empty());
    }
    let fine = api.submit_ok("一幅风景画", 1).await;
    assert_eq!(
        api.wait_final(&fine).await["data"]["task_status"],
        "SUCCESS"
    );
    assert_eq!(sim.tasks()[0].error_code, Some(501));
    assert_eq!(sim.stats().sub_task_errors.get("501"), Some(&2));

    let (sim, api) = Api::start(SimConfig {
        banned_at_submit: true,
        ..banned
    })
    .await;
    let answer = api
        .submit(json!({"prompt": "some gore here", "width": 512, "height": 512}))
        .await;
    assert_eq!(error_code(&answer), Some(282004));
    let detail = answer["error_detail"].as_array().unwrap();
    assert_eq!(detail[0]["words"], json!(["Gore"]));
    assert!(detail[0]["msg"].is_string());
    let parsed: Envelope<SubmitData> = serde_json::from_value(answer).unwrap();
    assert!(parsed.error_detail.is_some());
    assert!(sim.tasks().is_empty());
}

#[tokio::test]
async fn model_failures_answer_201_at_the_fail_rate() {
    let (sim, api) = Api::start(SimConfig {
        fail_rate: 1.0,
        ..fast()
    })
    .await;
    let id = api.submit_ok("失败", 3).await;
    let answer = api.wait_final(&id).await;
    assert_eq!(answer["data"]["task_status"], "FAILED");
    let subs = answer["data"]["sub_task_result_list"].as_array().unwrap();
    assert_eq!(subs.len(), 3);
    assert!(
        subs.iter()
            .all(|s| s["sub_task_error_code"] == 201 && s["sub_task_status"] == "FAILED")
    );
    assert_eq!(sim.tasks()[0].error_code, Some(201));
    assert_eq!(sim.stats().tasks_failed, 1);

    let (_sim, api) = Api::start(SimConfig {
        fail_rate: 0.5,
        seed: 5,
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    let mut failed = 0;
    for i in 0..200 {
        let id = api.submit_ok(&format!("p{i}"), 1).await;
        if api.wait_final(&id).await["data"]["task_status"] == "FAILED" {
            failed += 1;
        }
    }
    assert!(
        (65..=135).contains(&failed),
        "{failed} of 200 failed at rate 0.5"
    );
}

#[tokio::test]
async fn tasks_past_the_timeout_answer_216303_and_release_their_slots() {
    let (sim, api) = Api::start(SimConfig {
        gen_ms: (60_000, 60_000),
        task_timeout: Duration::from_millis(300),
        concurrency: Some(2),
        ..SimConfig::unlimited()
    })
    .await;
    let id = api.submit_ok("慢", 2).await;
    let first = api.query(json!(id)).await;
    assert!(
        first.get("data").is_some(),
        "before the timeout the task runs: {first}"
    );
    let answer = api.wait_final(&id).await;
    assert_eq!(error_code(&answer), Some(216303));
    assert!(answer["error_msg"].is_string());
    let record = &sim.tasks()[0];
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error_code, Some(216303));
    assert_eq!(record.finished_ms, Some(record.submitted_ms + 300));
    // The slots are free again.
    api.submit_ok("下一个", 2).await;
    // A submit's own task_time_out shortens the timeout.
    let (_sim, api) = Api::start(SimConfig {
        gen_ms: (5_000, 5_000),
        ..SimConfig::unlimited()
    })
    .await;
    let short = api
        .submit(json!({"prompt": "x", "width": 512, "height": 512, "task_time_out": 1}))
        .await;
    let answer = api.wait_final(&task_id_of(&short)).await;
    assert_eq!(error_code(&answer), Some(216303));
}

#[tokio::test]
async fn parameter_errors_answer_216100_282003_282004() {
    let (sim, api) = Api::start(fast()).await;
    let long = "长".repeat(201);
    let cases = [
        (json!({"width": 512, "height": 512}), 282003),
        (json!({"prompt": "a", "width": 512}), 282003),
        (json!({"prompt": "", "width": 512, "height": 512}), 282003),
        (json!({"prompt": long, "width": 512, "height": 512}), 282004),
        (
            json!({"prompt": "a", "width": 512, "height": 512, "version": "v1"}),
            216100,
        ),
        (json!({"prompt": "a", "width": 300, "height": 300}), 216100),
        (
            json!({"prompt": "a", "width": 3840, "height": 2160, "version": "v1"}),
            216100,
        ),
        (
            json!({"prompt": "a", "width": 512, "height": 512, "version": "v9"}),
            216100,
        ),
        (
            json!({"prompt": "a", "width": 512, "height": 512, "image_num": 0}),
            216100,
        ),
        (
            json!({"prompt": "a", "width": 512, "height": 512, "image_num": 9}),
            216100,
        ),
        (
            json!({"prompt": "a", "width": "512", "height": 512}),
            216100,
        ),
    ];
    for (body, code) in &cases {
        let answer = api.submit(body.clone()).await;
        assert_eq!(error_code(&answer), Some(*code), "{body} -> {answer}");
        assert!(answer["error_msg"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(answer.get("log_id").is_some());
    }
    let raw = api.post_raw(api::SUBMIT_PATH, b"not json".to_vec()).await;
    assert_eq!(error_code(&raw.json().await.unwrap()), Some(282003));
    // Every documented size of each version is accepted, 200 characters too.
    for version in [api::Version::V1, api::Version::V2] {
        for size in version.sizes() {
            let ok = api
                .submit(json!({"prompt": "长".repeat(200), "width": size.width, "height": size.height, "version": version.as_str(), "image_num": 8}))
                .await;
            assert_eq!(error_code(&ok), None, "{version} {size}: {ok}");
        }
    }
    // Queries: missing id, malformed id, unknown id.
    assert_eq!(
        error_code(&api.post(api::QUERY_PATH, &json!({})).await),
        Some(282003)
    );
    assert_eq!(error_code(&api.query(json!("abc")).await), Some(216100));
    assert_eq!(
        error_code(&api.query(json!("1700000000000000000")).await),
        Some(216100)
    );
    // An unknown method under /rpc answers error 3.
    let unknown = api.post("/rpc/2.0/ernievilg/v1/txt2img", &json!({})).await;
    assert_eq!(error_code(&unknown), Some(3));
    let stats = sim.stats();
    assert_eq!(stats.error_count(282003), 5);
    assert_eq!(stats.error_count(282004), 1);
    assert_eq!(stats.error_count(216100), 9);
    assert_eq!(stats.submits, 17);
}

#[tokio::test]
async fn stats_count_everything_and_match_over_http() {
    let (sim, api) = Api::start(SimConfig {
        concurrency: Some(8),
        gen_ms: (300, 400),
        ..SimConfig::unlimited()
    })
    .await;
    let a = api.submit_ok("甲", 2).await;
    let b = api.submit_ok("乙", 1).await;
    let again = api.submit_ok("甲", 2).await;
    let refused = api
        .submit(json!({"prompt": "丙", "width": 1, "height": 1}))
        .await;
    assert_eq!(error_code(&refused), Some(216100));
    let mut downloads = 0;
    for id in [&a, &b, &again] {
        for (url, _) in images_of(&api.wait_final(id).await) {
            assert_eq!(api.get(&url).await.status(), 200);
            downloads += 1;
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.submit_requests, 4);
    assert_eq!(stats.submits, 3);
    assert!(stats.queries >= 3);
    assert_eq!(stats.download_requests, downloads);
    assert_eq!(stats.downloads, downloads);
    assert_eq!(stats.images_generated, 5);
    assert_eq!(stats.in_generation, 0);
    assert_eq!(stats.max_in_generation, 5);
    assert!(stats.max_submit_rate >= 1);
    assert!(stats.max_query_rate >= 1);
    assert_eq!(stats.error_count(216100), 1);
    assert_eq!(
        stats.status_count(200),
        stats.submit_requests + stats.queries + stats.downloads + 1
    );
    // Nothing but 甲 was submitted twice.
    assert_eq!(stats.max_submits_per_item(), 2);
    let top = &stats.submits_per_item[0];
    assert_eq!(
        (
            top.prompt.as_str(),
            top.width,
            top.height,
            top.version.as_str(),
            top.image_num,
            top.count
        ),
        ("甲", 512, 512, "v2", 2, 2)
    );
    assert_eq!(stats.submits_per_item.len(), 2);

    let http = http();
    let over_http: Stats = http
        .get(format!("{}/__sim/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http.submits_per_item, stats.submits_per_item);
    assert_eq!(over_http.errors, stats.errors);
    assert_eq!(over_http.downloads, stats.downloads);
    let tasks: Vec<TaskRecord> = http
        .get(format!("{}/__sim/tasks", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks, sim.tasks());
    assert_eq!(
        tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        vec![a.as_str(), b.as_str(), again.as_str()]
    );
    assert!(
        tasks
            .iter()
            .all(|t| t.finished_ms.is_some() && t.first_final_query_ms.is_some())
    );
    sim.shutdown().await;
}
