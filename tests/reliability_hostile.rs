//! Hostile input: names, tags and prompts that try to leave the archive, symlinks planted in it,
//! a tampered store, image downloads that are too large, too slow or not http(s), and API
//! answers that break the schema. Each is refused with a clear error; nothing escapes, nothing
//! panics.

#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/reliability.rs"]
mod reliability;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pipeline::{DEADLINE, Env, assert_exit, files_below, quick_sim, text};
use reliability::{Allow, Policy, check_batch, job, plan_items, snapshot};
use runner::client::{Client, ClientConfig, ClientError, Credentials, Secret};
use runner::sim::SimConfig;
use serde_json::Value;

/// Serves `router` on 127.0.0.1 with a free port; returns `http://ADDR`.
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

/// A client with a preset token and small bounds.
fn client(base: &str, max_bytes: u64, timeout: Duration) -> Client {
    let mut config = ClientConfig::new(base);
    config.max_image_bytes = max_bytes;
    config.download_timeout = timeout;
    config.request_timeout = timeout;
    Client::new(
        config,
        Credentials::Token(Secret::new("24.test-token")),
        None,
    )
    .expect("client")
}

fn png_of(w: u32, h: u32) -> Vec<u8> {
    runner::sim::png::render_png("边界测试", w, h, 0).expect("render")
}

