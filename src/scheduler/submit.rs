//! The submit stage: pending items in batch and file order, each waiting for its image slots
//! and the submit limiter; `submitting` is committed before the POST; the answer is recorded.

use super::*;

pub(super) struct Feed {
    pub(super) cursor: Option<(String, i64)>,
    pub(super) page: VecDeque<PendingItem>,
    /// Items waiting for their backoff, by when it ends (on the run's monotonic clock: a backoff
    /// is a wait, whatever the wall clock does meanwhile).
    pub(super) deferred: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// The latest deferral of each item, with the sequence number of its heap entry: an item
    /// deferred again leaves its older entry in the heap, which must not release it early.
    pub(super) deferred_items: HashMap<String, (u64, PendingItem)>,
    pub(super) exhausted: bool,
    pub(super) seq: u64,
}

impl Feed {
    pub(super) fn defer(&mut self, item: PendingItem) {
        self.seq += 1;
        let at = item.retry_at.map_or_else(Instant::now, instant_at);
        self.deferred
            .push(Reverse((at, self.seq, item.key.clone())));
        self.deferred_items
            .insert(item.key.clone(), (self.seq, item));
    }

    /// The next item ready now, or the time the earliest deferred one becomes ready.
    pub(super) async fn next(
        &mut self,
        store: &dyn Store,
        batches: &[String],
    ) -> Result<Result<PendingItem, Option<Instant>>, StoreError> {
        let now = Instant::now();
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
                if item.retry_at.is_some_and(|t| instant_at(t) > now) {
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

pub(super) async fn submit_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
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
pub(super) const MAX_PARALLEL_SUBMITS: usize = 64;

pub(super) async fn submit_loop_inner(
    s: &Arc<Shared>,
    feed: &mut Feed,
) -> Result<(), SchedulerError> {
    let mut inflight: JoinSet<Result<(), SchedulerError>> = JoinSet::new();
    let result = submit_items(s, feed, &mut inflight).await;
    // Submits under way finish and are recorded, whatever stopped the loop.
    drain(result, inflight).await
}

/// Waits for the work still in flight after a loop stopped; the first error wins.
pub(super) async fn drain(
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

pub(super) async fn submit_items(
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
                let wait = earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
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
pub(super) async fn submit_one(s: &Arc<Shared>, item: PendingItem) -> Result<(), SchedulerError> {
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
pub(super) async fn wait_to_submit(s: &Arc<Shared>, item: &PendingItem) -> Option<()> {
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

pub(super) fn release_slots(s: &Arc<Shared>, n: u8, task_finished: bool) {
    let mut st = s.state();
    st.slots_held = st.slots_held.saturating_sub(u32::from(n));
    if task_finished {
        st.slot_cap = s.opts.limits.concurrency.max(1);
    }
    drop(st);
    s.wake_submit.notify_one();
}

/// Records the answer of a submit; returns the item when it should be tried again later.
pub(super) async fn handle_submit_answer(
    s: &Arc<Shared>,
    item: &PendingItem,
    answer: Result<crate::api::SubmitData, ClientError>,
    sent: Instant,
) -> Result<Option<PendingItem>, SchedulerError> {
    match answer {
        Ok(data) => {
            record_submitted(s, item, data.task_id, sent).await?;
            Ok(None)
        }
        Err(err) => {
            s.note_error(&err);
            release_slots(s, item.image_num, false);
            let outcome = classify_submit(&err, item.attempts + 1, s.opts.limits.max_attempts);
            apply_refusal(s, item, &err, outcome).await
        }
    }
}

/// An answered submit: the task id recorded and the task handed to the poll stage.
async fn record_submitted(
    s: &Arc<Shared>,
    item: &PendingItem,
    task_id: String,
    sent: Instant,
) -> Result<(), SchedulerError> {
    s.store.mark_running(&item.key, &task_id).await?;
    // The task's clock starts when the request went out (the server started it within that
    // round trip), not after the commit: progress readings are timed from here.
    let mut st = s.state();
    let first = first_poll_delay(&st.durations);
    st.submitted += 1;
    st.rate_strikes = 0;
    st.running.insert(Task {
        key: item.key.clone(),
        batch: item.batch.clone(),
        task_id,
        image_num: item.image_num,
        started: sent,
        due: sent + first,
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
    Ok(())
}

/// When an item refused for a transient reason is tried again: after a backoff from now.
fn retry_at(attempts: i64) -> i64 {
    now_ms()
        + backoff(
            attempts.min(10) as u32,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .as_millis() as i64
}

/// Carries out what [`classify_submit`] decided about a refused or unanswered submit.
async fn apply_refusal(
    s: &Arc<Shared>,
    item: &PendingItem,
    err: &ClientError,
    outcome: SubmitOutcome,
) -> Result<Option<PendingItem>, SchedulerError> {
    let attempts = item.attempts + 1;
    let msg = err.to_string();
    let code = err.code();
    // Limits are the scheduler's business: their refusals do not count as attempts.
    let again_uncounted = || PendingItem {
        retry_at: None,
        ..item.clone()
    };
    match outcome {
        SubmitOutcome::Ambiguous | SubmitOutcome::AmbiguousLastAttempt => {
            let at = retry_at(attempts);
            tracing::warn!(key = %item.key, error = %msg, "submit got no answer: ambiguous, will submit again");
            s.store.mark_submit_ambiguous(&item.key, &msg, at).await?;
            s.state().ambiguous.push(item.key.clone());
            if outcome == SubmitOutcome::AmbiguousLastAttempt {
                s.store.mark_submitting(&item.key).await?;
                fail_item(s, &item.key, ErrorClass::Transient, None, &msg).await?;
                return Ok(None);
            }
            Ok(Some(PendingItem {
                attempts,
                retry_at: Some(at),
                ..item.clone()
            }))
        }
        SubmitOutcome::Rate => {
            if s.submit_limiter.refused() | s.submit_intake.refused() {
                tracing::info!(error = %msg, "a submit was refused for its rate: submits are spaced evenly from now on");
            }
            {
                let mut st = s.state();
                st.rate_strikes += 1;
                let pause = backoff(
                    st.rate_strikes.min(6),
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                );
                st.submit_pause_until = Some(Instant::now() + pause);
            }
            s.store
                .mark_submit_refused(&item.key, code, &msg, None, false)
                .await?;
            Ok(Some(again_uncounted()))
        }
        SubmitOutcome::Concurrency => {
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
            Ok(Some(again_uncounted()))
        }
        SubmitOutcome::Quota => {
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
            Ok(Some(again_uncounted()))
        }
        SubmitOutcome::Retry => {
            let at = retry_at(attempts);
            s.store
                .mark_submit_refused(&item.key, code, &msg, Some(at), true)
                .await?;
            Ok(Some(PendingItem {
                attempts,
                retry_at: Some(at),
                ..item.clone()
            }))
        }
        SubmitOutcome::Fail(class) => {
            if class == ErrorClass::Permanent {
                tracing::warn!(key = %item.key, error = %msg, "submit refused for good");
            }
            fail_item(s, &item.key, class, code, &msg).await?;
            Ok(None)
        }
        SubmitOutcome::Fatal => {
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

/// Fails an item for good and counts it.
pub(super) async fn fail_item(
    s: &Arc<Shared>,
    key: &str,
    class: ErrorClass,
    code: Option<i64>,
    msg: &str,
) -> Result<(), SchedulerError> {
    s.store.mark_failed(key, class, code, msg).await?;
    s.state().failed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(Some(at)) => assert!(
                at > Instant::now() + Duration::from_secs(59),
                "released at {at:?}"
            ),
            other => panic!("released early: {other:?}"),
        }
        assert_eq!(feed.deferred_items.len(), 1);
    }
}
