//! Fault injection: which request meets which fault, decided by a ChaCha generator seeded by
//! `--seed`, so the same request sequence meets the same faults.
//!
//! Every request to the API or to an image URL draws twice from the generator, whether or not it
//! meets a fault, so that one request's decision never shifts another's. `/__sim/*` draws nothing.
//!
//! When a fault strikes matters to a client:
//! - `500`, `502`: before any processing. Nothing happened; a retry is safe.
//! - `drop`, `json`, `slow`: after processing. The effect stands (a submit created its task, a
//!   token was issued) but the answer is lost, garbled or late. A dropped or garbled submit is
//!   the "ambiguous submit" a client must handle: it cannot know the task id.
//! - `truncate` (image downloads only): fewer bytes than the PNG, either with a Content-Length
//!   that matches the short body or with the full Content-Length and a body that aborts.

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{FaultKind, FaultKinds};

/// What a request is, for choosing the fault kinds that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Token, submit, query: JSON answers.
    Api,
    /// An image download: PNG bytes.
    Image,
}

/// One decided fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The kind.
    pub(crate) kind: FaultKind,
    /// Random bits for the fault's details (where to cut a body, which truncation).
    pub(crate) detail: u64,
}

/// The fault decider.
#[derive(Debug)]
pub(crate) struct Faults {
    rate: f64,
    api_kinds: Vec<FaultKind>,
    image_kinds: Vec<FaultKind>,
    rng: Mutex<ChaCha8Rng>,
}

impl Faults {
    /// A decider striking with probability `rate`, choosing among `kinds`.
    pub(crate) fn new(rate: f64, kinds: FaultKinds, seed: u64) -> Faults {
        let applies = |target: Target| -> Vec<FaultKind> {
            kinds
                .iter()
                .filter(|k| {
                    !matches!(
                        (target, k),
                        (Target::Api, FaultKind::Truncate) | (Target::Image, FaultKind::Json)
                    )
                })
                .collect()
        };
        Faults {
            rate,
            api_kinds: applies(Target::Api),
            image_kinds: applies(Target::Image),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x6661_756c_7473)),
        }
    }

    /// The fault this request meets, if any.
    pub(crate) fn decide(&self, target: Target) -> Option<Fault> {
        if self.rate <= 0.0 {
            return None;
        }
        let (u, pick, detail) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (
                rng.random::<f64>(),
                rng.random::<u64>(),
                rng.random::<u64>(),
            )
        };
        let kinds = match target {
            Target::Api => &self.api_kinds,
            Target::Image => &self.image_kinds,
        };
        if u >= self.rate || kinds.is_empty() {
            return None;
        }
        Some(Fault {
            kind: kinds[(pick % kinds.len() as u64) as usize],
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(seed: u64, rate: f64) -> Vec<Option<FaultKind>> {
        let f = Faults::new(rate, FaultKinds::all(), seed);
        (0..200)
            .map(|i| {
                let target = if i % 3 == 0 {
                    Target::Image
                } else {
                    Target::Api
                };
                f.decide(target).map(|x| x.kind)
            })
            .collect()
    }

    #[test]
    fn same_seed_same_faults_other_seed_other_faults() {
        assert_eq!(sequence(7, 0.5), sequence(7, 0.5));
        assert_ne!(sequence(7, 0.5), sequence(8, 0.5));
    }

    #[test]
    fn rate_and_kinds_are_respected() {
        assert!(sequence(1, 0.0).iter().all(Option::is_none));
        assert!(sequence(1, 1.0).iter().all(Option::is_some));
        let hits = sequence(3, 0.3).iter().filter(|k| k.is_some()).count();
        assert!((30..=90).contains(&hits), "{hits} of 200 at rate 0.3");
        let f = Faults::new(1.0, FaultKinds::from_kinds([FaultKind::Truncate]), 0);
        assert_eq!(f.decide(Target::Api), None);
        assert_eq!(
            f.decide(Target::Image).map(|x| x.kind),
            Some(FaultKind::Truncate)
        );
        let f = Faults::new(1.0, FaultKinds::from_kinds([FaultKind::Json]), 0);
        assert_eq!(f.decide(Target::Image), None);
    }
}
