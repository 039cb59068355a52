//! The scheduler: the submit, poll and fetch loops.
//!
//! - Submit: pending items in batch and file order, each waiting for its image slots (a task of
//!   `image_num` n holds n) and the submit limiter. `submitting` is committed before the POST.
//!   13/18 cool the loop down, 15 shrinks the slots until a task finishes, 17 parks submits until
//!   the quota resets (midnight Asia/Shanghai) while polling and archiving go on.
//! - Poll: one query at a time under the query limiter, always for the task whose due time is
//!   earliest. Due times come from the task's progress (extrapolated to 1.0) and, before any
//!   progress is seen, from the generation times observed so far, so the budget goes where a
//!   finished task is most likely.
//! - Fetch: a few download workers, soonest-expiring URL first. An expired URL sends its task back
//!   to the poller for fresh URLs.
//!
//! Every loop selects on the halt token (first Ctrl-C): in-flight work completes and is recorded,
//! nothing new starts.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::TryStreamExt;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{
    ErrorClass, QueryData, SUB_ERR_CENSORED, SubmitRequest, TaskStatus, next_quota_reset, now_ms,
};
use crate::archive::{self, Archive, ArchiveError, image_rel_path};
use crate::client::{self, Api, ClientError};
use crate::jobfile::ArchivePolicy;
use crate::store::{EventKind, FetchImage, ListedImage, PendingItem, Store, StoreError};

mod backoff;
mod estimate;
mod fetch;
mod maintenance;
mod outcome;
mod pacer;
mod poll;
mod submit;
mod task;

use backoff::*;
use estimate::*;
use fetch::*;
pub use maintenance::{Verified, rewrite_manifest, verify};
use outcome::*;
use pacer::Pacer;
use poll::*;
use submit::*;
use task::*;

/// Account limits the scheduler keeps to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Submits per second.
    pub submit_qps: f64,
    /// Queries per second.
    pub query_qps: f64,
    /// Images in generation at once.
    pub concurrency: u32,
    /// Downloads at once.
    pub downloads: usize,
    /// Attempts per item for transient failures before it is marked failed.
    pub max_attempts: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            submit_qps: 1.0,
            query_qps: 2.0,
            concurrency: 2,
            downloads: 4,
            max_attempts: 8,
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Batches to work on; empty means every batch in the store.
    pub batches: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Stop submitting at this time (`--max-runtime`), then drain what is running.
    pub deadline: Option<Instant>,
    /// Lifetime assumed for image URLs whose signature does not say.
    pub assumed_url_ttl: Duration,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Nothing left to do.
    Finished,
    /// `--max-runtime` reached; running work drained.
    Deadline,
    /// Interrupted (Ctrl-C / SIGTERM).
    Interrupted,
    /// Only quota-parked work is left.
    QuotaParked,
    /// A fatal error (account refused, disk failed).
    Fatal,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Why it ended.
    pub stop: StopReason,
    /// The fatal error, when `stop` is `fatal`.
    pub fatal: Option<String>,
    /// Tasks submitted in this run.
    pub submitted: u64,
    /// Tasks that succeeded in this run.
    pub succeeded: u64,
    /// Items failed in this run.
    pub failed: u64,
    /// Images archived in this run.
    pub archived: u64,
    /// Images lost in this run.
    pub lost: u64,
    /// Times fresh URLs were asked for (an image URL expired, or was about to, before download).
    pub url_refreshes: u64,
    /// Item keys whose submit was ambiguous (recovered at start or unanswered in this run); they
    /// are submitted again: at-least-once in that window.
    pub ambiguous: Vec<String>,
    /// API error answers seen in this run, by code.
    pub errors: BTreeMap<i64, u64>,
    /// Queries sent in this run.
    pub queries: u64,
    /// Items still pending (not yet submitted) at the end.
    pub pending: i64,
    /// Tasks still running or fetching at the end.
    pub in_flight: i64,
    /// Items failed in the store (all runs) for the batches of this run.
    pub failed_total: i64,
    /// Images lost in the store (all runs) for the batches of this run.
    pub lost_total: i64,
    /// Wall time of the run in seconds.
    pub elapsed_secs: f64,
}

/// Errors that end a run abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

