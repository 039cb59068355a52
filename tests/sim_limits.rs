//! The account's limits (rate, concurrency, daily quota) and expiring image URLs, each answered
//! the real way, each test against its own simulator on port 0.

#[path = "common/sim.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Api, DEADLINE, error_code, images_of, task_id_of};
use runner::sim::SimConfig;
use serde_json::{Value, json};

fn body(prompt: &str, image_num: u32) -> Value {
    json!({"prompt": prompt, "width": 512, "height": 512, "image_num": image_num})
}

/// Submits until one is accepted; returns the refusals' codes before it.
async fn submit_until_accepted(api: &Api, body: Value) -> Vec<i64> {
    let deadline = Instant::now() + DEADLINE;
    let mut refusals = Vec::new();
    loop {
        let answer = api.submit(body.clone()).await;
        match error_code(&answer) {
            None => return refusals,
            Some(code) => refusals.push(code),
        }
        assert!(Instant::now() < deadline, "never accepted: {refusals:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn submits_over_the_rate_answer_18_and_do_not_count_as_accepted() {
    let (sim, api) = Api::start(SimConfig {
        submit_qps: Some(1.0),
        gen_ms: (10, 10),
        ..SimConfig::unlimited()
    })
    .await;
    assert_eq!(error_code(&api.submit(body("一", 1)).await), None);
    let mut refused = 0;
    for i in 0..4 {
        let answer = api.submit(body(&format!("二{i}"), 1)).await;
        assert_eq!(error_code(&answer), Some(18), "{answer}");
        assert_eq!(answer["error_msg"], "Open api qps request limit reached");
        assert!(answer.get("log_id").is_some());
        refused += 1;
    }
    // Refusals do not fill the window: the next second accepts again.
    let refusals = submit_until_accepted(&api, body("三", 1)).await;
    assert!(refusals.iter().all(|c| *c == 18));
    let stats = sim.stats();
    assert_eq!(stats.submits, 2);
    assert_eq!(stats.error_count(18), refused + refusals.len() as u64);
    assert!(stats.max_submit_rate >= 5, "{}", stats.max_submit_rate);
    assert_eq!(sim.tasks().len(), 2);
}

#[tokio::test]
async fn queries_over_the_rate_answer_18() {
    let (sim, api) = Api::start(SimConfig {
        query_qps: Some(2.0),
        gen_ms: (10, 10),
        ..SimConfig::unlimited()
    })
    .await;
    let id = api.submit_ok("查询", 1).await;
    let answers = [
        api.query(json!(id)).await,
        api.query(json!(id)).await,
        api.query(json!(id)).await,
    ];
    assert!(answers[0].get("data").is_some());
    assert!(answers[1].get("data").is_some());
    assert_eq!(error_code(&answers[2]), Some(18));
    let stats = sim.stats();
    assert_eq!(stats.error_count(18), 1);
    assert!(stats.max_query_rate >= 3);
}

#[tokio::test]
async fn images_in_generation_over_the_concurrency_answer_15_until_a_task_finishes() {
    let (sim, api) = Api::start(SimConfig {
        concurrency: Some(2),
        gen_ms: (500, 500),
        ..SimConfig::unlimited()
    })
    .await;
    let first = api.submit_ok("甲", 2).await;
    let refused = api.submit(body("乙", 1)).await;
    assert_eq!(error_code(&refused), Some(15), "{refused}");
    // A task larger than the limit can never start.
    assert_eq!(error_code(&api.submit(body("丙", 3)).await), Some(15));
    assert_eq!(
        api.wait_final(&first).await["data"]["task_status"],
        "SUCCESS"
    );
    // The slots were released when the task became final.
    let second = api.submit(body("乙", 1)).await;
    task_id_of(&second);
    let stats = sim.stats();
    assert_eq!(stats.max_in_generation, 2);
    assert_eq!(stats.error_count(15), 2);
    assert_eq!(stats.submits, 2);
}

#[tokio::test]
async fn the_daily_quota_answers_17_and_resets_with_the_window() {
    let window = Duration::from_millis(1500);
    let (sim, api) = Api::start(SimConfig {
        daily_quota: Some(3),
        quota_window: Some(window),
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    // Start early in a window so the first three submits share it.
    let deadline = Instant::now() + DEADLINE;
    while sim.stats().uptime_ms % window.as_millis() as u64 > 700 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.submit_ok("一", 2).await;
    api.submit_ok("二", 1).await;
    let refused = api.submit(body("三", 1)).await;
    assert_eq!(error_code(&refused), Some(17), "{refused}");
    assert_eq!(refused["error_msg"], "Open api daily request limit reached");
    assert_eq!(sim.stats().quota_used, 3);
    // Quota counts images: after the reset, three images fit again.
    let refusals = submit_until_accepted(&api, body("三", 3)).await;
    assert!(refusals.iter().all(|c| *c == 17));
    let stats = sim.stats();
    assert_eq!(stats.submits, 3);
    assert_eq!(stats.error_count(17), 1 + refusals.len() as u64);
}

#[tokio::test]
async fn the_calendar_day_quota_counts_images_not_submits() {
    let (sim, api) = Api::start(SimConfig {
        daily_quota: Some(4),
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    api.submit_ok("一", 3).await;
    assert_eq!(error_code(&api.submit(body("二", 2)).await), Some(17));
    api.submit_ok("二", 1).await;
    assert_eq!(error_code(&api.submit(body("三", 1)).await), Some(17));
    assert_eq!(sim.stats().quota_used, 4);
}

#[tokio::test]
async fn image_urls_expire_with_403_and_every_query_signs_fresh_ones() {
    let (sim, api) = Api::start(SimConfig {
        url_ttl: Duration::from_secs(1),
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    let id = api.submit_ok("过期", 1).await;
    let (first, _) = images_of(&api.wait_final(&id).await).remove(0);
    assert!(
        first.starts_with(&format!("{}/img/{id}/0.png?", api.base)),
        "{first}"
    );
    assert_eq!(api.get(&first).await.status(), 200);

    // Tampering with the signature or the expiry is refused.
    let tampered_sign = format!("{}0", &first[..first.len() - 1]);
    let tampered_sign = if tampered_sign == first {
        format!("{}1", &first[..first.len() - 1])
    } else {
        tampered_sign
    };
    assert_eq!(api.get(&tampered_sign).await.status(), 403);
    let expires: u64 = first
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tampered_expiry = first.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    assert_eq!(api.get(&tampered_expiry).await.status(), 403);

    let (second, _) = images_of(&api.query(json!(id)).await).remove(0);
    assert_ne!(second, first, "each answer signs a fresh URL");

    // Wait (by asking) until the first URL is refused.
    let deadline = Instant::now() + DEADLINE;
    let refusal = loop {
        let response = api.get(&first).await;
        if response.status() == 403 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "URL never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refusal["code"], "AccessDenied");
    // A fresh query gives a URL that works again.
    let (fresh, _) = images_of(&api.query(json!(id)).await).remove(0);
    assert_eq!(api.get(&fresh).await.status(), 200);
    let stats = sim.stats();
    assert!(stats.expired_url_hits >= 1);
    assert_eq!(stats.bad_signature_hits, 2);
    assert_eq!(stats.status_count(403), stats.expired_url_hits + 2);
}

#[tokio::test]
async fn image_urls_of_unfinished_or_unknown_images_are_refused() {
    let (_sim, api) = Api::start(SimConfig {
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await;
    let id = api.submit_ok("四", 1).await;
    let (url, _) = images_of(&api.wait_final(&id).await).remove(0);
    // Without its signature the URL is refused.
    let bare = url.split('?').next().unwrap();
    assert_eq!(api.get(bare).await.status(), 403);
    // The default real-API configuration answers a URL valid for an hour.
    let expires: u64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3599..=now + 3602).contains(&expires),
        "{expires} vs {now}"
    );
}
