//! The scheduler's decisions about API answers, as pure functions: what an answer means, apart
//! from carrying it out (the stages apply them).

use crate::api::ErrorClass;
use crate::client::ClientError;

/// What to do about a submit that was refused or never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubmitOutcome {
    /// No well-formed answer: the task may exist. Pending again after a backoff, counted
    /// ambiguous (at-least-once in that window).
    Ambiguous,
    /// Ambiguous, with no attempt left: recorded ambiguous, then failed as transient.
    AmbiguousLastAttempt,
    /// Refused for its rate (13, 18, HTTP 429): cool the submits down; the attempt does not
    /// count.
    Rate,
    /// The account's images in generation are full (15): fewer slots until a task finishes; the
    /// attempt does not count.
    Concurrency,
    /// The daily quota is used up (17): park submits until the reset; the attempt does not count.
    Quota,
    /// A transient failure: pending again after a backoff; the attempt counts.
    Retry,
    /// Failed for good, with this class.
    Fail(ErrorClass),
    /// The account is refused (6, 19, 282352, a bad key): the run stops.
    Fatal,
}

/// Classifies a failed submit; `attempts` counts this one, `max_attempts` is the budget of
/// attempts that count.
pub(super) fn classify_submit(
    err: &ClientError,
    attempts: i64,
    max_attempts: i64,
) -> SubmitOutcome {
    let last = attempts >= max_attempts;
    if err.is_ambiguous() {
        return if last {
            SubmitOutcome::AmbiguousLastAttempt
        } else {
            SubmitOutcome::Ambiguous
        };
    }
    match err.class() {
        ErrorClass::Rate => SubmitOutcome::Rate,
        ErrorClass::Concurrency => SubmitOutcome::Concurrency,
        ErrorClass::Quota => SubmitOutcome::Quota,
        class @ (ErrorClass::Transient | ErrorClass::Token | ErrorClass::Timeout) => {
            if last {
                SubmitOutcome::Fail(class)
            } else {
                SubmitOutcome::Retry
            }
        }
        ErrorClass::Permanent => SubmitOutcome::Fail(ErrorClass::Permanent),
        ErrorClass::Fatal => SubmitOutcome::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::code;

    fn api(code: i64) -> ClientError {
        ClientError::Api {
            code,
            msg: "m".into(),
            detail: None,
        }
    }

    #[test]
    fn submit_answers_are_classified_by_the_error_table_and_the_attempt_budget() {
        use SubmitOutcome::*;
        let cases = [
            (api(code::QPS), Rate),
            (api(code::QPS_OLD), Rate),
            (
                ClientError::Status {
                    status: 429,
                    what: "submit",
                },
                Ambiguous,
            ),
            (api(code::CONCURRENCY), Concurrency),
            (api(code::DAILY_QUOTA), Quota),
            (api(code::INTERNAL), Retry),
            (api(code::TOKEN_EXPIRED), Retry),
            (api(code::TASK_TIMEOUT), Retry),
            (api(code::SENSITIVE), Fail(ErrorClass::Permanent)),
            (api(19), Fatal),
            (
                ClientError::Malformed {
                    what: "submit",
                    detail: "eof".into(),
                },
                Ambiguous,
            ),
        ];
        for (err, want) in &cases {
            assert_eq!(classify_submit(err, 1, 8), *want, "{err}");
        }
        // The last attempt: counted failures fail; limits never do (they do not count).
        assert_eq!(
            classify_submit(&api(code::INTERNAL), 8, 8),
            Fail(ErrorClass::Transient)
        );
        assert_eq!(
            classify_submit(&api(code::TASK_TIMEOUT), 9, 8),
            Fail(ErrorClass::Timeout)
        );
        assert_eq!(classify_submit(&api(code::QPS), 8, 8), Rate);
        assert_eq!(classify_submit(&api(code::DAILY_QUOTA), 8, 8), Quota);
        let dropped = ClientError::Malformed {
            what: "submit",
            detail: "eof".into(),
        };
        assert_eq!(classify_submit(&dropped, 8, 8), AmbiguousLastAttempt);
    }
}
