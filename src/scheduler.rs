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
use crate::client::{self, Client, ClientError};
use crate::jobfile::ArchivePolicy;
use crate::store::{EventKind, FetchImage, ListedImage, PendingItem, Store, StoreError};

mod pacer;
use pacer::Pacer;

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

/// A submitted task being watched.
#[derive(Debug, Clone)]
struct Task {
    key: String,
    /// Its batch (whose policy decides which images are kept).
    batch: String,
    task_id: String,
    image_num: u8,
    /// When it was submitted (for tasks recovered from the store: when this run saw them).
    started: Instant,
    due: Instant,
    /// Last progress reading and when it was taken (seconds since `started`).
    progress: Option<(f64, f64)>,
    /// The reading before it.
    prev_progress: Option<(f64, f64)>,
    last_poll: Option<Instant>,
    errors: u32,
    /// Only fresh URLs are needed (the task already succeeded); it holds no slots.
    refresh: bool,
    /// A query for it is under way.
    polling: bool,
    /// Found running in the store at start: it may have finished long before this run's first
    /// poll, so that poll says nothing about how long generations take.
    recovered: bool,
}

/// The tasks being watched, with an index by due time of those not being polled right now, so
/// the next poll is found without a scan (a large backlog may hold many tasks).
#[derive(Debug, Default)]
struct Running {
    tasks: HashMap<String, Task>,
    by_due: BTreeSet<(Instant, String)>,
}

impl Running {
    fn insert(&mut self, task: Task) {
        self.remove(&task.key);
        if !task.polling {
            self.by_due.insert((task.due, task.key.clone()));
        }
        self.tasks.insert(task.key.clone(), task);
    }

    fn remove(&mut self, key: &str) -> Option<Task> {
        let task = self.tasks.remove(key)?;
        if !task.polling {
            self.by_due.remove(&(task.due, task.key.clone()));
        }
        Some(task)
    }

    /// The task not being polled that is due first.
    fn next_due(&self) -> Option<(String, Instant)> {
        self.by_due.first().map(|(due, key)| (key.clone(), *due))
    }

    /// Marks a task as being polled; returns a copy to work on (re-`insert` it to update it).
    fn start_poll(&mut self, key: &str) -> Option<Task> {
        let task = self.tasks.get_mut(key).filter(|t| !t.polling)?;
        self.by_due.remove(&(task.due, task.key.clone()));
        task.polling = true;
        let mut copy = task.clone();
        copy.polling = false;
        Some(copy)
    }

    /// Ends a poll that left the task in place unchanged.
    fn end_poll(&mut self, key: &str) {
        if let Some(task) = self.tasks.get_mut(key).filter(|t| t.polling) {
            task.polling = false;
            self.by_due.insert((task.due, task.key.clone()));
        }
    }

    fn contains_key(&self, key: &str) -> bool {
        self.tasks.contains_key(key)
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}

#[derive(Debug)]
struct Queued {
    expires: i64,
    seq: u64,
    image: FetchImage,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.expires, self.seq) == (o.expires, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.expires, self.seq).cmp(&(o.expires, o.seq))
    }
}

/// Generation times seen so far, to place the first poll of a new task.
#[derive(Debug, Default)]
struct Durations {
    recent: VecDeque<f64>,
    /// Share of a generation spent before progress starts rising (queued, initialising).
    wait_shares: VecDeque<f64>,
}

impl Durations {
    fn record_wait_share(&mut self, share: f64) {
        if self.wait_shares.len() == 64 {
            self.wait_shares.pop_front();
        }
        self.wait_shares.push_back(share.clamp(0.0, 0.9));
    }

