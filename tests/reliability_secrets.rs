//! Secrets: a whole batch run with tracing at its most verbose (`RUST_LOG=trace`, `-vv`), with
//! token expiries, faults and refused credentials on the way; then every byte the runs left
//! behind is searched. The secret key appears nowhere: not in any log line, error, store file
//! (database, WAL, shared memory, lock) or archive file. The access token appears only in its
//! own row of `token_cache`.

#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/reliability.rs"]
mod reliability;

use std::time::Duration;

use pipeline::{DEADLINE, Env, assert_exit, files_below, quick_sim, text};
use reliability::{job, store_sql};
use runner::sim::{FaultKind, FaultKinds, SimConfig};
use sqlx::Row;

/// An access key and a secret key nothing else could contain by chance.
const AK: &str = "sim-ak-reliability-7f3a";
const SK: &str = "sim-sk-SECRET-9c1e55d2b7a04f68";
/// A wrong secret key, which must not be echoed either.
const WRONG_SK: &str = "sim-sk-WRONG-41b0d6e3c2f8a719";
/// Every token the simulator issues contains this (`24.<hex>.<ttl>.<time>.282335-<n>`).
const TOKEN_MARK: &str = ".282335-";

fn occurrences(haystack: &[u8], needle: &str) -> usize {
    let n = needle.as_bytes();
    haystack.windows(n.len()).filter(|w| *w == n).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_appears_nowhere_and_the_token_only_in_its_cache_row() {
    let env = Env::new(SimConfig {
        ak: AK.into(),
        sk: SK.into(),
        // Tokens die after 1 s though announced for 30 days: 111, refresh, a new token.
        token_ttl: Duration::from_secs(1),
        token_expires_in: Some(Duration::from_secs(30 * 24 * 3600)),
        gen_ms: (100, 400),
        fault_rate: 0.1,
        faults: FaultKinds::from_kinds([
            FaultKind::Http500,
            FaultKind::Drop,
            FaultKind::Json,
            FaultKind::Truncate,
        ]),
        review_rate: 0.2,
        banned: vec!["禁词".into()],
        ..quick_sim()
    })
    .await;
    let mut yaml = job("secrets", 16);
    yaml.push_str("  - 含有禁词的提示\n");
    let job_path = env.write("job.yaml", &yaml);
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let run = |args: Vec<String>, sk: &'static str| {
        let mut all = args;
        all.push("-vv".into());
        let mut cmd = env.cmd(&all.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.env("EB_AK", AK)
            .env("EB_SK", sk)
            .env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "1");
        async move {
            tokio::time::timeout(DEADLINE, cmd.output())
                .await
                .expect("in time")
                .expect("ran")
        }
    };
    let limits: Vec<String> = env.limits.clone();
    let with_limits = |mut a: Vec<String>| {
        a.extend(limits.iter().cloned());
        a
    };

    // A wrong secret key first: refused, and not echoed.
    let out = run(
        with_limits(vec!["submit".into(), job_path.display().to_string()]),
        WRONG_SK,
    )
    .await;
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("refused the credentials"),
        "{}",
        text(&out.stderr)
    );
    outputs.push(("wrong-key submit stdout".into(), out.stdout));
    outputs.push(("wrong-key submit stderr".into(), out.stderr));

    // The batch, with every log line on.
    let out = run(
        with_limits(vec!["submit".into(), job_path.display().to_string()]),
        SK,
    )
    .await;
    let code = out.status.code();
    assert!(
        code == Some(3),
        "finished with the censored item failed: {code:?}\n{}",
        String::from_utf8_lossy(&out.stderr[out.stderr.len().saturating_sub(3000)..])
    );
    outputs.push(("submit stdout".into(), out.stdout));
    outputs.push(("submit stderr".into(), out.stderr));
    for args in [
        vec!["status".to_string(), "--json".into()],
        vec!["verify".into()],
        vec!["retry".into(), "--failed".into()],
        with_limits(vec!["resume".into()]),
    ] {
        let out = run(args.clone(), SK).await;
        outputs.push((format!("{args:?} stdout"), out.stdout));
        outputs.push((format!("{args:?} stderr"), out.stderr));
    }
    let stats = env.stats();
    assert!(stats.error_count(111) > 0, "tokens expired mid-run");
    assert!(stats.tokens_issued > 2, "new tokens were fetched");
    assert!(stats.faults.values().sum::<u64>() > 0, "faults struck");
    let log_bytes: usize = outputs.iter().map(|(_, b)| b.len()).sum();
    assert!(
        log_bytes > 100_000,
        "trace logging was on: {log_bytes} bytes"
    );
    assert!(
        outputs
            .iter()
            .any(|(_, b)| occurrences(b, "TRACE") > 0 && occurrences(b, "hyper") > 0),
        "the HTTP stack's trace lines were captured"
    );

    // Logs and errors: neither key's secret, no token.
    for (what, bytes) in &outputs {
        for secret in [SK, WRONG_SK] {
            assert_eq!(occurrences(bytes, secret), 0, "{secret} in {what}");
        }
        assert_eq!(occurrences(bytes, TOKEN_MARK), 0, "a token in {what}");
        assert_eq!(
            occurrences(bytes, "access_token="),
            0,
            "a token URL in {what}"
        );
    }
    // Every file the runs left: store (with WAL, shared memory, lock), archive, job.
    let files = files_below(env.dir.path());
    assert!(files.iter().any(|f| f.starts_with("runner.db")));
    assert!(files.iter().any(|f| f.ends_with(".png")));
    for f in &files {
        let bytes = std::fs::read(env.dir.path().join(f)).unwrap();
        for secret in [SK, WRONG_SK] {
            assert_eq!(occurrences(&bytes, secret), 0, "{secret} in {f}");
        }
        if !f.starts_with("runner.db") {
            assert_eq!(occurrences(&bytes, TOKEN_MARK), 0, "a token in {f}");
        }
    }

    // The store, by SQL: the token lives in its cache row and nowhere else.
    let pool = store_sql(&env.db).await;
    let token: String = sqlx::query_scalar("SELECT access_token FROM token_cache WHERE id = 1")
        .fetch_one(&pool)
        .await
        .expect("a cached token");
    assert!(token.contains(TOKEN_MARK), "{}", token.len());
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut hits: Vec<(String, String, i64)> = Vec::new();
    let mut columns_searched = 0;
    for table in &tables {
        let cols: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("name"))
        .collect();
        for col in cols {
            columns_searched += 1;
            for needle in [token.as_str(), TOKEN_MARK, SK, WRONG_SK] {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM \"{table}\" WHERE instr(CAST(\"{col}\" AS TEXT), ?) > 0"
                )))
                .bind(needle)
                .fetch_one(&pool)
                .await
                .unwrap();
                if n > 0 {
                    let what = if needle == token { "token" } else { needle };
                    hits.push((format!("{table}.{col}"), what.to_string(), n));
                }
            }
        }
    }
    pool.close().await;
    assert!(
        columns_searched > 40,
        "every column searched: {columns_searched}"
    );
    assert_eq!(
        hits,
        vec![
            (
                "token_cache.access_token".to_string(),
                "token".to_string(),
                1
            ),
            (
                "token_cache.access_token".to_string(),
                TOKEN_MARK.to_string(),
                1
            ),
        ],
        "the token only in its cache row, the secret key nowhere"
    );
}
