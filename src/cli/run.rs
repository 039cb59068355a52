//! What `submit` and `resume` share: the store, the archive, the API endpoint (real or the
//! in-process simulator), the limits, the time box, interrupts, progress and the summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Exit, ExitError};
use crate::archive::LocalArchive;
use crate::client::{Client, ClientConfig, Credentials, Secret};
use crate::scheduler::{self, Limits, RunOptions, RunSummary, StopReason};
use crate::sim::{SimConfig, SimHandle};
use crate::store::{LoadSummary, Store};

/// The store location, shared by every command that reads it.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// SQLite store of batches, items and images.
    #[arg(long, env = "RUNNER_DB", default_value = "runner.db")]
    pub db: PathBuf,
}

/// Options of a run (`submit`, `resume`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Folder the images, sidecars and manifests are written to.
    #[arg(long, env = "RUNNER_ARCHIVE", default_value = "archive")]
    pub archive: PathBuf,
    /// Run against a simulator started in this process (no credentials needed). Its limits are
    /// generous so a demo finishes fast; explicit limit flags still apply.
    #[arg(long, conflicts_with = "base_url")]
    pub sim: bool,
    /// API base URL. Credentials come from EB_AK + EB_SK, or EB_ACCESS_TOKEN.
    #[arg(long, env = "RUNNER_BASE_URL")]
    pub base_url: Option<String>,
    /// Submits per second [default: 1].
    #[arg(long, env = "RUNNER_SUBMIT_QPS")]
    pub submit_qps: Option<f64>,
    /// Queries per second [default: 2].
    #[arg(long, env = "RUNNER_QUERY_QPS")]
    pub query_qps: Option<f64>,
    /// Images in generation at once (a task of image_num n holds n) [default: 2].
    #[arg(long, env = "RUNNER_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// Downloads at once.
    #[arg(long, env = "RUNNER_DOWNLOADS", default_value_t = 4)]
    pub downloads: usize,
    /// Attempts per item for transient failures before it is marked failed.
    #[arg(long, default_value_t = 8)]
    pub max_attempts: i64,
    /// Stop submitting after this long (e.g. `50m`), drain what is running, exit 4 if work remains.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_runtime: Option<Duration>,
    /// Lifetime assumed for image URLs whose signature does not say.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    pub url_ttl: Duration,
    /// Print one JSON summary object on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// At the end of the run, write Prometheus text-format metrics of the whole store to FILE
    /// (atomically, for node_exporter's textfile collector; see the README).
    #[arg(long, env = "RUNNER_METRICS", value_name = "FILE")]
    pub metrics: Option<PathBuf>,
}

/// Real-API defaults.
const DEFAULT_LIMITS: (f64, f64, u32) = (1.0, 2.0, 2);

/// The in-process simulator of `--sim`: the real protocol with generous limits and short
/// generation times, so the README's demo takes seconds.
fn demo_sim_config() -> SimConfig {
    SimConfig {
        gen_ms: (400, 1200),
        submit_qps: Some(10.0),
        query_qps: Some(20.0),
        concurrency: Some(8),
        review_rate: 0.1,
        block_rate: 0.05,
        seed: 7,
        ..SimConfig::default()
    }
}

/// The summary printed with `--json`.
#[derive(Debug, Serialize)]
struct JsonSummary<'a> {
    exit_code: u8,
    loaded: &'a [(String, LoadSummary)],
    #[serde(flatten)]
    run: &'a RunSummary,
}

/// Opens the store for a run; a busy store is exit 4, a foreign or damaged one exit 1.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    match crate::store::open(&args.db).await {
        Ok(s) => Ok(s),
        Err(e) if e.is_busy() => Err(ExitError::new(Exit::WorkRemaining, e.to_string()).into()),
        Err(e) => Err(ExitError::new(Exit::Runtime, e.to_string()).into()),
    }
}