// ---------------------------------------------------------------------------------------------
// Names, tags and prompts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_names_that_would_leave_the_archive_are_refused_before_anything_runs() {
    let env = Env::new(quick_sim()).await;
    for name in [
        "../evil",
        "..",
        "/etc",
        "a/b",
        ".hidden",
        "C:\\x",
        "evil\u{0}x",
        "~root",
        "%2e%2e",
        "",
    ] {
        let yaml = format!(
            "batch: {}\nprompts: [一只猫]\n",
            serde_json::to_string(name).unwrap()
        );
        let job_path = env.write("evil.yaml", &yaml);
        let out = env.run(&["submit", job_path.to_str().unwrap()]).await;
        assert_exit(&out, 2);
        assert!(
            text(&out.stderr).contains("batch"),
            "{name:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(env.stats().submit_requests, 0);
    assert!(!env.archive.exists(), "no archive written");
    let outside: Vec<String> = files_below(env.dir.path())
        .into_iter()
        .filter(|f| f != "evil.yaml")
        .collect();
    assert!(outside.is_empty(), "nothing written: {outside:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_tags_never_reach_a_path() {
    let env = Env::new(quick_sim()).await;
    let hostile = [
        "../../../../etc/passwd",
        "/etc/shadow",
        "..\\..\\windows\\system32",
        "a/../../b",
        "~/.ssh/id_rsa",
        "$(rm -rf ~)",
        "\u{202e}gnp.exe",
        "名字/../../逃逸",
    ];
    let mut yaml = String::from(
        "batch: hostile\nsizes: [512x512]\ntags: {\"../../dir\": \"/etc/passwd\", \"x\": \"..\"}\nprompts:\n",
    );
    for (i, p) in hostile.iter().enumerate() {
        yaml.push_str(&format!(
            "  - prompt: {}\n    tags: {{\"../{i}\": {}, \"/abs\": \"../../{i}\"}}\n",
            serde_json::to_string(p).unwrap(),
            serde_json::to_string(p).unwrap()
        ));
    }
    let job_path = env.write("hostile.yaml", &yaml);
    let plan = plan_items(&env, &job_path).await;
    assert_eq!(plan.len(), hostile.len());
    let out = env.run(&["submit", job_path.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "hostile", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, hostile.len());

    // Every file is below archive/hostile, named by item key, index and extension only.
    let top: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        assert!(
            name == "archive" || name == "hostile.yaml" || name.starts_with("runner.db"),
            "unexpected file {name}"
        );
    }
    let names = files_below(&env.archive);
    for f in &names {
        let ok = f == "hostile/manifest.jsonl" || {
            let parts: Vec<&str> = f.split('/').collect();
            parts.len() == 4
                && parts[0] == "hostile"
                && parts[1] == "images"
                && parts[2].len() == 2
                && parts[2].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[3]
                    .strip_suffix(".png")
                    .or_else(|| parts[3].strip_suffix(".json"))
                    .and_then(|stem| stem.rsplit_once('-'))
                    .is_some_and(|(key, idx)| {
                        key.len() == 32
                            && key.bytes().all(|b| b.is_ascii_hexdigit())
                            && key.starts_with(parts[2])
                            && idx.parse::<u32>().is_ok()
                    })
        };
        assert!(ok, "unexpected archive path {f}");
    }
    // The hostile text is kept verbatim as data in the sidecars.
    let sidecars: Vec<Value> = names
        .iter()
        .filter(|f| f.ends_with(".json"))
        .map(|f| serde_json::from_slice(&std::fs::read(env.archive.join(f)).unwrap()).unwrap())
        .collect();
    for p in hostile {
        assert!(
            sidecars
                .iter()
                .any(|s| s["prompt"] == p && s["tags"]["/abs"].as_str().is_some()),
            "{p:?} kept as data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_batch_name_in_the_store_is_refused() {
    let env = Env::new(quick_sim()).await;
    let job_path = env.write("job.yaml", &job("fine", 2));
    assert_exit(&env.run(&["submit", job_path.to_str().unwrap()]).await, 0);
    // Someone edits the store: a batch whose name would leave the archive.
    {
        let pool = runner::store::pool_options()
            .max_connections(1)
            .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&env.db))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO batches (name, review_policy, block_policy, source, created_at, updated_at)
             VALUES ('../../escape', 'keep', 'skip', 'x', 0, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO items (key, batch, seq, prompt, width, height, version, image_num, variant,
                 tags, vars, state, created_at, updated_at)
             VALUES ('0123456789abcdef0123456789abcdef', '../../escape', 0, '猫', 512, 512, 'v2', 1,
                 0, '{}', '{}', 'pending', 0, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let before = snapshot(env.dir.path());
    let submits = env.stats().submit_requests;
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("unsafe archive path"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.stats().submit_requests, submits, "nothing submitted");
    let after = snapshot(env.dir.path());
    let new: Vec<&String> = after
        .keys()
        .filter(|k| !before.contains_key(*k) && !k.starts_with("runner.db"))
        .collect();
    assert!(new.is_empty(), "nothing written: {new:?}");
    assert!(!env.dir.path().join("escape").exists());
    assert!(!env.archive.join("..").join("..").join("escape").exists());
}

// ---------------------------------------------------------------------------------------------
// Symlinks planted in the archive

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_in_the_archive_are_refused_and_nothing_outside_is_touched() {
    use std::os::unix::fs::symlink;

    let env = Env::new(SimConfig {
        gen_ms: (200, 400),
        ..quick_sim()
    })
    .await;
    let job_path = env.write("job.yaml", &job("links", 24));
    let plan = plan_items(&env, &job_path).await;
    // Part of the batch first, so every folder exists.
    let mut first = env.cmd(&[
        "submit",
        job_path.to_str().unwrap(),
        "--max-runtime=1s",
        "--concurrency=2",
        "--submit-qps=40",
        "--query-qps=80",
    ]);
    let out = tokio::time::timeout(DEADLINE, first.output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&out, 4);

    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.txt"), b"keep me").unwrap();
    std::fs::write(outside.join("manifest.jsonl"), b"not yours\n").unwrap();
    let batch = env.archive.join("links");
    let kk = std::fs::read_dir(batch.join("images"))
        .unwrap()
        .next()
        .expect("an images subfolder")
        .unwrap()
        .file_name();
    // Each plant: the path replaced by a link to `outside` (or a file there).
    let plants: Vec<(std::path::PathBuf, std::path::PathBuf)> = vec![
        (batch.join(".tmp"), outside.clone()),
        (batch.join("images"), outside.clone()),
        (batch.join("images").join(&kk), outside.clone()),
        (batch.join("manifest.jsonl"), outside.join("manifest.jsonl")),
        (batch.clone(), outside.clone()),
    ];
    for (place, target) in plants {
        let outside_before = snapshot(&outside);
        let aside = place.with_extension("aside");
        std::fs::rename(&place, &aside).unwrap();
        symlink(&target, &place).unwrap();
        for args in [vec!["resume"], vec!["verify"]] {
            let out = if args[0] == "resume" {
                env.run(&args).await
            } else {
                env.plain(&args).await
            };
            assert_exit(&out, 1);
            let err = text(&out.stderr);
            assert!(
                err.contains("is a symlink") && err.contains(&place.display().to_string()),
                "{args:?} with {} planted: {err}",
                place.display()
            );
        }
        assert_eq!(
            snapshot(&outside),
            outside_before,
            "{} led nothing outside",
            place.display()
        );
        std::fs::remove_file(&place).unwrap();
        std::fs::rename(&aside, &place).unwrap();
    }
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "links", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
    assert_eq!(
        std::fs::read(outside.join("precious.txt")).unwrap(),
        b"keep me"
    );
}

// ---------------------------------------------------------------------------------------------
// Downloads: bounded in size and time, http(s) only

/// Counts the requests a test server saw.
#[derive(Default)]
struct Seen(AtomicU64);

fn zeros(chunk: usize, chunks: Option<usize>) -> Body {
    let stream = futures::stream::unfold(0usize, move |n| async move {
        if chunks.is_some_and(|c| n >= c) {
            return None;
        }
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; chunk])),
            n + 1,
        ))
    });
    Body::from_stream(stream)
}