#[derive(Debug, Default)]
struct State {
    pub(super) slots_held: u32,
    pub(super) slot_cap: u32,
    pub(super) running: Running,
    pub(super) requeued: Vec<PendingItem>,
    pub(super) fetch_ready: BinaryHeap<Reverse<Queued>>,
    pub(super) fetch_delayed: Vec<(Instant, FetchImage)>,
    pub(super) fetch_inflight: usize,
    /// Every image the fetch pipeline holds (queued, delayed, downloading or awaiting URLs):
    /// each is owned once, so a refresh or a restart never queues it twice.
    pub(super) fetch_owned: HashSet<(String, u32)>,
    /// Images waiting for fresh URLs, by item key.
    pub(super) awaiting_urls: HashMap<String, Vec<FetchImage>>,
    pub(super) refreshes: HashMap<(String, u32), u32>,
    pub(super) submit_done: bool,
    pub(super) submit_inflight: usize,
    pub(super) submit_pause_until: Option<Instant>,
    pub(super) rate_strikes: u32,
    pub(super) quota_parked: bool,
    pub(super) durations: Durations,
    pub(super) seq: u64,
    pub(super) stop: Option<StopReason>,
    pub(super) fatal: Option<String>,
    pub(super) summary_errors: BTreeMap<i64, u64>,
    pub(super) submitted: u64,
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    pub(super) archived: u64,
    pub(super) lost: u64,
    pub(super) url_refreshes: u64,
    pub(super) queries: u64,
    pub(super) ambiguous: Vec<String>,
}

/// At most this many tasks and images in hand at once (submitting, running, or waiting to be
/// downloaded); past it, submits wait for downloads to catch up. It bounds the run's memory when
/// the limits allow far more submits than downloads, and keeps images from waiting for their
/// download long enough for their URLs to expire. Real accounts' concurrency stays far below.
const MAX_IN_HAND: usize = 2048;

impl State {
    fn backlogged(&self) -> bool {
        self.submit_inflight + self.running.len() + self.fetch_owned.len() >= MAX_IN_HAND
    }

    fn idle(&self) -> bool {
        self.submit_done
            && self.submit_inflight == 0
            && self.running.is_empty()
            && self.fetch_ready.is_empty()
            && self.fetch_delayed.is_empty()
            && self.fetch_inflight == 0
            && self.awaiting_urls.is_empty()
    }

    /// Hands a newly listed image to the fetch pipeline, unless it already holds it.
    fn adopt_fetch(&mut self, image: FetchImage) {
        if self.fetch_owned.insert((image.item_key.clone(), image.idx)) {
            self.push_fetch(image);
        }
    }

    /// Re-queues an image the pipeline already owns.
    fn push_fetch(&mut self, image: FetchImage) {
        self.seq += 1;
        self.fetch_ready.push(Reverse(Queued {
            expires: image.url_expires_at,
            seq: self.seq,
            image,
        }));
    }
}

