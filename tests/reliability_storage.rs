//! Storage faults: the archive full or unwritable, the store held by another runner or locked
//! by another program, the store file foreign, not a database, or damaged. Each gives a clear
//! error with the documented exit code (1 runtime error, 4 work remaining), loses nothing
//! already archived, and a later run finishes once the fault is gone.
//!
//! The archive faults use a tmpfs (the tests run as root, as CI does); where mounting is not
//! permitted they are skipped with a loud message, unless `RUNNER_REQUIRE_TMPFS=1`. The
//! unwritable-folder test needs no mount and runs everywhere.

#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/reliability.rs"]
mod reliability;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use pipeline::{DEADLINE, Env, assert_exit, quick_sim, text};
use reliability::{
    Allow, Policy, Tmpfs, archived_on_disk, check_batch, job, plan_items, snapshot, store_sql,
};
use runner::sim::SimConfig;
use serde_json::Value;

/// A simulator slow enough that a one-second time box leaves most of a batch for later.
fn slowish() -> SimConfig {
    SimConfig {
        gen_ms: (200, 400),
        ..quick_sim()
    }
}

/// Runs `submit` time-boxed to one second with two slots: part of the batch is archived, the
/// rest left for later (exit 4).
async fn partial_run(env: &Env, job: &Path) -> Output {
    let mut cmd = env.cmd(&[
        "submit",
        job.to_str().expect("UTF-8 path"),
        "--max-runtime=1s",
        "--concurrency=2",
        "--submit-qps=40",
        "--query-qps=80",
    ]);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("in time")
        .expect("ran");
    assert_exit(&out, 4);
    out
}

