//! The fetch stage: download workers take the soonest-expiring image, verify and archive it;
//! an expired URL sends its task back to the poll stage for fresh URLs.

use super::*;

#[derive(Debug)]
pub(super) struct Queued {
    pub(super) expires: i64,
    pub(super) seq: u64,
    pub(super) image: FetchImage,
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

/// URLs this close to expiry are refreshed before downloading (a download started later would
/// meet a 403 anyway).
pub(super) const EXPIRY_MARGIN_MS: i64 = 250;
/// Rounds of fresh URLs per image before it is declared lost: every one of them died before its
/// download could start (or the query for them failed).
pub(super) const MAX_REFRESHES: u32 = 20;

pub(super) async fn fetch_loop(s: Arc<Shared>) -> Result<(), SchedulerError> {
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

pub(super) async fn fetch_one(s: &Arc<Shared>, image: FetchImage) -> Result<(), SchedulerError> {
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

pub(super) enum DownloadFailure {
    Client(ClientError),
    Archive(ArchiveError),
}

/// An archive step in flight: counted in `fetch_inflight` until it is dropped, even by a panic
/// (which stops the run, as a loop's panic does, instead of leaving it waiting for ever).
pub(super) struct ArchiveStep(Arc<Shared>);

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

pub(super) async fn record_archived(
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

pub(super) async fn retry_fetch(
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

pub(super) async fn request_fresh_urls(
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