/// Runs the store's unfinished work for `batches` (all when empty) and reports.
pub async fn execute(
    args: &RunArgs,
    store: Arc<dyn Store>,
    batches: Vec<String>,
    loaded: Vec<(String, LoadSummary)>,
) -> anyhow::Result<Exit> {
    let run_id = store
        .start_run(if loaded.is_empty() {
            "resume"
        } else {
            "submit"
        })
        .await?;
    let mut sim: Option<SimHandle> = None;
    let mut sim_limits = None;
    let (base_url, credentials) = if args.sim {
        let config = demo_sim_config();
        sim_limits = Some((
            config.submit_qps.unwrap_or(f64::INFINITY),
            config.query_qps.unwrap_or(f64::INFINITY),
            config.concurrency.unwrap_or(u32::MAX),
        ));
        let handle = crate::sim::spawn(config)
            .await
            .context("cannot start the simulator")?;
        let url = handle.base_url();
        tracing::info!(base_url = %url, "simulator started in-process");
        sim = Some(handle);
        (
            url,
            Credentials::Keys {
                ak: "sim-ak".into(),
                sk: Secret::new("sim-sk"),
            },
        )
    } else {
        let credentials = credentials_from_env()?;
        let base = args
            .base_url
            .clone()
            .unwrap_or_else(|| "https://aip.baidubce.com".into());
        (base, credentials)
    };
    let defaults = sim_limits.unwrap_or(DEFAULT_LIMITS);
    let limits = Limits {
        submit_qps: args.submit_qps.unwrap_or(defaults.0),
        query_qps: args.query_qps.unwrap_or(defaults.1),
        concurrency: args.concurrency.unwrap_or(defaults.2).max(1),
        downloads: args.downloads.max(1),
        max_attempts: args.max_attempts.max(1),
    };
    let client = Arc::new(Client::new(
        ClientConfig::new(base_url),
        credentials,
        Some(store.clone()),
    )?);
    let halt = CancellationToken::new();
    spawn_signal_handler(halt.clone());
    let progress = spawn_progress(store.clone(), batches.clone(), halt.child_token());

    let opts = RunOptions {
        batches,
        limits,
        deadline: args.max_runtime.map(|d| tokio::time::Instant::now() + d),
        assumed_url_ttl: args.url_ttl,
    };
    let result = scheduler::run(
        store.clone(),
        client,
        Arc::new(LocalArchive::new(&args.archive)),
        opts,
        halt.clone(),
    )
    .await;
    progress.cancel();
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    let summary = match result {
        Ok(s) => s,
        Err(scheduler::SchedulerError::Store(e)) if e.is_busy() => {
            // Another program's lock on the store stopped the run: nothing is lost (every state
            // change is a committed transaction) and a later run goes on. The run record is left
            // open: writing it would wait out the lock again.
            return Err(ExitError::new(
                Exit::WorkRemaining,
                format!(
                    "the store {} is locked by another program ({e}); the run stopped with work remaining: run `runner resume` once it is free",
                    store.location()
                ),
            )
            .into());
        }
        Err(e) => {
            let _ = store
                .end_run(run_id, Exit::Runtime as i32, &e.to_string())
                .await;
            crate::report::metrics::write_after_run(
                store.as_ref(),
                args.metrics.as_deref(),
                Exit::Runtime as i32,
                None,
            )
            .await;
            return Err(ExitError::new(Exit::Runtime, e.to_string()).into());
        }
    };
    let exit = exit_for(&summary);
    store
        .end_run(
            run_id,
            exit as i32,
            &serde_json::to_string(&summary).unwrap_or_default(),
        )
        .await?;
    report(&summary, exit);
    if args.json {
        let out = JsonSummary {
            exit_code: exit as u8,
            loaded: &loaded,
            run: &summary,
        };
        println!("{}", serde_json::to_string(&out)?);
    }
    crate::report::metrics::write_after_run(
        store.as_ref(),
        args.metrics.as_deref(),
        exit as i32,
        Some(summary.elapsed_secs),
    )
    .await;
    store.close().await;
    Ok(exit)
}

fn exit_for(s: &RunSummary) -> Exit {
    let remaining = s.pending + s.in_flight > 0;
    match s.stop {
        StopReason::Fatal => Exit::Runtime,
        StopReason::Deadline | StopReason::Interrupted | StopReason::QuotaParked if remaining => {
            Exit::WorkRemaining
        }
        _ if s.failed_total > 0 || s.lost_total > 0 => Exit::SomeFailed,
        _ if remaining => Exit::WorkRemaining,
        _ => Exit::Done,
    }
}