/// The batch of `name` with `n` items, its plan, and a first run that archived part of it.
async fn half_done(env: &Env, name: &str, n: usize) -> (std::path::PathBuf, Vec<Value>) {
    let job_path = env.write("job.yaml", &job(name, n));
    let plan = plan_items(env, &job_path).await;
    partial_run(env, &job_path).await;
    let archived = archived_on_disk(env, name).await;
    assert!(
        !archived.is_empty(),
        "the first run archived part of the batch"
    );
    assert!(archived.len() < n, "and left work for later");
    (job_path, plan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_stops_the_run_with_exit_1_naming_the_path_and_a_later_run_finishes() {
    let env = Env::new(quick_sim()).await;
    // About five images fit in 2 MiB: the disk fills in the middle of the batch.
    let Some(fs) = Tmpfs::mount(&env.archive, "2m") else {
        return;
    };
    let job_path = env.write("job.yaml", &job("full", 24));
    let plan = plan_items(&env, &job_path).await;
    let out = env.run(&["submit", job_path.to_str().unwrap()]).await;
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&env.archive.display().to_string()),
        "the message names the archive: {err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    let kept = archived_on_disk(&env, "full").await;
    assert!(
        !kept.is_empty(),
        "images were archived before the disk filled"
    );
    assert!(kept.len() < plan.len(), "the disk filled midway");

    // The fault gone (more room), a later run finishes; what was archived stays as it was.
    fs.remount("size=256m");
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let after = archived_on_disk(&env, "full").await;
    for image in &kept {
        assert!(after.contains(image), "{image:?} kept across the fault");
    }
    let fig = check_batch(&env, "full", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_archive_stops_the_run_with_exit_1_naming_the_path_and_a_later_run_finishes() {
    let env = Env::new(slowish()).await;
    let Some(fs) = Tmpfs::mount(&env.archive, "256m") else {
        return;
    };
    let (_job, plan) = half_done(&env, "readonly", 24).await;
    let before = snapshot(&env.archive);
    fs.remount("ro");
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&env.archive.display().to_string()),
        "the message names the archive: {err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        snapshot(&env.archive),
        before,
        "nothing archived was touched"
    );

    fs.remount("rw");
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "readonly", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_batch_folder_stops_the_run_with_exit_1_naming_it_and_a_later_run_finishes() {
    // No mount needed: the batch's temp folder replaced by a file, which nobody can write into
    // (root included).
    let env = Env::new(slowish()).await;
    let (_job, plan) = half_done(&env, "blocked", 24).await;
    let tmp = env.archive.join("blocked/.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::write(&tmp, b"not a folder").unwrap();
    let before = snapshot(&env.archive);
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&tmp.display().to_string()),
        "the message names the path: {err}"
    );
    assert_eq!(
        snapshot(&env.archive),
        before,
        "nothing archived was touched"
    );
    let requests = env.stats().submit_requests;
    assert!(requests > 0);

    std::fs::remove_file(&tmp).unwrap();
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "blocked", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_by_another_runner_is_refused_with_exit_4_and_the_holder_finishes() {
    // Generations of 1 to 2 s: the holder is still at work while the others are refused.
    let env = Env::new(SimConfig {
        gen_ms: (1000, 2000),
        ..quick_sim()
    })
    .await;
    let job_path = env.write("job.yaml", &job("held", 12));
    let plan = plan_items(&env, &job_path).await;
    let mut holder = env.start(&["submit", job_path.to_str().unwrap()]);
    env.wait_for("the holder at work", |s| s.submits >= 1).await;
    let submits = env.stats().submit_requests;

    let out = env.run(&["resume"]).await;
    assert_exit(&out, 4);
    let err = text(&out.stderr);
    assert!(err.contains("in use by another runner process"), "{err}");
    assert!(err.contains("pid "), "the holder is named: {err}");
    let out = env.plain(&["verify"]).await;
    assert_exit(&out, 4);

    let status = tokio::time::timeout(DEADLINE, holder.wait())
        .await
        .expect("the holder finished in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(env.stats().submit_requests >= submits);
    let fig = check_batch(&env, "held", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_program_is_exit_4_and_a_later_run_finishes() {
    let env = Env::new(slowish()).await;
    let (_job, plan) = half_done(&env, "locked", 12).await;
    // Another program (here: this test) holds a write transaction on the SQLite file.
    let other = runner::store::pool_options()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&env.db))
        .await
        .unwrap();
    let mut tx = other.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM items")
        .execute(&mut *tx)
        .await
        .unwrap();
    let before = snapshot(&env.archive);
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 4);
    let err = text(&out.stderr);
    assert!(err.contains("locked by another program"), "{err}");
    assert_eq!(
        snapshot(&env.archive),
        before,
        "nothing archived was touched"
    );

    tx.rollback().await.unwrap();
    other.close().await;
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "locked", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_program_midway_stops_the_run_with_exit_4() {
    let env = Env::new(SimConfig {
        gen_ms: (300, 600),
        ..quick_sim()
    })
    .await;
    let job_path = env.write("job.yaml", &job("midlock", 40));
    let plan = plan_items(&env, &job_path).await;
    let mut run = env.start(&["submit", job_path.to_str().unwrap()]);
    env.wait_for("the run at work", |s| s.downloads >= 2).await;
    let other = runner::store::pool_options()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&env.db)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let mut tx = other.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM items")
        .execute(&mut *tx)
        .await
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, run.wait())
        .await
        .expect("the run stopped in time")
        .expect("wait");
    let mut err = Vec::new();
    if let Some(mut stderr) = run.stderr.take() {
        use tokio::io::AsyncReadExt;
        stderr.read_to_end(&mut err).await.unwrap();
    }
    let err = text(&err);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(
        err.contains("locked by another program") && err.contains("runner resume"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    other.close().await;
    archived_on_disk(&env, "midlock").await;

    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "midlock", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_sqlite_file_is_refused_untouched_with_exit_1() {
    let env = Env::new(quick_sim()).await;
    {
        let pool = runner::store::pool_options()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&env.db)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO photos (name) VALUES ('holiday')")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let before = std::fs::read(&env.db).unwrap();
    let job_path = env.write("job.yaml", &job("foreign", 2));
    for args in [
        vec!["submit", job_path.to_str().unwrap()],
        vec!["resume"],
        vec!["verify"],
        vec!["status"],
    ] {
        let out = env.plain(&args).await;
        assert_exit(&out, 1);
        let err = text(&out.stderr);
        assert!(
            err.contains("is not a runner store") && err.contains("photos"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        before,
        "not a byte changed"
    );
    for suffix in ["-wal", "-shm"] {
        let mut p = env.db.clone().into_os_string();
        p.push(suffix);
        assert!(!Path::new(&p).exists(), "{suffix} created beside it");
    }
    assert_eq!(env.stats().submit_requests, 0);
    assert!(!env.archive.exists(), "no archive written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_refused_with_exit_1() {
    let env = Env::new(quick_sim()).await;
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&env.db, &garbage).unwrap();
    let job_path = env.write("job.yaml", &job("garbage", 2));
    for args in [vec!["submit", job_path.to_str().unwrap()], vec!["status"]] {
        let out = env.plain(&args).await;
        assert_exit(&out, 1);
        let err = text(&out.stderr);
        assert!(
            err.contains("damaged or not an SQLite database"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        garbage,
        "not a byte changed"
    );
    assert_eq!(env.stats().submit_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_with_exit_1_and_the_restored_store_finishes() {
    let env = Env::new(slowish()).await;
    let (_job, plan) = half_done(&env, "damaged", 24).await;
    // The run closed the store cleanly: one file, no WAL. Keep a backup, then damage a page.
    let backup = env.dir.path().join("backup.db");
    std::fs::copy(&env.db, &backup).unwrap();
    let page_size: i64 = {
        let pool = store_sql(&env.db).await;
        let n = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    let mut bytes = std::fs::read(&env.db).unwrap();
    let page = page_size as usize;
    assert!(bytes.len() >= 4 * page);
    bytes[2 * page..3 * page].fill(0xA5);
    std::fs::write(&env.db, &bytes).unwrap();
    let before = snapshot(&env.archive);
    let submits = env.stats().submit_requests;
    for args in [vec!["resume"], vec!["verify"]] {
        let out = env.plain(&args).await;
        assert_exit(&out, 1);
        let err = text(&out.stderr);
        assert!(
            err.contains("is damaged") || err.contains("damaged or not an SQLite database"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        snapshot(&env.archive),
        before,
        "nothing archived was touched"
    );
    assert_eq!(env.stats().submit_requests, submits, "nothing submitted");

    std::fs::copy(&backup, &env.db).unwrap();
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    let fig = check_batch(&env, "damaged", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.done, plan.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_image_changed_on_disk_is_caught_by_verify_and_restored_by_resume() {
    let env = Env::new(quick_sim()).await;
    let job_path = env.write("job.yaml", &job("swapped", 6));
    let plan = plan_items(&env, &job_path).await;
    assert_exit(&env.run(&["submit", job_path.to_str().unwrap()]).await, 0);
    let archived = archived_on_disk(&env, "swapped").await;
    assert!(archived.len() >= 3);
    let dir = env.archive.join("swapped");
    // One image replaced by another valid PNG of the same size, one cut short, one deleted.
    let (swapped, _) = &archived[0];
    let (w, h) = {
        let d = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(dir.join(swapped)).unwrap(),
        ));
        let r = d.read_info().unwrap();
        (r.info().width, r.info().height)
    };
    let other = runner::sim::png::render_png("另一张图", w, h, 0).unwrap();
    std::fs::write(dir.join(swapped), other).unwrap();
    let (cut, _) = &archived[1];
    let bytes = std::fs::read(dir.join(cut)).unwrap();
    std::fs::write(dir.join(cut), &bytes[..bytes.len() / 2]).unwrap();
    let (gone, _) = &archived[2];
    std::fs::remove_file(dir.join(gone)).unwrap();

    let out = env.plain(&["verify"]).await;
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("1 missing, 2 corrupt"),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&["resume"]).await;
    assert_exit(&out, 0);
    // Back to the simulator's own images, every one (check_batch hashes each against it).
    let fig = check_batch(&env, "swapped", &plan, Policy::default(), Allow::default()).await;
    assert_eq!(fig.archived, archived.len());
}
