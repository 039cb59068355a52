//! Request pacing under the account's rate limits.
//!
//! The API refuses a request (error 18) when the account sent too many in the last second. The
//! simulator, like the documented limits, counts requests in a sliding window: at most N in any
//! one second. A [`Pacer`] keeps to that rule with a margin, and nothing stricter, so two
//! requests that become due together (two tasks ending at once, a poll aimed at a task's end
//! just after another poll) both go out at once instead of one waiting a full spacing interval.
//! If the server refuses a request all the same (it may count differently, or another client
//! shares the account), the pacer falls back to spacing requests evenly (governor's GCRA, one
//! request per interval) for the rest of the run.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// Windows and intervals are stretched by this much, so that scheduling and network jitter
/// cannot put more requests into any window at the server than it allows.
const MARGIN: f64 = 1.08;

/// Paces requests to `qps`: at most `cap` requests in any window (see the module's text).
pub(crate) struct Pacer {
    /// `None`: no limit.
    window: Option<Window>,
    /// Even spacing, used once a burst was refused.
    even: DefaultDirectRateLimiter,
}

struct Window {
    cap: usize,
    length: Duration,
    state: Mutex<WindowState>,
}

#[derive(Default)]
struct WindowState {
    /// The send times handed out, the latest `cap` of them, in order (some may lie ahead).
    sent: VecDeque<Instant>,
    /// The server refused a burst: space requests evenly from now on.
    even: bool,
}

impl Pacer {
    /// A pacer for `qps` requests per second; zero, negative or not finite means no limit.
    pub(crate) fn new(qps: f64) -> Pacer {
        let limited = qps.is_finite() && qps > 0.0;
        // The server's rule: floor(qps) requests per second, or one per 1/qps seconds below one.
        let window = limited.then(|| {
            let (cap, secs) = if qps >= 1.0 {
                (qps.floor(), 1.0)
            } else {
                (1.0, 1.0 / qps)
            };
            Window {
                cap: cap as usize,
                length: Duration::from_secs_f64(secs * MARGIN),
                state: Mutex::new(WindowState::default()),
            }
        });
        let quota = if limited {
            let period = Duration::from_secs_f64(MARGIN / qps).max(Duration::from_nanos(1));
            Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        } else {
            Quota::per_second(NonZeroU32::MAX)
        };
        Pacer {
            window,
            even: RateLimiter::direct(quota.allow_burst(NonZeroU32::MIN)),
        }
    }

    /// Waits until one more request may be sent, and counts it as sent then.
    ///
    /// Each call reserves its send time when it starts, so concurrent callers go in the order
    /// they called; a call dropped while it waits leaves its reservation used (never more
    /// requests than allowed, at worst one fewer).
    pub(crate) async fn until_ready(&self) {
        let Some(window) = &self.window else {
            return;
        };
        let at = {
            let mut st = window.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.even {
                None
            } else {
                let now = Instant::now();
                let at = if st.sent.len() < window.cap {
                    now
                } else {
                    (st.sent[st.sent.len() - window.cap] + window.length).max(now)
                };
                st.sent.push_back(at);
                while st.sent.len() > window.cap {
                    st.sent.pop_front();
                }
                Some(at)
            }
        };
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => self.even.until_ready().await,
        }
    }

    /// The server refused a request for its rate: space requests evenly from now on. Says
    /// whether this call made the change.
    pub(crate) fn refused(&self) -> bool {
        let Some(window) = &self.window else {
            return false;
        };
        let mut st = window.state.lock().unwrap_or_else(|p| p.into_inner());
        !std::mem::replace(&mut st.even, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send times of `n` requests that all want to go at once.
    async fn burst(p: &Pacer, n: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            p.until_ready().await;
            out.push(Instant::now() - t0);
        }
        out
    }

    fn ms(v: &[Duration]) -> Vec<u128> {
        v.iter().map(|d| d.as_millis()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_up_to_the_cap_then_one_window_later() {
        let p = Pacer::new(5.0);
        let sent = burst(&p, 12).await;
        // Five at once, the next five one (stretched) window later, and so on.
        assert_eq!(
            ms(&sent),
            [0, 0, 0, 0, 0, 1080, 1080, 1080, 1080, 1080, 2160, 2160]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_cap() {
        let p = Pacer::new(3.0);
        let t0 = Instant::now();
        let mut sent = Vec::new();
        // Requests arriving at uneven moments, some together.
        for gap in [0u64, 0, 10, 400, 0, 0, 900, 5, 5, 5, 2000, 0, 0, 0, 0] {
            tokio::time::sleep(Duration::from_millis(gap)).await;
            p.until_ready().await;
            sent.push(Instant::now() - t0);
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 3,
                "{in_window} requests in the second after {t:?}: {sent:?}"
            );
        }
        // Nothing waited that did not have to: the first three went at once.
        assert_eq!(ms(&sent[..3]), [0, 0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_served_in_order_within_the_rule() {
        let p = std::sync::Arc::new(Pacer::new(2.0));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6u64 {
            let p = p.clone();
            tasks.spawn(async move {
                p.until_ready().await;
                (i, (Instant::now() - t0).as_millis())
            });
        }
        let mut got: Vec<u128> = tasks.join_all().await.into_iter().map(|(_, t)| t).collect();
        got.sort_unstable();
        assert_eq!(got, [0, 0, 1080, 1080, 2160, 2160]);
    }

    #[tokio::test(start_paused = true)]
    async fn below_one_per_second_the_window_is_longer() {
        let p = Pacer::new(0.5);
        assert_eq!(ms(&burst(&p, 3).await), [0, 2160, 4320]);
    }

    #[tokio::test]
    async fn a_refused_burst_switches_to_even_spacing() {
        let p = Pacer::new(1000.0);
        assert!(p.refused());
        assert!(!p.refused(), "only the first refusal changes anything");
        let t0 = std::time::Instant::now();
        for _ in 0..4 {
            p.until_ready().await;
        }
        // Evenly spaced at 1.08 ms: three intervals at least, where the window let 1,000 go.
        assert!(t0.elapsed() >= Duration::from_micros(3 * 1080));
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_waits() {
        let p = Pacer::new(0.0);
        assert!(!p.refused());
        assert!(burst(&p, 1000).await.iter().all(|d| d.is_zero()));
    }
}