    fn wait_share(&self) -> Option<f64> {
        if self.wait_shares.len() < 3 {
            return None;
        }
        let mut v: Vec<f64> = self.wait_shares.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    fn record(&mut self, secs: f64) {
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(secs.max(0.0));
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

#[derive(Debug, Default)]
struct State {
    slots_held: u32,
    slot_cap: u32,
    running: Running,
    requeued: Vec<PendingItem>,
    fetch_ready: BinaryHeap<Reverse<Queued>>,
    fetch_delayed: Vec<(Instant, FetchImage)>,
    fetch_inflight: usize,
    /// Every image the fetch pipeline holds (queued, delayed, downloading or awaiting URLs):
    /// each is owned once, so a refresh or a restart never queues it twice.
    fetch_owned: HashSet<(String, u32)>,
    /// Images waiting for fresh URLs, by item key.
    awaiting_urls: HashMap<String, Vec<FetchImage>>,
    refreshes: HashMap<(String, u32), u32>,
    submit_done: bool,
    submit_inflight: usize,
    submit_pause_until: Option<Instant>,
    rate_strikes: u32,
    quota_parked: bool,
    durations: Durations,
    seq: u64,
    stop: Option<StopReason>,
    fatal: Option<String>,
    summary_errors: BTreeMap<i64, u64>,
    submitted: u64,
    succeeded: u64,
    failed: u64,
    archived: u64,
    lost: u64,
    url_refreshes: u64,
    queries: u64,
    ambiguous: Vec<String>,
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
    store: Arc<dyn Store>,
    client: Arc<Client>,
    archive: Arc<dyn Archive>,
    opts: RunOptions,
    state: Mutex<State>,
    wake_submit: Notify,
    wake_poll: Notify,
    wake_fetch: Notify,
    /// First Ctrl-C: finish what is in flight, start nothing new.
    halt: CancellationToken,
    /// No more submits (deadline, fatal error).
    stop_submits: CancellationToken,
    /// Every loop is done.
    done: CancellationToken,
    /// Paces how fast items are taken up for submitting (so few wait in `submitting`).
    submit_intake: Pacer,
    /// Paces the POSTs themselves, taken right before each one: the time between the permit and
    /// the request must not vary (a commit in between would bunch requests at the server).
    submit_limiter: Pacer,
    query_limiter: Pacer,
    /// The archive steps of downloaded images (store record, sidecar, manifest line), run apart
    /// from the download loops so that a download slot is free again once its file is durable,
    /// not only after the store's next commit; each counts in `fetch_inflight` until it is done.
    records: TaskTracker,
    /// The first error of an archive step, answered as a loop's error would be.
    record_err: Mutex<Option<SchedulerError>>,
    /// Each batch's archive policy.
    policies: Mutex<HashMap<String, ArchivePolicy>>,
}

fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(cap);
    let jitter = rand::rng().random_range(0.8..1.2);
    d.mul_f64(jitter)
}

fn instant_at(unix_ms: i64) -> Instant {
    let delta = unix_ms - now_ms();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(delta as u64)
    }
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
    client: Arc<Client>,
    archive: Arc<dyn Archive>,
    opts: RunOptions,
    halt: CancellationToken,
) -> Result<RunSummary, SchedulerError> {
    let started = Instant::now();
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
        rewrite_manifest(store.as_ref(), archive.as_ref(), b).await?;
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
    if let Some(e) = first_err {
        return Err(e);
    }

    let batches_now = shared.opts.batches.clone();
    for b in &batches {
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
    let stop = match st.stop {
        Some(s) => s,
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

/// Rewrites a batch's manifest from the store, record by record (memory stays flat however
/// large the batch), and puts back any missing sidecar.
pub async fn rewrite_manifest(
    store: &dyn Store,
    archive: &dyn Archive,
    batch: &str,
) -> Result<(), SchedulerError> {
    let mut manifest = archive.manifest(batch)?;
    let mut records = store.image_records_stream(batch);
    while let Some(record) = records.try_next().await? {
        manifest.push(&record)?;
    }
    drop(records);
    manifest.finish().await?;
    Ok(())
}

/// What [`verify`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Archived images checked.
    pub checked: u64,
    /// Of those, missing from the archive.
    pub missing: u64,
    /// Of those, with other bytes than recorded.
    pub corrupt: u64,
    /// Each problem, with its batch: requeued, so the next run downloads it again.
    pub requeued: Vec<(String, archive::verify::Problem)>,
    /// Leftover temp files removed.
    pub temp_files_removed: usize,
}

/// Re-hashes every archived image of `batches` against the store, requeues what is missing or
/// corrupt (the next run downloads it again with fresh URLs), clears leftover temp files and
/// rewrites each manifest from the store.
pub async fn verify(
    store: &dyn Store,
    archive: &dyn Archive,
    batches: &[String],
) -> Result<Verified, SchedulerError> {
    let mut out = Verified::default();
    for batch in batches {
        let records = store
            .image_records_stream(batch)
            .map_err(SchedulerError::from);
        let check = archive::verify::check_batch(archive, batch, records).await?;
        out.checked += check.checked;
        out.missing += check.missing;
        out.corrupt += check.corrupt;
        for p in check.problems {
            store.requeue_image(&p.item_key, p.index, p.reason).await?;
            out.requeued.push((batch.clone(), p));
        }
        out.temp_files_removed += archive.clear_temp(batch).await?;
        rewrite_manifest(store, archive, batch).await?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Submit

struct Feed {
    cursor: Option<(String, i64)>,
    page: VecDeque<PendingItem>,
    deferred: BinaryHeap<Reverse<(i64, u64, String)>>,
    /// The latest deferral of each item, with the sequence number of its heap entry: an item
    /// deferred again leaves its older entry in the heap, which must not release it early.
    deferred_items: HashMap<String, (u64, PendingItem)>,
    exhausted: bool,
    seq: u64,
}

impl Feed {
    fn defer(&mut self, item: PendingItem) {
        self.seq += 1;
        let at = item.retry_at.unwrap_or(0);
        self.deferred
            .push(Reverse((at, self.seq, item.key.clone())));
        self.deferred_items
            .insert(item.key.clone(), (self.seq, item));
    }

    /// The next item ready now, or the time the earliest deferred one becomes ready.
    async fn next(
        &mut self,
        store: &dyn Store,
        batches: &[String],
    ) -> Result<Result<PendingItem, Option<i64>>, StoreError> {
        let now = now_ms();
        while let Some(Reverse((at, _, _))) = self.deferred.peek()
            && *at <= now
            && let Some(Reverse((_, seq, key))) = self.deferred.pop()
        {
            if self
                .deferred_items
                .get(&key)
                .is_some_and(|(latest, _)| *latest == seq)
                && let Some((_, item)) = self.deferred_items.remove(&key)
            {
                return Ok(Ok(item));
            }
        }
        loop {
            if let Some(item) = self.page.pop_front() {
                if item.retry_at.is_some_and(|t| t > now) {
                    self.defer(item);
                    continue;
                }
                return Ok(Ok(item));
            }
            if self.exhausted {
                break;
            }
            let after = self.cursor.as_ref().map(|(b, s)| (b.as_str(), *s));
            let page = store.pending_items(batches, after, 256).await?;
            if let Some(last) = page.last() {
                self.cursor = Some((last.batch.clone(), last.seq));
            }
            if page.len() < 256 {
                self.exhausted = true;
            }
            self.page.extend(page);
        }
        Ok(Err(self.deferred.peek().map(|Reverse((at, _, _))| *at)))
    }
}

async fn submit_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
    let mut feed = Feed {
        cursor: None,
        page: VecDeque::new(),
        deferred: BinaryHeap::new(),
        deferred_items: HashMap::new(),
        exhausted: false,
        seq: 0,
    };
    let result = submit_loop_inner(&s, &mut feed).await;
    {
        let mut st = s.state();
        st.submit_done = true;
    }
    s.check_idle();
    s.wake_all();
    result
}

/// Submits at most this many tasks at once (the limiter paces them; with high limits several
/// answers are awaited together).
const MAX_PARALLEL_SUBMITS: usize = 64;

async fn submit_loop_inner(s: &Arc<Shared>, feed: &mut Feed) -> Result<(), SchedulerError> {
    let mut inflight: JoinSet<Result<(), SchedulerError>> = JoinSet::new();
    let result = submit_items(s, feed, &mut inflight).await;
    // Submits under way finish and are recorded, whatever stopped the loop.
    drain(result, inflight).await
}

/// Waits for the work still in flight after a loop stopped; the first error wins.
async fn drain(
    result: Result<(), SchedulerError>,
    mut inflight: JoinSet<Result<(), SchedulerError>>,
) -> Result<(), SchedulerError> {
    let mut first_err = result.err();
    while let Some(done) = inflight.join_next().await {
        if let Ok(Err(e)) = done {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn submit_items(
    s: &Arc<Shared>,
    feed: &mut Feed,
    inflight: &mut JoinSet<Result<(), SchedulerError>>,
) -> Result<(), SchedulerError> {
    loop {
        while let Some(done) = inflight.try_join_next() {
            done.map_err(|e| StoreError::Invalid(format!("a submit panicked: {e}")))??;
        }
        if s.stop_submits.is_cancelled() {
            return Ok(());
        }
        // Items sent back: retries of refused submits, and tasks the poller requeued.
        let requeued: Vec<PendingItem> = std::mem::take(&mut s.state().requeued);
        for item in requeued {
            feed.defer(item);
        }
        let next = feed.next(s.store.as_ref(), &s.opts.batches).await?;
        let item = match next {
            Ok(item) => item,
            Err(earliest) => {
                let finished = {
                    let st = s.state();
                    earliest.is_none()
                        && st.running.values().all(|t| t.refresh)
                        && st.requeued.is_empty()
                        && st.submit_inflight == 0
                };
                if finished {
                    return Ok(());
                }
                let wait = earliest
                    .map(instant_at)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    _ = tokio::time::sleep_until(wait) => {}
                    _ = s.wake_submit.notified() => {}
                    _ = s.stop_submits.cancelled() => return Ok(()),
                }
                continue;
            }
        };

        // Quota parking, rate cool-down and image slots.
        let Some(()) = wait_to_submit(s, &item).await else {
            feed.defer(item);
            return Ok(());
        };
        while inflight.len() >= MAX_PARALLEL_SUBMITS {
            if let Some(done) = inflight.join_next().await {
                done.map_err(|e| StoreError::Invalid(format!("a submit panicked: {e}")))??;
            }
        }
        tokio::select! {
            _ = s.submit_intake.until_ready() => {}
            _ = s.stop_submits.cancelled() => {
                release_slots(s, item.image_num, false);
                feed.defer(item);
                return Ok(());
            }
        }
        s.state().submit_inflight += 1;
        let s2 = s.clone();
        inflight.spawn(async move {
            let result = submit_one(&s2, item).await;
            s2.state().submit_inflight -= 1;
            s2.wake_submit.notify_one();
            s2.check_idle();
            result
        });
    }
}

/// One submit: the intent committed, the POST, the answer recorded.
async fn submit_one(s: &Arc<Shared>, item: PendingItem) -> Result<(), SchedulerError> {
    if let Err(e) = s.store.mark_submitting(&item.key).await {
        release_slots(s, item.image_num, false);
        return Err(e.into());
    }
    let req = SubmitRequest {
        prompt: item.prompt.clone(),
        width: item.size.width,
        height: item.size.height,
        version: Some(item.version.as_str().to_string()),
        image_num: Some(u32::from(item.image_num)),
        task_time_out: None,
        text_check: None,
    };
    s.submit_limiter.until_ready().await;
    let sent = Instant::now();
    let answer = s.client.submit(&req).await;
    if let Some(retry) = handle_submit_answer(s, &item, answer, sent).await? {
        s.state().requeued.push(retry);
    }
    Ok(())
}

/// Waits until the item may be submitted: not quota-parked, not cooling down, enough slots.
/// Holds the slots on return. `None` when submits were stopped meanwhile.
async fn wait_to_submit(s: &Arc<Shared>, item: &PendingItem) -> Option<()> {
    let need = u32::from(item.image_num);
    loop {
        let (pause, parked) = {
            let mut st = s.state();
            let fits = st.slots_held + need <= st.slot_cap || st.slots_held == 0;
            let pause = st.submit_pause_until.filter(|t| *t > Instant::now());
            if pause.is_none() && fits && !st.quota_parked && !st.backlogged() {
                st.slots_held += need;
                return Some(());
            }
            (pause, st.quota_parked)
        };
        if parked {
            // Nothing else to do: stop with the work parked.
            let idle_otherwise = {
                let st = s.state();
                st.running.is_empty()
                    && st.submit_inflight == 0
                    && st.fetch_ready.is_empty()
                    && st.fetch_delayed.is_empty()
                    && st.fetch_inflight == 0
                    && st.awaiting_urls.is_empty()
            };
            if idle_otherwise {
                tracing::warn!(
                    "daily quota used up and nothing else to do: stopping (exit 4); run again after the reset"
                );
                s.state().stop.get_or_insert(StopReason::QuotaParked);
                return None;
            }
        }
        let until = match (pause, parked) {
            (_, true) => instant_at(next_quota_reset(now_ms())),
            (Some(t), _) => t,
            (None, _) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                if parked {
                    s.state().quota_parked = false;
                }
            }
            _ = s.wake_submit.notified() => {}
            _ = s.stop_submits.cancelled() => return None,
        }
    }
}

fn release_slots(s: &Arc<Shared>, n: u8, task_finished: bool) {
    let mut st = s.state();
    st.slots_held = st.slots_held.saturating_sub(u32::from(n));
    if task_finished {
        st.slot_cap = s.opts.limits.concurrency.max(1);
    }
    drop(st);
    s.wake_submit.notify_one();
}

/// Records the answer of a submit; returns the item when it should be tried again later.
async fn handle_submit_answer(
    s: &Arc<Shared>,
    item: &PendingItem,
    answer: Result<crate::api::SubmitData, ClientError>,
    sent: Instant,
) -> Result<Option<PendingItem>, SchedulerError> {
    let attempts = item.attempts + 1;
    let err = match answer {
        Ok(data) => {
            s.store.mark_running(&item.key, &data.task_id).await?;
            // The task's clock starts when the request went out (the server started it within
            // that round trip), not after the commit: progress readings are timed from here.
            let now = sent;
            let first = first_poll_delay(&s.state().durations);
            let mut st = s.state();
            st.submitted += 1;
            st.rate_strikes = 0;
            st.running.insert(Task {
                key: item.key.clone(),
                batch: item.batch.clone(),
                task_id: data.task_id,
                image_num: item.image_num,
                started: now,
                due: now + first,
                progress: None,
                prev_progress: None,
                last_poll: None,
                errors: 0,
                refresh: false,
                polling: false,
                recovered: false,
            });
            drop(st);
            s.wake_poll.notify_one();
            return Ok(None);
        }
        Err(e) => e,
    };
    s.note_error(&err);
    release_slots(s, item.image_num, false);
    let msg = err.to_string();
    let mut retry = item.clone();
    retry.attempts = attempts;
    if err.is_ambiguous() {
        let at = now_ms()
            + backoff(
                attempts.min(10) as u32,
                Duration::from_millis(500),
                Duration::from_secs(60),
            )
            .as_millis() as i64;
        tracing::warn!(key = %item.key, error = %msg, "submit got no answer: ambiguous, will submit again");
        s.store.mark_submit_ambiguous(&item.key, &msg, at).await?;
        s.state().ambiguous.push(item.key.clone());
        if attempts >= s.opts.limits.max_attempts {
            s.store.mark_submitting(&item.key).await?;
            s.store
                .mark_failed(&item.key, ErrorClass::Transient, None, &msg)
                .await?;
            s.state().failed += 1;
            return Ok(None);
        }
        retry.retry_at = Some(at);
        return Ok(Some(retry));
    }
    let code = err.code();
    match err.class() {
        ErrorClass::Rate => {
            if s.submit_limiter.refused() | s.submit_intake.refused() {
                tracing::info!(error = %msg, "a submit was refused for its rate: submits are spaced evenly from now on");
            }
            let strikes = {
                let mut st = s.state();
                st.rate_strikes += 1;
                st.rate_strikes
            };
            let pause = backoff(
                strikes.min(6),
                Duration::from_millis(500),
                Duration::from_secs(30),
            );
            s.state().submit_pause_until = Some(Instant::now() + pause);
            s.store
                .mark_submit_refused(&item.key, code, &msg, None, false)
                .await?;
            retry.attempts = item.attempts;
            retry.retry_at = None;
            Ok(Some(retry))
        }
        ErrorClass::Concurrency => {
            {
                let mut st = s.state();
                // Someone else's tasks hold slots of this account: fewer slots until one finishes.
                st.slot_cap = st.slots_held.max(1);
                if st.slots_held == 0 {
                    st.submit_pause_until = Some(
                        Instant::now()
                            + backoff(1, Duration::from_secs(1), Duration::from_secs(10)),
                    );
                }
            }
            s.store
                .mark_submit_refused(&item.key, code, &msg, None, false)
                .await?;
            retry.attempts = item.attempts;
            retry.retry_at = None;
            Ok(Some(retry))
        }
        ErrorClass::Quota => {
            let reset = next_quota_reset(now_ms());
            tracing::warn!(
                resets_at = reset,
                "daily quota used up (17): parking submits until the reset; polling and archiving go on"
            );
            s.state().quota_parked = true;
            s.store
                .mark_submit_refused(&item.key, code, &msg, None, false)
                .await?;
            s.store
                .record_event(Some(&item.batch), None, EventKind::QuotaParked, code, None)
                .await?;
            retry.attempts = item.attempts;
            retry.retry_at = None;
            Ok(Some(retry))
        }
        ErrorClass::Transient | ErrorClass::Token | ErrorClass::Timeout => {
            if attempts >= s.opts.limits.max_attempts {
                s.store
                    .mark_failed(&item.key, err.class(), code, &msg)
                    .await?;
                s.state().failed += 1;
                return Ok(None);
            }
            let at = now_ms()
                + backoff(
                    attempts as u32,
                    Duration::from_millis(500),
                    Duration::from_secs(60),
                )
                .as_millis() as i64;
            s.store
                .mark_submit_refused(&item.key, code, &msg, Some(at), true)
                .await?;
            retry.retry_at = Some(at);
            Ok(Some(retry))
        }
        ErrorClass::Permanent => {
            tracing::warn!(key = %item.key, error = %msg, "submit refused for good");
            s.store
                .mark_failed(&item.key, ErrorClass::Permanent, code, &msg)
                .await?;
            s.state().failed += 1;
            Ok(None)
        }
        ErrorClass::Fatal => {
            s.store
                .mark_submit_refused(&item.key, code, &msg, None, false)
                .await?;
            s.fail_run(
                StopReason::Fatal,
                format!("the API refused this account: {msg}"),
            );
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Poll

/// Delay before the first poll of a new task: half the typical generation time seen so far, to
/// read its progress early enough to aim the next poll at its end.
fn first_poll_delay(d: &Durations) -> Duration {
    let secs = d.quantile(0.5).map(|m| m * 0.5).unwrap_or(1.0);
    Duration::from_secs_f64(secs.clamp(0.05, 30.0))
}

/// When to poll a task next, after a poll that found it unfinished.
///
/// Progress is 0 while a task waits and then rises (the simulator: linearly) to 1, so two
/// readings give its speed and the time it will end: the next poll is aimed just after that end.
/// After one reading the next comes soon, to measure the speed. Without progress, the typical
/// generation time seen so far says when the task should end; past that, the task gets its fair
/// share of the query budget.
fn next_due(
    task: &Task,
    now: Instant,
    durations: &Durations,
    running: usize,
    query_qps: f64,
) -> Instant {
    /// Polls aimed at an end come this long after it (answers are cheap; lag is not).
    const AIM_AFTER: f64 = 0.01;
    /// Never poll one task more often than this.
    const FLOOR: f64 = 0.03;
    let share = if query_qps.is_finite() && query_qps > 0.0 {
        (running.max(1) as f64 / query_qps).min(10.0)
    } else {
        0.0
    };
    let gap = share.max(FLOOR);
    let elapsed = now.duration_since(task.started).as_secs_f64();
    let wait = match (predicted_end(task, durations.wait_share()), task.progress) {
        (Some(end), _) => (end - elapsed + AIM_AFTER).max(FLOOR),
        // The latest the task can end is t1 / p1 (had it started at once); read again soon to
        // measure its speed.
        (None, Some((p1, t1))) if p1 > 0.0 && p1 < 1.0 => {
            (0.25 * t1).min(t1 / p1 - elapsed).max(FLOOR)
        }
        _ => match durations.quantile(0.5) {
            Some(typical) if typical - elapsed > gap => (typical - elapsed) * 0.6,
            _ => gap,
        },
    };
    now + Duration::from_secs_f64(wait.min(30.0))
}

/// When a task should end, in seconds after its start, from its progress readings: two give its
/// speed and so its end; one does too with the share `w` of a generation spent before progress
/// rises (learned from finished tasks), as p1 = (t1 - wT) / (T - wT) gives the end T.
fn predicted_end(task: &Task, wait_share: Option<f64>) -> Option<f64> {
    match (task.prev_progress, task.progress) {
        (Some((p0, t0)), Some((p1, t1))) if p1 > p0 + 1e-6 && t1 > t0 => {
            Some(t1 + (1.0 - p1) * (t1 - t0) / (p1 - p0))
        }
        (_, Some((p1, t1))) if p1 > 0.0 && p1 < 1.0 => {
            wait_share.map(|w| t1 / (p1 * (1.0 - w) + w))
        }
        _ => None,
    }
}

/// Queries at most this many tasks at once (the limiter paces them).
const MAX_PARALLEL_QUERIES: usize = 64;

async fn poll_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
    let mut inflight: JoinSet<Result<(), SchedulerError>> = JoinSet::new();
    let result = poll_tasks(&s, &mut inflight).await;
    drain(result, inflight).await
}

async fn poll_tasks(
    s: &Arc<Shared>,
    inflight: &mut JoinSet<Result<(), SchedulerError>>,
) -> Result<(), SchedulerError> {
    loop {
        while let Some(done) = inflight.try_join_next() {
            done.map_err(|e| StoreError::Invalid(format!("a query panicked: {e}")))??;
        }
        if s.halt.is_cancelled() || s.done.is_cancelled() {
            return Ok(());
        }
        let pick = {
            let st = s.state();
            st.running.next_due()
        };
        let Some((key, due)) = pick else {
            tokio::select! {
                _ = s.wake_poll.notified() => {}
                _ = s.done.cancelled() => return Ok(()),
                _ = s.halt.cancelled() => return Ok(()),
            }
            continue;
        };
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = s.wake_poll.notified() => {}
                _ = s.done.cancelled() => return Ok(()),
                _ = s.halt.cancelled() => return Ok(()),
            }
            continue;
        }
        while inflight.len() >= MAX_PARALLEL_QUERIES {
            if let Some(done) = inflight.join_next().await {
                done.map_err(|e| StoreError::Invalid(format!("a query panicked: {e}")))??;
            }
        }
        tokio::select! {
            _ = s.query_limiter.until_ready() => {}
            _ = s.halt.cancelled() => return Ok(()),
        }
        let task = {
            let mut st = s.state();
            match st.running.start_poll(&key) {
                Some(task) => task,
                None => continue,
            }
        };
        let s2 = s.clone();
        inflight.spawn(async move {
            let answer = s2.client.query(&task.task_id).await;
            s2.state().queries += 1;
            let key = task.key.clone();
            let result = handle_query_answer(&s2, task, answer).await;
            s2.state().running.end_poll(&key);
            s2.wake_poll.notify_one();
            // A task that left the running set may have been the last thing the submit loop
            // waited for (it checks the set when woken).
            s2.wake_submit.notify_one();
            s2.check_idle();
            result
        });
    }
}

/// The images of a successful answer, each kept or skipped by the batch's `policy`.
fn flatten_images(
    data: &QueryData,
    assumed_ttl: Duration,
    policy: ArchivePolicy,
) -> Vec<ListedImage> {
    let now = now_ms();
    let mut out = Vec::new();
    for sub in &data.sub_task_result_list {
        for img in &sub.final_image_list {
            out.push(ListedImage {
                idx: out.len() as u32,
                url: img.img_url.clone(),
                url_expires_at: client::url_expiry(
                    &img.img_url,
                    now,
                    assumed_ttl.as_millis() as i64,
                ),
                width: img.width,
                height: img.height,
                verdict: img.img_approve_conclusion,
                keep: policy.keeps(img.img_approve_conclusion),
            });
        }
    }
    out
}

async fn handle_query_answer(
    s: &Arc<Shared>,
    mut task: Task,
    answer: Result<QueryData, ClientError>,
) -> Result<(), SchedulerError> {
    let now = Instant::now();
    let data = match answer {
        Ok(d) => d,
        Err(e) => {
            s.note_error(&e);
            return handle_query_error(s, task, e).await;
        }
    };
    match data.task_status {
        TaskStatus::Success => {
            let policy = s.policy(&task.batch).await?;
            let images = flatten_images(&data, s.opts.assumed_url_ttl, policy);
            if task.refresh {
                s.store.refresh_urls(&task.key, &images).await?;
                let mut st = s.state();
                st.running.remove(&task.key);
                // Only the images that asked for fresh URLs go back in the queue; their siblings
                // are already queued or downloading.
                for mut img in st.awaiting_urls.remove(&task.key).unwrap_or_default() {
                    if let Some(fresh) = images.iter().find(|f| f.idx == img.idx) {
                        img.url = fresh.url.clone();
                        img.url_expires_at = fresh.url_expires_at;
                    }
                    st.push_fetch(img);
                }
                drop(st);
                s.wake_fetch.notify_waiters();
                return Ok(());
            }
            // The slots are free on the API's side now: let the next submit go while this
            // success is recorded.
            release_slots(s, task.image_num, true);
            // Estimated finish: where its progress readings put it, or else half-way between the
            // previous poll and this one (never outside them).
            let finished_at = match task.last_poll {
                Some(last) => {
                    let predicted = predicted_end(&task, s.state().durations.wait_share())
                        .map(|end| task.started + Duration::from_secs_f64(end.clamp(0.0, 1e6)));
                    predicted.map_or(last + (now - last) / 2, |p| p.clamp(last, now))
                }
                None => now,
            };
            let total = finished_at.duration_since(task.started).as_secs_f64();
            let fetch = s.store.mark_succeeded(&task.key, &images).await?;
            {
                let mut st = s.state();
                // A recovered task seen finished at its first poll may have finished hours ago:
                // its "duration" would hold back the first poll of every new task.
                if !task.recovered || task.last_poll.is_some() {
                    st.durations.record(total);
                }
                if let (Some((p0, t0)), Some((p1, t1))) = (task.prev_progress, task.progress)
                    && p1 > p0 + 1e-6
                    && total > 0.0
                {
                    // When progress started rising, as a share of the whole generation.
                    let start = t1 - p1 * (t1 - t0) / (p1 - p0);
                    st.durations.record_wait_share(start / total);
                }
                st.running.remove(&task.key);
                st.succeeded += 1;
                for img in fetch {
                    st.adopt_fetch(img);
                }
            }
            s.wake_fetch.notify_waiters();
        }
        TaskStatus::Failed => {
            let code = data
                .sub_task_result_list
                .iter()
                .map(|t| t.sub_task_error_code)
                .find(|c| *c != 0);
            if task.refresh {
                // A task that succeeded cannot fail later; treat as a dead URL source.
                lose_awaiting(s, &task.key, "the task no longer answers with images").await?;
                return Ok(());
            }
            if code == Some(SUB_ERR_CENSORED) {
                s.state().running.remove(&task.key);
                release_slots(s, task.image_num, true);
                s.store
                    .mark_failed(
                        &task.key,
                        ErrorClass::Permanent,
                        code,
                        "prompt blocked by censorship (501)",
                    )
                    .await?;
                s.state().failed += 1;
            } else {
                // Requeued before it leaves `running` (see `requeue_task`).
                requeue_task(s, &task, code, "the model failed to generate (201)").await?;
                s.state().running.remove(&task.key);
                release_slots(s, task.image_num, true);
            }
        }
        TaskStatus::Init | TaskStatus::Wait | TaskStatus::Running => {
            let t = now.duration_since(task.started).as_secs_f64();
            let p = data.task_progress.clamp(0.0, 1.0);
            if p > 0.0 && task.progress.is_none_or(|(old, _)| p > old) {
                task.prev_progress = task.progress;
                task.progress = Some((p, t));
            }
            task.last_poll = Some(now);
            task.errors = 0;
            let mut st = s.state();
            let running = st.running.len();
            task.due = if task.refresh {
                now + Duration::from_secs(1)
            } else {
                next_due(&task, now, &st.durations, running, s.opts.limits.query_qps)
            };
            st.running.insert(task);
        }
    }
    Ok(())
}

async fn handle_query_error(
    s: &Arc<Shared>,
    mut task: Task,
    e: ClientError,
) -> Result<(), SchedulerError> {
    let now = Instant::now();
    if e.class() == ErrorClass::Rate && s.query_limiter.refused() {
        tracing::info!(error = %e, "a query was refused for its rate: queries are spaced evenly from now on");
    }
    match e.class() {
        ErrorClass::Timeout => {
            if task.refresh {
                s.state().running.remove(&task.key);
                return lose_awaiting(s, &task.key, &e.to_string()).await;
            }
            // Requeued before it leaves `running` (see `requeue_task`).
            requeue_task(s, &task, e.code(), &e.to_string()).await?;
            s.state().running.remove(&task.key);
            release_slots(s, task.image_num, true);
            Ok(())
        }
        ErrorClass::Permanent | ErrorClass::Fatal if e.code().is_some() => {
            s.state().running.remove(&task.key);
            if task.refresh {
                return lose_awaiting(s, &task.key, &e.to_string()).await;
            }
            release_slots(s, task.image_num, true);
            s.store
                .mark_failed(&task.key, e.class(), e.code(), &e.to_string())
                .await?;
            s.state().failed += 1;
            Ok(())
        }
        ErrorClass::Fatal => {
            s.fail_run(StopReason::Fatal, e.to_string());
            Ok(())
        }
        _ => {
            task.errors += 1;
            let wait = backoff(
                task.errors.min(6),
                Duration::from_millis(250),
                Duration::from_secs(30),
            );
            task.due = now + wait;
            tracing::debug!(key = %task.key, error = %e, "query failed; polling again later");
            s.state().running.insert(task);
            Ok(())
        }
    }
}

/// A task that failed in a way a new submit may fix (216303, 201): back to pending, bounded.
///
/// Call it while the task is still in `running`: the submit loop ends when it sees nothing
/// running and nothing requeued, so a task out of `running` but not yet requeued (the store
/// writes in between yield) would be left pending by a run that reports itself finished.
async fn requeue_task(
    s: &Arc<Shared>,
    task: &Task,
    code: Option<i64>,
    msg: &str,
) -> Result<(), SchedulerError> {
    let attempts = s.store.item_attempts(&task.key).await?;
    if attempts >= s.opts.limits.max_attempts {
        s.store
            .mark_failed(&task.key, ErrorClass::of(code.unwrap_or(0)), code, msg)
            .await?;
        s.state().failed += 1;
        return Ok(());
    }
    let at = now_ms()
        + backoff(
            attempts as u32,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .as_millis() as i64;
    s.store.mark_task_retry(&task.key, code, msg, at).await?;
    if let Some(item) = s.store.pending_item(&task.key).await? {
        s.state().requeued.push(item);
    }
    s.wake_submit.notify_one();
    Ok(())
}

async fn lose_awaiting(s: &Arc<Shared>, key: &str, reason: &str) -> Result<(), SchedulerError> {
    let images = {
        let mut st = s.state();
        st.running.remove(key);
        st.awaiting_urls.remove(key).unwrap_or_default()
    };
    for img in images {
        mark_lost(s, &img, reason).await?;
    }
    Ok(())
}

async fn mark_lost(
    s: &Arc<Shared>,
    image: &FetchImage,
    reason: &str,
) -> Result<(), SchedulerError> {
    tracing::warn!(key = %image.item_key, idx = image.idx, %reason, "image lost");
    s.store
        .mark_lost(&image.item_key, image.idx, reason)
        .await?;
    let mut st = s.state();
    st.lost += 1;
    st.fetch_owned.remove(&(image.item_key.clone(), image.idx));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fetch

/// URLs this close to expiry are refreshed before downloading (a download started later would
/// meet a 403 anyway).
const EXPIRY_MARGIN_MS: i64 = 250;
/// Rounds of fresh URLs per image before it is declared lost: every one of them died before its
/// download could start (or the query for them failed).
const MAX_REFRESHES: u32 = 20;

async fn fetch_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
    loop {
        if s.halt.is_cancelled() || s.done.is_cancelled() {
            return Ok(());
        }
        // Registered before looking at the queue, so a push between the look and the wait is
        // not missed.
        let notified = s.wake_fetch.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (next, wait) = {
            let mut st = s.state();
            let now = Instant::now();
            let mut i = 0;
            while i < st.fetch_delayed.len() {
                if st.fetch_delayed[i].0 <= now {
                    let (_, img) = st.fetch_delayed.swap_remove(i);
                    st.push_fetch(img);
                } else {
                    i += 1;
                }
            }
            let next = st.fetch_ready.pop().map(|Reverse(q)| q.image);
            if next.is_some() {
                st.fetch_inflight += 1;
            }
            (next, st.fetch_delayed.iter().map(|(t, _)| *t).min())
        };
        let Some(image) = next else {
            let until = wait.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = &mut notified => {}
                _ = s.done.cancelled() => return Ok(()),
                _ = s.halt.cancelled() => return Ok(()),
            }
            continue;
        };
        let res = fetch_one(&s, image).await;
        s.state().fetch_inflight -= 1;
        res?;
        // A quota-parked submit loop stops once nothing else is left: let it look.
        s.wake_submit.notify_one();
        s.check_idle();
    }
}

async fn fetch_one(s: &Arc<Shared>, image: FetchImage) -> Result<(), SchedulerError> {
    let rel = image_rel_path(&image.item_key, image.idx)?;
    // A crash between putting the file in place and the store's record leaves a complete,
    // verified file: adopt it.
    if let Some(stored) = s
        .archive
        .adopt(&image.batch, &image.item_key, image.idx, image.size)
        .await?
    {
        return record_archived(s, &image, &stored.path, &stored.sha256, stored.bytes).await;
    }
    if image.url_expires_at <= now_ms() + EXPIRY_MARGIN_MS {
        return request_fresh_urls(s, image, "URL expired before download").await;
    }
    let download = s.client.download(&image.url).await;
    let verified = match download {
        Ok(d) => {
            let bytes = d.body.len() as u64;
            s.archive
                .store_image(&image.batch, &image.item_key, image.idx, d.body, image.size)
                .await
                .map(|_| (d.sha256, bytes))
                .map_err(DownloadFailure::Archive)
        }
        Err(e) => Err(DownloadFailure::Client(e)),
    };
    match verified {
        Ok((sha, bytes)) => {
            s.state().fetch_inflight += 1;
            let step = ArchiveStep(s.clone());
            s.records.spawn(async move {
                let s = &step.0;
                if let Err(e) = record_archived(s, &image, &rel, &sha, bytes).await {
                    s.record_failure(e);
                }
            });
            Ok(())
        }
        Err(failure) => match failure {
            DownloadFailure::Client(e) if e.is_expired() => {
                request_fresh_urls(s, image, &e.to_string()).await
            }
            DownloadFailure::Client(e @ (ClientError::BadUrl | ClientError::TooLarge { .. })) => {
                mark_lost(s, &image, &format!("refused download: {e}")).await
            }
            DownloadFailure::Archive(ArchiveError::BadImage(m)) => retry_fetch(s, image, &m).await,
            DownloadFailure::Archive(e) => {
                s.fail_run(StopReason::Fatal, e.to_string());
                s.state().push_fetch(image);
                Ok(())
            }
            DownloadFailure::Client(e) => retry_fetch(s, image, &e.to_string()).await,
        },
    }
}

enum DownloadFailure {
    Client(ClientError),
    Archive(ArchiveError),
}

/// An archive step in flight: counted in `fetch_inflight` until it is dropped, even by a panic
/// (which stops the run, as a loop's panic does, instead of leaving it waiting for ever).
struct ArchiveStep(Arc<Shared>);

impl Drop for ArchiveStep {
    fn drop(&mut self) {
        let s = &self.0;
        if std::thread::panicking() {
            s.fail_run(StopReason::Fatal, "an archive step panicked".into());
        }
        s.state().fetch_inflight -= 1;
        s.wake_submit.notify_one();
        s.check_idle();
    }
}

async fn record_archived(
    s: &Arc<Shared>,
    image: &FetchImage,
    rel: &str,
    sha: &str,
    bytes: u64,
) -> Result<(), SchedulerError> {
    let record = s
        .store
        .mark_archived(&image.item_key, image.idx, rel, sha, bytes as i64)
        .await?;
    s.archive.record(record).await?;
    let mut st = s.state();
    st.archived += 1;
    st.fetch_owned.remove(&(image.item_key.clone(), image.idx));
    Ok(())
}

async fn retry_fetch(
    s: &Arc<Shared>,
    mut image: FetchImage,
    error: &str,
) -> Result<(), SchedulerError> {
    let attempts = s
        .store
        .note_fetch_error(&image.item_key, image.idx, error)
        .await?;
    image.attempts = attempts;
    tracing::debug!(key = %image.item_key, idx = image.idx, attempts, %error, "download failed; trying again");
    if attempts >= s.opts.limits.max_attempts {
        return request_fresh_urls(s, image, error).await;
    }
    let wait = backoff(
        attempts as u32,
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    // Never wait past the URL's expiry: then a fresh URL is needed anyway.
    s.state().fetch_delayed.push((Instant::now() + wait, image));
    s.wake_fetch.notify_waiters();
    Ok(())
}

async fn request_fresh_urls(
    s: &Arc<Shared>,
    image: FetchImage,
    reason: &str,
) -> Result<(), SchedulerError> {
    let n = {
        let mut st = s.state();
        let n = st
            .refreshes
            .entry((image.item_key.clone(), image.idx))
            .or_default();
        *n += 1;
        *n
    };
    if n > MAX_REFRESHES {
        return mark_lost(s, &image, reason).await;
    }
    tracing::info!(key = %image.item_key, idx = image.idx, %reason, "asking for fresh image URLs");
    let mut st = s.state();
    st.url_refreshes += 1;
    let key = image.item_key.clone();
    let task_id = image.task_id.clone();
    let batch = image.batch.clone();
    st.awaiting_urls.entry(key.clone()).or_default().push(image);
    if !st.running.contains_key(&key) {
        let now = Instant::now();
        st.running.insert(Task {
            key,
            batch,
            task_id,
            image_num: 0,
            started: now,
            due: now,
            progress: None,
            prev_progress: None,
            last_poll: None,
            errors: 0,
            refresh: true,
            polling: false,
            recovered: false,
        });
    }
    drop(st);
    s.wake_poll.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_time_extrapolates_progress() {
        let now = Instant::now();
        let started = now - Duration::from_secs(2);
        let task = Task {
            key: "k".into(),
            batch: "b".into(),
            task_id: "1".into(),
            image_num: 1,
            started,
            due: now,
            progress: Some((0.5, 2.0)),
            prev_progress: Some((0.25, 1.0)),
            last_poll: Some(now),
            errors: 0,
            refresh: false,
            polling: false,
            recovered: false,
        };
        // 0.25 per second from 0.5 at 2 s: ends at 4 s, 2 s from now; aimed 10 ms after.
        let wait = next_due(&task, now, &Durations::default(), 1, 10.0)
            .duration_since(now)
            .as_secs_f64();
        assert!((wait - 2.01).abs() < 0.005, "{wait}");
        // Nearly done: polled again soon, not after the fair share of the budget.
        let mut t2 = task.clone();
        t2.progress = Some((0.99, 2.0));
        t2.prev_progress = Some((0.5, 1.0));
        let wait = next_due(&t2, now, &Durations::default(), 4, 10.0)
            .duration_since(now)
            .as_secs_f64();
        assert!(wait < 0.05, "{wait}");
        // One reading: the next comes soon, to measure the speed.
        let mut t3 = task.clone();
        t3.prev_progress = None;
        let wait = next_due(&t3, now, &Durations::default(), 4, 10.0)
            .duration_since(now)
            .as_secs_f64();
        assert!((wait - 0.5).abs() < 0.005, "{wait}");
        // No progress and nothing learned yet: the fair share of the budget.
        let mut t4 = task.clone();
        t4.prev_progress = None;
        t4.progress = None;
        let wait = next_due(&t4, now, &Durations::default(), 4, 10.0)
            .duration_since(now)
            .as_secs_f64();
        assert!((wait - 0.4).abs() < 0.005, "{wait}");
    }

    #[test]
    fn a_learned_wait_share_turns_one_reading_into_an_end() {
        let now = Instant::now();
        let mut d = Durations::default();
        for _ in 0..3 {
            d.record_wait_share(0.25);
        }
        // T = 4 s with a quarter spent waiting: at t = 2 s progress is (2 - 1) / 3 = 1/3.
        let task = Task {
            key: "k".into(),
            batch: "b".into(),
            task_id: "1".into(),
            image_num: 1,
            started: now - Duration::from_secs(2),
            due: now,
            progress: Some((1.0 / 3.0, 2.0)),
            prev_progress: None,
            last_poll: Some(now),
            errors: 0,
            refresh: false,
            polling: false,
            recovered: false,
        };
        let wait = next_due(&task, now, &d, 4, 10.0)
            .duration_since(now)
            .as_secs_f64();
        assert!((wait - 2.01).abs() < 0.005, "{wait}");
    }

    fn task(key: &str, due: Instant) -> Task {
        Task {
            key: key.into(),
            batch: "b".into(),
            task_id: "1".into(),
            image_num: 1,
            started: due,
            due,
            progress: None,
            prev_progress: None,
            last_poll: None,
            errors: 0,
            refresh: false,
            polling: false,
            recovered: false,
        }
    }

    #[test]
    fn the_running_index_follows_polls_and_updates() {
        let t0 = Instant::now();
        let mut r = Running::default();
        r.insert(task("a", t0 + Duration::from_secs(3)));
        r.insert(task("b", t0 + Duration::from_secs(1)));
        r.insert(task("c", t0 + Duration::from_secs(2)));
        assert_eq!(r.next_due().unwrap().0, "b");
        // Being polled: out of the index, still running.
        let mut b = r.start_poll("b").unwrap();
        assert!(r.start_poll("b").is_none(), "not polled twice at once");
        assert_eq!(r.next_due().unwrap().0, "c");
        assert!(r.contains_key("b"));
        // The poll moved it later.
        b.due = t0 + Duration::from_secs(5);
        r.insert(b);
        r.end_poll("b");
        assert_eq!(r.by_due.len(), 3);
        assert_eq!(r.remove("c").unwrap().key, "c");
        assert_eq!(r.next_due().unwrap().0, "a");
        // A poll that changed nothing puts the task back as it was.
        r.start_poll("a").unwrap();
        r.end_poll("a");
        assert_eq!(r.next_due().unwrap().0, "a");
        // Removed while being polled.
        r.start_poll("a").unwrap();
        r.remove("a");
        assert_eq!(r.next_due().unwrap().0, "b");
        assert_eq!(r.len(), 1);
        assert_eq!(r.by_due.len(), 1);
    }

    #[tokio::test]
    async fn an_item_deferred_again_waits_for_its_latest_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&dir.path().join("s.db")).await.unwrap();
        let mut feed = Feed {
            cursor: None,
            page: VecDeque::new(),
            deferred: BinaryHeap::new(),
            deferred_items: HashMap::new(),
            exhausted: true,
            seq: 0,
        };
        let item = |retry_at| PendingItem {
            key: "k".into(),
            batch: "b".into(),
            seq: 0,
            prompt: "p".into(),
            size: crate::api::Size::new(512, 512),
            version: crate::api::Version::V2,
            image_num: 1,
            attempts: 1,
            retry_at: Some(retry_at),
        };
        let now = now_ms();
        feed.defer(item(now - 1_000));
        feed.defer(item(now + 60_000));
        // The older entry is due, but the item's latest backoff is not over.
        match feed.next(store.as_ref(), &[]).await.unwrap() {
            Err(Some(at)) => assert_eq!(at, now + 60_000),
            other => panic!("released early: {other:?}"),
        }
        assert_eq!(feed.deferred_items.len(), 1);
    }

    #[test]
    fn durations_quantiles() {
        let mut d = Durations::default();
        assert!(d.quantile(0.5).is_none());
        for i in 1..=5 {
            d.record(f64::from(i));
        }
        assert_eq!(d.quantile(0.5), Some(3.0));
        assert_eq!(d.quantile(0.0), Some(1.0));
    }
}
