//! Exponential backoff with jitter, and wall-clock times as tokio instants.

use super::*;

pub(super) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(cap);
    let jitter = rand::rng().random_range(0.8..1.2);
    d.mul_f64(jitter)
}

pub(super) fn instant_at(unix_ms: i64) -> Instant {
    let delta = unix_ms - now_ms();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(delta as u64)
    }
}
