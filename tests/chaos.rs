//! Chaos: a batch of 200 items against a simulator with every fault on, the runner killed with
//! SIGKILL at 24 moments chosen at random, resumed each time, then every invariant checked.
//!
//! The kill moments are not sleeps: each run is killed once the simulator has received a random
//! number (0 to 50) of further requests since the run started, drawn from a ChaCha generator
//! whose seed is printed (`RUNNER_CHAOS_SEED=N` replays it). The figures are printed at the end
//! and recorded in RELIABILITY.md.

#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/reliability.rs"]
mod reliability;

use std::collections::BTreeMap;
use std::time::Duration;

use pipeline::{DEADLINE, Env, kill9, text};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reliability::{Allow, Policy, check_batch, events, item_rows, job, plan_items};
use runner::sim::{FaultKinds, SimConfig};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Items in the batch.
const ITEMS: usize = 200;
/// SIGKILLs before the batch may finish.
const KILLS: usize = 24;
/// The seed when `RUNNER_CHAOS_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_121;

/// What was in flight when a run was killed, read from the store afterwards: the item states
/// between pending and done that were present, or `start` when there were none.
fn phase(states: &BTreeMap<String, usize>) -> String {
    let present: Vec<&str> = ["submitting", "running", "fetching"]
        .into_iter()
        .filter(|s| states.get(*s).copied().unwrap_or(0) > 0)
        .collect();
    if present.is_empty() {
        "start".into()
    } else {
        present.join("+")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing_unreported() {
    let seed = std::env::var("RUNNER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("chaos seed {seed} (RUNNER_CHAOS_SEED={seed} replays these kill moments)");
    let started = Instant::now();
    let env = Env::new(SimConfig {
        gen_ms: (30, 300),
        submit_qps: Some(50.0),
        query_qps: Some(100.0),
        concurrency: Some(16),
        // Tokens die after 3 s although announced for 30 days: 111 mid-run, refreshed.
        token_ttl: Duration::from_secs(3),
        token_expires_in: Some(Duration::from_secs(30 * 24 * 3600)),
        review_rate: 0.1,
        block_rate: 0.05,
        fault_rate: 0.04,
        faults: FaultKinds::all(),
        slow_ms: 300,
        burst_rate: 0.01,
        burst_codes: vec![13, 15, 18],
        burst_len: 2,
        seed,
        ..SimConfig::default()
    })
    .await;
    let job_path = env.write("chaos.yaml", &job("chaos", ITEMS));
    let job_s = job_path.to_str().expect("UTF-8 path");
    let plan = plan_items(&env, &job_path).await;
    assert_eq!(plan.len(), ITEMS);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kills = 0;
    let mut runs = 0;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut natural: Vec<i32> = Vec::new();
    let mut loaded = false;
    while kills < KILLS {
        // `submit` is idempotent; `resume` needs the items loaded by an earlier `submit`.
        let args: Vec<&str> = if !loaded || rng.random_bool(0.5) {
            vec!["submit", job_s]
        } else {
            vec!["resume"]
        };
        let after: u64 = rng.random_range(0..=50);
        let before = events(&env.stats());
        let mut child = env.start(&args);
        let deadline = Instant::now() + DEADLINE;
        let killed = loop {
            if let Some(status) = child.try_wait().expect("poll the runner") {
                let mut err = Vec::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_end(&mut err).await;
                }
                let code = status.code().unwrap_or(-1);
                assert!(
                    code == 0 || code == 4,
                    "a run ended with exit {code}:\n{}",
                    text(&err)
                );
                natural.push(code);
                break false;
            }
            if events(&env.stats()) >= before + after {
                kill9(&mut child).await;
                break true;
            }
            assert!(
                Instant::now() < deadline,
                "run {runs} neither ended nor progressed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        runs += 1;
        let items = item_rows(&env.db, "chaos").await;
        loaded = items.len() == ITEMS;
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for it in &items {
            *states.entry(it.state.clone()).or_default() += 1;
        }
        if killed {
            kills += 1;
            *phases.entry(phase(&states)).or_default() += 1;
        } else if natural.last() == Some(&0) {
            break;
        }
    }
    let kill_secs = started.elapsed().as_secs_f64();
    let finals = reliability::resume_to_completion(&env, 10).await;
    let fig = check_batch(&env, "chaos", &plan, Policy::default(), Allow::default()).await;
    let stats = env.stats();
    let report = format!(
        "chaos seed {seed}: {} items, {} images ({} archived, {} skipped, {} lost); {kills} SIGKILLs in {runs} runs \
         (killed while: {phases:?}; runs that ended by themselves: {natural:?}; final runs: {finals:?}); \
         {} ambiguous items ({} ambiguous submits), {} extra submits at the sim, {} sim submits; \
         faults {:?}, errors {:?}; {:.1}s with kills, {:.1}s in all",
        fig.items,
        fig.images,
        fig.archived,
        fig.skipped,
        fig.lost,
        fig.ambiguous_items,
        fig.ambiguous_submits,
        fig.extra_submits,
        fig.sim_submits,
        stats.faults,
        stats.errors,
        kill_secs,
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{report}");
    assert!(kills >= 20, "only {kills} kills before the batch finished");
    assert_eq!(fig.done, ITEMS, "{report}");
    assert!(
        stats.error_count(111) > 0,
        "tokens expired mid-run: {report}"
    );
    for what in ["submitting", "running", "fetching"] {
        assert!(
            phases.keys().any(|p| p.contains(what)),
            "some kill hit {what} work: {report}"
        );
    }
}
