//! Simulator throughput: with every limit off, N concurrent HTTP/1.1 keep-alive clients
//! (reqwest, tokio) query `getImgv2` on loopback for a fixed number of requests; reports
//! queries per second per run and the median. Also times the rendering and encoding of one
//! image of each size class (the cache makes every later download of it a copy).
//!
//!     cargo bench --bench sim                       # defaults: 32 clients, 50000 queries, 7 runs
//!     cargo bench --bench sim -- --clients 64 --queries 100000 --runs 5
//!
//! Without `--bench` (as under `cargo test --all-targets`) it returns at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runner::sim::{SimConfig, spawn};
use serde_json::{Value, json};

struct Options {
    clients: usize,
    queries: usize,
    runs: usize,
}

fn options(args: &[String]) -> Options {
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Options {
        clients: value("--clients", 32),
        queries: value("--queries", 50_000),
        runs: value("--runs", 7),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

async fn query_throughput(options: &Options) -> Vec<f64> {
    let sim = spawn(SimConfig {
        gen_ms: (0, 0),
        ..SimConfig::unlimited()
    })
    .await
    .expect("spawn the simulator");
    let http = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("reqwest client");
    let base = sim.base_url();
    let token: Value = http
        .post(format!(
            "{base}/oauth/2.0/token?grant_type=client_credentials&client_id=sim-ak&client_secret=sim-sk"
        ))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token JSON");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let mut ids = Vec::new();
    for i in 0..64 {
        let answer: Value = http
            .post(format!("{base}/rpc/2.0/ernievilg/v1/txt2imgv2?access_token={token}"))
            .body(json!({"prompt": format!("bench {i}"), "width": 512, "height": 512, "image_num": 2}).to_string())
            .send()
            .await
            .expect("submit")
            .json()
            .await
            .expect("submit JSON");
        ids.push(
            answer["data"]["task_id"]
                .as_str()
                .expect("task_id")
                .to_owned(),
        );
    }
    let ids = Arc::new(ids);
    let url = Arc::new(format!(
        "{base}/rpc/2.0/ernievilg/v1/getImgv2?access_token={token}"
    ));

    let mut rates = Vec::new();
    for run in 0..options.runs {
        let issued = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..options.clients {
            let (http, url, ids, issued) = (http.clone(), url.clone(), ids.clone(), issued.clone());
            let total = options.queries;
            clients.spawn(async move {
                let mut failures = 0usize;
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return failures;
                    }
                    let body = json!({"task_id": ids[n % ids.len()]}).to_string();
                    let ok = match http.post(url.as_str()).body(body).send().await {
                        Ok(r) => r
                            .json::<Value>()
                            .await
                            .is_ok_and(|v| v["data"]["task_status"] == "SUCCESS"),
                        Err(_) => false,
                    };
                    failures += usize::from(!ok);
                }
            });
        }
        let mut failures = 0;
        while let Some(done) = clients.join_next().await {
            failures += done.expect("client task");
        }
        let elapsed = started.elapsed();
        let rate = options.queries as f64 / elapsed.as_secs_f64();
        println!(
            "run {run}: {} queries by {} clients in {:.3} s = {rate:.0} queries/s ({failures} failed)",
            options.queries,
            options.clients,
            elapsed.as_secs_f64()
        );
        assert_eq!(failures, 0, "every query must answer SUCCESS");
        rates.push(rate);
    }
    let stats = sim.stats();
    println!(
        "simulator saw {} queries, peak {} per second",
        stats.queries, stats.max_query_rate
    );
    sim.shutdown().await;
    rates
}

fn render_times() {
    for (w, h) in [(512, 512), (1024, 1024), (2048, 2048), (3840, 2160)] {
        let mut times = Vec::new();
        let mut size = 0;
        for i in 0..5 {
            let started = Instant::now();
            size = runner::sim::png::render_png("渲染基准", w, h, i)
                .expect("render")
                .len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "render+encode {w}x{h}: median {:.1} ms of 5, {:.1} MiB encoded",
            median(&mut times),
            size as f64 / (1 << 20) as f64
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let options = options(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rates = runtime.block_on(query_throughput(&options));
    println!(
        "median of {} runs: {:.0} queries/s ({} clients, {} queries per run)",
        rates.len(),
        median(&mut rates),
        options.clients,
        options.queries
    );
    render_times();
    // Let the runtime's blocking threads wind down before exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
}