struct Shared {
    pub(super) store: Arc<dyn Store>,
    pub(super) client: Arc<dyn Api>,
    pub(super) archive: Arc<dyn Archive>,
    pub(super) opts: RunOptions,
    pub(super) state: Mutex<State>,
    pub(super) wake_submit: Notify,
    pub(super) wake_poll: Notify,
    pub(super) wake_fetch: Notify,
    /// First Ctrl-C: finish what is in flight, start nothing new.
    pub(super) halt: CancellationToken,
    /// No more submits (deadline, fatal error).
    pub(super) stop_submits: CancellationToken,
    /// Every loop is done.
    pub(super) done: CancellationToken,
    /// Paces how fast items are taken up for submitting (so few wait in `submitting`).
    pub(super) submit_intake: Pacer,
    /// Paces the POSTs themselves, taken right before each one: the time between the permit and
    /// the request must not vary (a commit in between would bunch requests at the server).
    pub(super) submit_limiter: Pacer,
    pub(super) query_limiter: Pacer,
    /// The archive steps of downloaded images (store record, sidecar, manifest line), run apart
    /// from the download loops so that a download slot is free again once its file is durable,
    /// not only after the store's next commit; each counts in `fetch_inflight` until it is done.
    pub(super) records: TaskTracker,
    /// The first error of an archive step, answered as a loop's error would be.
    pub(super) record_err: Mutex<Option<SchedulerError>>,
    /// Each batch's archive policy.
    pub(super) policies: Mutex<HashMap<String, ArchivePolicy>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the first error of an archive step.
    fn record_failure(&self, e: SchedulerError) {
        self.fail_run(StopReason::Fatal, e.to_string());
        self.record_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    fn wake_all(&self) {
        self.wake_submit.notify_one();
        self.wake_poll.notify_one();
        self.wake_fetch.notify_waiters();
    }

    fn check_idle(&self) {
        if self.state().idle() {
            self.done.cancel();
            self.wake_all();
        }
    }

    fn fail_run(&self, reason: StopReason, message: String) {
        tracing::error!(%message, "stopping the run");
        {
            let mut st = self.state();
            st.stop.get_or_insert(reason);
            st.fatal.get_or_insert(message);
        }
        self.stop_submits.cancel();
        if reason == StopReason::Fatal {
            self.halt.cancel();
        }
        self.wake_all();
    }

    /// The archive policy of a batch, read from the store once per run (a batch loaded while the
    /// run goes on is read when first met).
    async fn policy(&self, batch: &str) -> Result<ArchivePolicy, SchedulerError> {
        if let Some(p) = self
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(batch)
        {
            return Ok(*p);
        }
        let all = self.store.batch_policies().await?;
        let policy = all.get(batch).copied().unwrap_or_default();
        *self.policies.lock().unwrap_or_else(|p| p.into_inner()) = all;
        Ok(policy)
    }

    fn note_error(&self, e: &ClientError) {
        if let Some(code) = e.code() {
            *self.state().summary_errors.entry(code).or_default() += 1;
        }
    }
}

/// Runs the batches until done, stopped, or out of quota.
pub async fn run(
    store: Arc<dyn Store>,
    client: Arc<dyn Api>,
    archive: Arc<dyn Archive>,
    opts: RunOptions,
    halt: CancellationToken,
) -> Result<RunSummary, SchedulerError> {
    let started = Instant::now();
    let (batches, state) = prepare(store.as_ref(), archive.as_ref(), &opts).await?;
    let shared = Arc::new(Shared {
        submit_intake: Pacer::new(opts.limits.submit_qps),
        submit_limiter: Pacer::new(opts.limits.submit_qps),
        query_limiter: Pacer::new(opts.limits.query_qps),
        store,
        client,
        archive,
        state: Mutex::new(state),
        wake_submit: Notify::new(),
        wake_poll: Notify::new(),
        wake_fetch: Notify::new(),
        stop_submits: halt.child_token(),
        halt,
        done: CancellationToken::new(),
        opts,
        records: TaskTracker::new(),
        record_err: Mutex::new(None),
        policies: Mutex::new(HashMap::new()),
    });

    let set = spawn_stages(&shared);
    wait_for_stages(&shared, set).await?;
    summarize(&shared, &batches, started).await
}

/// Before a run: submits interrupted by a crash recovered as ambiguous, leftover downloads
/// cleared, manifests rewritten from the store, and the work in hand (running tasks, images to
/// download) taken up. Returns the run's batches and its starting state.
async fn prepare(
    store: &dyn Store,
    archive: &dyn Archive,
    opts: &RunOptions,
) -> Result<(Vec<String>, State), SchedulerError> {
    let recovery = store.recover().await?;
    if !recovery.ambiguous.is_empty() {
        tracing::warn!(
            items = recovery.ambiguous.len(),
            "submits interrupted by an earlier crash are ambiguous; submitting them again (at-least-once)"
        );
    }
    let batches = if opts.batches.is_empty() {
        store.batches().await?
    } else {
        opts.batches.clone()
    };
    for b in &batches {
        let cleared = archive.clear_temp(b).await?;
        if cleared > 0 {
            tracing::info!(batch = %b, files = cleared, "removed unfinished downloads");
        }
        rewrite_manifest(store, archive, b).await?;
    }

    let mut state = State {
        slot_cap: opts.limits.concurrency.max(1),
        ambiguous: recovery.ambiguous,
        ..State::default()
    };
    let now = Instant::now();
    for t in store.running_tasks(&opts.batches).await? {
        if !t.fetching {
            state.slots_held += u32::from(t.image_num);
        }
        state.running.insert(Task {
            key: t.key,
            batch: t.batch,
            task_id: t.task_id,
            image_num: t.image_num,
            started: now
                - Duration::from_millis((now_ms() - t.submitted_at).clamp(0, 86_400_000) as u64),
            due: now,
            progress: None,
            prev_progress: None,
            last_poll: None,
            errors: 0,
            refresh: t.fetching,
            polling: false,
            recovered: true,
        });
    }
    // Fetching items only need their listed images; they are polled only when a URL has died.
    let fetching: Vec<String> = state
        .running
        .values()
        .filter(|t| t.refresh)
        .map(|t| t.key.clone())
        .collect();
    for key in fetching {
        state.running.remove(&key);
    }
    for img in store.images_to_fetch(&opts.batches).await? {
        state.adopt_fetch(img);
    }

    Ok((batches, state))
}

/// Starts the stages and the watchers of the time box and the halt.
fn spawn_stages(shared: &Arc<Shared>) -> JoinSet<Result<(), SchedulerError>> {
    let mut set = JoinSet::new();
    if let Some(deadline) = shared.opts.deadline {
        let s = shared.clone();
        set.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!("time box reached: no more submits; draining running tasks");
                    s.state().stop.get_or_insert(StopReason::Deadline);
                    s.stop_submits.cancel();
                    s.wake_all();
                }
                _ = s.done.cancelled() => {}
            }
            Ok(())
        });
    }
    {
        let s = shared.clone();
        set.spawn(async move { submit_loop(s).await });
    }
    {
        let s = shared.clone();
        set.spawn(async move { poll_loop(s).await });
    }
    for _ in 0..shared.opts.limits.downloads.max(1) {
        let s = shared.clone();
        set.spawn(async move { fetch_loop(s).await });
    }
    {
        let s = shared.clone();
        set.spawn(async move {
            tokio::select! {
                biased;
                _ = s.halt.cancelled() => {
                    s.state().stop.get_or_insert(StopReason::Interrupted);
                    // Loops finish what is in flight and leave; the timers need not wait.
                    s.done.cancel();
                    s.wake_all();
                }
                _ = s.done.cancelled() => {}
            }
            Ok(())
        });
    }

    set
}

