//! The poll stage: the task due first is queried under the query limiter; a finished task
//! lists its images for the fetch stage, a failed one is retried or failed.

use super::*;

/// Queries at most this many tasks at once (the limiter paces them).
pub(super) const MAX_PARALLEL_QUERIES: usize = 64;

pub(super) async fn poll_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
    let mut inflight: JoinSet<Result<(), SchedulerError>> = JoinSet::new();
    let result = poll_tasks(&s, &mut inflight).await;
    drain(result, inflight).await
}

pub(super) async fn poll_tasks(
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
pub(super) fn flatten_images(
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

pub(super) async fn handle_query_answer(
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
                fail_item(
                    s,
                    &task.key,
                    ErrorClass::Permanent,
                    code,
                    "prompt blocked by censorship (501)",
                )
                .await?;
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

pub(super) async fn handle_query_error(
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
            fail_item(s, &task.key, e.class(), e.code(), &e.to_string()).await
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
pub(super) async fn requeue_task(
    s: &Arc<Shared>,
    task: &Task,
    code: Option<i64>,
    msg: &str,
) -> Result<(), SchedulerError> {
    let attempts = s.store.item_attempts(&task.key).await?;
    if attempts >= s.opts.limits.max_attempts {
        return fail_item(s, &task.key, ErrorClass::of(code.unwrap_or(0)), code, msg).await;
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

pub(super) async fn lose_awaiting(
    s: &Arc<Shared>,
    key: &str,
    reason: &str,
) -> Result<(), SchedulerError> {
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

pub(super) async fn mark_lost(
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
