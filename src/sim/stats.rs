//! What the simulator saw, for tests and benchmarks to assert on: [`Stats`] (counters, rates,
//! submits per item) and [`TaskRecord`] (one per accepted submit, with its timeline).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use crate::api::{TaskStatus, Verdict};

/// Counters of everything the simulator answered. Served at `GET /__sim/stats` and by
/// [`SimHandle::stats`](super::SimHandle::stats).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Milliseconds since the simulator started.
    pub uptime_ms: u64,
    /// Requests to the token endpoint (all, answered or not).
    pub token_requests: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Submit requests received (all).
    pub submit_requests: u64,
    /// Submits accepted (each created a task).
    pub submits: u64,
    /// Query requests received (all).
    pub queries: u64,
    /// Image GETs received (all).
    pub download_requests: u64,
    /// Images served whole (HTTP 200 with the full PNG).
    pub downloads: u64,
    /// Error codes sent, by code: API `error_code`s and OAuth `error`s (`invalid_client`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Sub-task error codes (501, 201) of tasks that reached their final state.
    pub sub_task_errors: BTreeMap<String, u64>,
    /// Faults injected, by kind (`500`, `502`, `drop`, `slow`, `json`, `truncate`).
    pub faults: BTreeMap<String, u64>,
    /// Responses by HTTP status (a dropped connection has none and is not counted here).
    pub http_status: BTreeMap<String, u64>,
    /// Images in generation now.
    pub in_generation: u32,
    /// The largest number of images in generation at once.
    pub max_in_generation: u32,
    /// The largest number of submit requests received (accepted or not) in any 1-second window.
    pub max_submit_rate: u32,
    /// The largest number of query requests received (accepted or not) in any 1-second window.
    pub max_query_rate: u32,
    /// Accepted submits per distinct (prompt, size, version, image_num), most submitted first.
    pub submits_per_item: Vec<ItemSubmits>,
    /// Images of tasks that finished with SUCCESS.
    pub images_generated: u64,
    /// Tasks that finished with FAILED (model failure, censorship, timeout).
    pub tasks_failed: u64,
    /// Image GETs refused with 403 because the URL had expired.
    pub expired_url_hits: u64,
    /// Image GETs refused with 403 because the signature did not match (a tampered URL).
    pub bad_signature_hits: u64,
    /// Images submitted in the current quota day.
    pub quota_used: u64,
    /// Encoded PNGs served from the cache.
    pub png_cache_hits: u64,
    /// Encoded PNGs that had to be rendered.
    pub png_cache_misses: u64,
}

impl Stats {
    /// How often the API error `code` was sent.
    pub fn error_count(&self, code: i64) -> u64 {
        self.errors.get(&code.to_string()).copied().unwrap_or(0)
    }

    /// How often a fault of `kind` (as in `--faults`) was injected.
    pub fn fault_count(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }

    /// How many responses had HTTP `status`.
    pub fn status_count(&self, status: u16) -> u64 {
        self.http_status
            .get(&status.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The largest number of accepted submits of one item (1 means nothing was submitted twice).
    pub fn max_submits_per_item(&self) -> u64 {
        self.submits_per_item
            .iter()
            .map(|i| i.count)
            .max()
            .unwrap_or(0)
    }
}

/// Accepted submits of one distinct request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSubmits {
    /// The prompt.
    pub prompt: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `v1` or `v2`.
    pub version: String,
    /// Images per task.
    pub image_num: u32,
    /// Accepted submits.
    pub count: u64,
}

/// One task the simulator accepted, with its timeline. Served at `GET /__sim/tasks` and by
/// [`SimHandle::tasks`](super::SimHandle::tasks), in submission order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id as the submit answered it.
    pub task_id: String,
    /// The prompt.
    pub prompt: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `v1` or `v2`.
    pub version: String,
    /// Images (and sub-tasks).
    pub image_num: u32,
    /// When it was submitted, ms since the simulator started.
    pub submitted_ms: u64,
    /// When it reached its final state, ms since the simulator started; `None` while it has not.
    pub finished_ms: Option<u64>,
    /// When a query first answered its final state (a SUCCESS/FAILED answer or error 216303)
    /// and the answer was not lost to a fault.
    pub first_final_query_ms: Option<u64>,
    /// When one of its images was first downloaded whole.
    pub first_download_ms: Option<u64>,
    /// Its status now.
    pub status: TaskStatus,
    /// Why it failed: sub-task error 501 or 201, or 216303 for a timeout; `None` otherwise.
    pub error_code: Option<i64>,
    /// The verdict of each image, by index.
    pub verdicts: Vec<Verdict>,
    /// Its drawn generation time in ms (longer than the timeout for a task that times out).
    pub gen_ms: u64,
}