fn download_server(seen: Arc<Seen>) -> Router {
    let count = move |seen: Arc<Seen>| {
        seen.0.fetch_add(1, Ordering::SeqCst);
    };
    let s1 = seen.clone();
    let s2 = seen.clone();
    let s3 = seen.clone();
    let s4 = seen.clone();
    let s5 = seen.clone();
    let s6 = seen.clone();
    let s7 = seen;
    Router::new()
        .route(
            "/ok.png",
            get(move || async move {
                count(s1);
                ([(header::CONTENT_TYPE, "image/png")], png_of(64, 64))
            }),
        )
        .route(
            "/declared-big.png",
            get(move || async move {
                count(s2);
                // 10 MB announced and sent: refused from the header.
                let mut r = zeros(1 << 20, Some(10)).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(10u64 << 20));
                r
            }),
        )
        .route(
            "/endless.png",
            get(move || async move {
                count(s3);
                // Chunked, no length, never ending.
                zeros(64 << 10, None)
            }),
        )
        .route(
            "/stall.png",
            get(move || async move {
                count(s4);
                // The head and a few bytes, then nothing.
                let stream = futures::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"\x89PNG\r\n"))
                })
                .chain(futures::stream::pending());
                Body::from_stream(stream)
            }),
        )
        .route(
            "/silent.png",
            get(move || async move {
                count(s5);
                futures::future::pending::<()>().await;
                "never"
            }),
        )
        .route(
            "/to-file.png",
            get(move || async move {
                count(s6);
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "file:///etc/passwd")],
                )
            }),
        )
        .route(
            "/to-ftp.png",
            get(move || async move {
                count(s7);
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "ftp://127.0.0.1/x.png")],
                )
            }),
        )
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_bounded_in_size_and_time_and_only_follow_http() {
    let seen = Arc::new(Seen::default());
    let base = serve(download_server(seen.clone())).await;
    let limit = 1 << 20;
    let timeout = Duration::from_millis(500);
    let c = client(&base, limit, timeout);
    let ok = c.download(&format!("{base}/ok.png")).await.unwrap();
    assert_eq!(ok.body.as_slice(), png_of(64, 64));

    // Too large by its Content-Length: refused before the body is read.
    let e = c
        .download(&format!("{base}/declared-big.png"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { limit: l } if l == limit),
        "{e}"
    );

    // Too large while streaming (no length given): cut at the limit.
    let e = c
        .download(&format!("{base}/endless.png"))
        .await
        .unwrap_err();
    // (the body is held in memory and refused as soon as it would pass the limit)
    assert!(matches!(e, ClientError::TooLarge { .. }), "{e}");

    // A body that stalls, and a server that never answers: the download timeout ends both.
    for path in ["stall.png", "silent.png"] {
        let started = Instant::now();
        let e = c.download(&format!("{base}/{path}")).await.unwrap_err();
        match &e {
            ClientError::Transport { source, .. } => {
                assert!(source.is_timeout(), "{path}: {e}: {source:?}")
            }
            other => panic!("{path}: {other}"),
        }
        assert!(
            started.elapsed() < timeout * 10,
            "{path}: bounded by the timeout, took {:?}",
            started.elapsed()
        );
    }

    // Not http(s): refused without a request.
    let before = seen.0.load(Ordering::SeqCst);
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://127.0.0.1/x",
        "/relative/x.png",
        "not a url",
        "",
    ] {
        let e = c.download(url).await.unwrap_err();
        assert!(matches!(e, ClientError::BadUrl), "{url}: {e}");
        assert_eq!(e.class(), runner::api::ErrorClass::Fatal);
    }
    assert_eq!(seen.0.load(Ordering::SeqCst), before, "no request made");

    // A redirect to another scheme is not followed.
    for path in ["to-file.png", "to-ftp.png"] {
        let e = c.download(&format!("{base}/{path}")).await.unwrap_err();
        assert!(
            matches!(e, ClientError::BadUrl),
            "{path}: refused as not http(s): {e}"
        );
        // Refused, so no bytes (of a local file or anything else) came back.
    }
}