/// Waits for every stage and every archive step; the first error (or panic) stops the run and
/// is returned.
async fn wait_for_stages(
    shared: &Arc<Shared>,
    mut set: JoinSet<Result<(), SchedulerError>>,
) -> Result<(), SchedulerError> {
    let mut first_err: Option<SchedulerError> = None;
    while let Some(res) = set.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.fail_run(StopReason::Fatal, e.to_string());
                first_err.get_or_insert(e);
            }
            Err(join) => {
                shared.fail_run(StopReason::Fatal, format!("a loop panicked: {join}"));
            }
        }
    }
    shared.records.close();
    shared.records.wait().await;
    let record_err = shared
        .record_err
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(e) = record_err {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// After a run: manifests rewritten, and what the run did and what is left, from the store.
async fn summarize(
    shared: &Arc<Shared>,
    batches: &[String],
    started: Instant,
) -> Result<RunSummary, SchedulerError> {
    let batches_now = shared.opts.batches.clone();
    for b in batches {
        rewrite_manifest(shared.store.as_ref(), shared.archive.as_ref(), b).await?;
    }
    let pending = shared
        .store
        .count_items(&batches_now, crate::store::ItemState::Pending)
        .await?;
    let running = shared
        .store
        .count_items(&batches_now, crate::store::ItemState::Running)
        .await?
        + shared
            .store
            .count_items(&batches_now, crate::store::ItemState::Fetching)
            .await?;
    let failed_total = shared
        .store
        .count_items(&batches_now, crate::store::ItemState::Failed)
        .await?;
    let lost_total = shared
        .store
        .status()
        .await?
        .iter()
        .filter(|s| batches_now.is_empty() || batches_now.contains(&s.batch))
        .map(|s| s.images.get("lost").copied().unwrap_or(0))
        .sum();
    let st = shared.state();
    // A halt decides, whichever the watcher saw first: the halt or the end of the work it caused.
    let stop = match st.stop {
        Some(s) => s,
        None if shared.halt.is_cancelled() => StopReason::Interrupted,
        None if st.quota_parked && pending > 0 => StopReason::QuotaParked,
        None => StopReason::Finished,
    };
    Ok(RunSummary {
        stop,
        fatal: st.fatal.clone(),
        submitted: st.submitted,
        succeeded: st.succeeded,
        failed: st.failed,
        archived: st.archived,
        lost: st.lost,
        url_refreshes: st.url_refreshes,
        ambiguous: st.ambiguous.clone(),
        errors: st.summary_errors.clone(),
        queries: st.queries,
        pending,
        in_flight: running,
        failed_total,
        lost_total,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests;
