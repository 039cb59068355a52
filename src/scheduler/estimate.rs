//! When to poll a task: generation times seen so far, progress readings extrapolated to the
//! end, and the fair share of the query budget.

use super::*;

/// Generation times seen so far, to place the first poll of a new task.
#[derive(Debug, Default)]
pub(super) struct Durations {
    recent: VecDeque<f64>,
    /// Share of a generation spent before progress starts rising (queued, initialising).
    wait_shares: VecDeque<f64>,
}

impl Durations {
    pub(super) fn record_wait_share(&mut self, share: f64) {
        if self.wait_shares.len() == 64 {
            self.wait_shares.pop_front();
        }
        self.wait_shares.push_back(share.clamp(0.0, 0.9));
    }

    pub(super) fn wait_share(&self) -> Option<f64> {
        if self.wait_shares.len() < 3 {
            return None;
        }
        let mut v: Vec<f64> = self.wait_shares.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    pub(super) fn record(&mut self, secs: f64) {
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(secs.max(0.0));
    }

    pub(super) fn quantile(&self, q: f64) -> Option<f64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

/// Delay before the first poll of a new task: half the typical generation time seen so far, to
/// read its progress early enough to aim the next poll at its end.
pub(super) fn first_poll_delay(d: &Durations) -> Duration {
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
pub(super) fn next_due(
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
pub(super) fn predicted_end(task: &Task, wait_share: Option<f64>) -> Option<f64> {
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