/// Requests of one kind in a trailing window, to refuse over a limit or to measure a peak rate.
#[derive(Debug, Clone)]
pub(crate) struct RateWindow {
    window: Duration,
    times: VecDeque<Instant>,
}

impl RateWindow {
    /// A window of `window` length.
    pub(crate) fn new(window: Duration) -> RateWindow {
        RateWindow {
            window,
            times: VecDeque::new(),
        }
    }

    /// The window and capacity that enforce `qps`: one second and `floor(qps)` requests, or for
    /// rates below one per second, `1/qps` seconds and one request.
    pub(crate) fn for_qps(qps: f64) -> (RateWindow, usize) {
        if qps >= 1.0 {
            (
                RateWindow::new(Duration::from_secs(1)),
                qps.floor() as usize,
            )
        } else {
            (RateWindow::new(Duration::from_secs_f64(1.0 / qps)), 1)
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.times.front() {
            if now.saturating_duration_since(t) > self.window {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records a request at `now` if fewer than `cap` are in the window; says whether it did.
    pub(crate) fn try_admit(&mut self, now: Instant, cap: usize) -> bool {
        self.expire(now);
        if self.times.len() >= cap {
            return false;
        }
        self.times.push_back(now);
        true
    }

    /// Records a request at `now` and returns how many are in the window `[now - window, now]`.
    pub(crate) fn record(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.times.push_back(now);
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_up_to_cap_then_again_after_the_window() {
        let t0 = Instant::now();
        let (mut w, cap) = RateWindow::for_qps(2.0);
        assert_eq!(cap, 2);
        assert!(w.try_admit(t0, cap));
        assert!(w.try_admit(t0 + Duration::from_millis(10), cap));
        assert!(!w.try_admit(t0 + Duration::from_millis(20), cap));
        assert!(!w.try_admit(t0 + Duration::from_millis(1000), cap));
        assert!(w.try_admit(t0 + Duration::from_millis(1001), cap));
    }

    #[test]
    fn slow_rates_use_a_longer_window() {
        let t0 = Instant::now();
        let (mut w, cap) = RateWindow::for_qps(0.5);
        assert_eq!(cap, 1);
        assert!(w.try_admit(t0, cap));
        assert!(!w.try_admit(t0 + Duration::from_millis(1500), cap));
        assert!(w.try_admit(t0 + Duration::from_millis(2001), cap));
    }

    #[test]
    fn record_counts_the_trailing_second() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(1));
        assert_eq!(w.record(t0), 1);
        assert_eq!(w.record(t0 + Duration::from_millis(500)), 2);
        assert_eq!(w.record(t0 + Duration::from_millis(1000)), 3);
        assert_eq!(w.record(t0 + Duration::from_millis(1600)), 2);
    }

    #[test]
    fn stats_helpers_read_the_maps() {
        let mut s = Stats::default();
        s.errors.insert("18".into(), 3);
        s.faults.insert("drop".into(), 2);
        s.http_status.insert("200".into(), 5);
        s.submits_per_item.push(ItemSubmits {
            prompt: "p".into(),
            width: 512,
            height: 512,
            version: "v2".into(),
            image_num: 1,
            count: 2,
        });
        assert_eq!(s.error_count(18), 3);
        assert_eq!(s.error_count(17), 0);
        assert_eq!(s.fault_count("drop"), 2);
        assert_eq!(s.status_count(200), 5);
        assert_eq!(s.max_submits_per_item(), 2);
    }
}