fn report(s: &RunSummary, exit: Exit) {
    let stop = match s.stop {
        StopReason::Finished => "finished",
        StopReason::Deadline => "time box reached",
        StopReason::Interrupted => "interrupted",
        StopReason::QuotaParked => "daily quota used up",
        StopReason::Fatal => "stopped by an error",
    };
    eprintln!(
        "{stop}: {} submitted, {} succeeded, {} images archived, {} failed, {} lost in {:.1}s; {} pending, {} in flight",
        s.submitted,
        s.succeeded,
        s.archived,
        s.failed,
        s.lost,
        s.elapsed_secs,
        s.pending,
        s.in_flight
    );
    if !s.ambiguous.is_empty() {
        eprintln!(
            "note: {} submit(s) were ambiguous (no answer, or interrupted by a crash) and were submitted again; \
             the API may have run them twice: {}",
            s.ambiguous.len(),
            s.ambiguous.join(", ")
        );
    }
    if let Some(f) = &s.fatal {
        eprintln!("error: {f}");
    }
    match exit {
        Exit::SomeFailed => eprintln!(
            "{} item(s) failed and {} image(s) were lost in this store: see `runner status`; `runner retry --failed` requeues failed items",
            s.failed_total, s.lost_total
        ),
        Exit::WorkRemaining => eprintln!("work remains: run `runner resume` to continue"),
        _ => {}
    }
}

/// Credentials from the environment: EB_ACCESS_TOKEN, or EB_AK + EB_SK.
fn credentials_from_env() -> anyhow::Result<Credentials> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(t) = get("EB_ACCESS_TOKEN") {
        return Ok(Credentials::Token(Secret::new(t)));
    }
    match (get("EB_AK"), get("EB_SK")) {
        (Some(ak), Some(sk)) => Ok(Credentials::Keys {
            ak,
            sk: Secret::new(sk),
        }),
        _ => Err(ExitError::new(
            Exit::Invalid,
            "no credentials: set EB_AK and EB_SK (API key and secret key), or EB_ACCESS_TOKEN; \
             or pass --sim to run against the built-in simulator",
        )
        .into()),
    }
}

/// First Ctrl-C or SIGTERM: stop submitting, finish in-flight writes. A second one: exit at once
/// (the store stays consistent: every state change is a committed transaction).
fn spawn_signal_handler(halt: CancellationToken) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            wait_for_signal().await;
            if first {
                eprintln!(
                    "interrupted: finishing what is in flight (press Ctrl-C again to quit at once)"
                );
                halt.cancel();
                first = false;
            } else {
                eprintln!("interrupted again: quitting now");
                std::process::exit(Exit::WorkRemaining as i32);
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Progress: one redrawn line on a terminal, a log line every 10 s otherwise.
fn spawn_progress(
    store: Arc<dyn Store>,
    batches: Vec<String>,
    stop: CancellationToken,
) -> CancellationToken {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let token = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = token.cancelled() => break,
            }
            let Ok(status) = store.status().await else {
                continue;
            };
            let mut line = String::new();
            for s in status
                .iter()
                .filter(|s| batches.is_empty() || batches.contains(&s.batch))
            {
                let total: i64 = s.items.values().sum();
                let get = |k: &str| s.items.get(k).copied().unwrap_or(0);
                line.push_str(&format!(
                    "{}: {}/{} done, {} running, {} fetching, {} failed, {} images archived  ",
                    s.batch,
                    get("done"),
                    total,
                    get("running"),
                    get("fetching"),
                    get("failed"),
                    s.images.get("archived").copied().unwrap_or(0)
                ));
            }
            if tty {
                eprint!("\r\x1b[2K{}", line.trim_end());
            } else {
                tracing::info!(progress = %line.trim_end());
            }
        }
        if tty {
            eprint!("\r\x1b[2K");
        }
    });
    stop
}
