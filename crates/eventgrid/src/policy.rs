//! Delivery and retry rules, as pure functions of the attempt's outcome, the attempt number and a
//! random number (passed in, so tests choose it). Durations here are Azure's real ones; the
//! engine divides them by `--time-scale`.

use std::time::Duration;

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No answer within the delivery timeout (30 s).
    TimedOut,
    /// The connection could not be made (refused, reset, DNS).
    SocketError,
}

/// What happens to the events of a batch after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Dead-letter now (or drop, when the subscription has no dead-letter destination).
    DeadLetter(&'static str),
    /// Try again after at least this long.
    Retry(Duration),
}

/// Azure's retry schedule: 10 s, 30 s, 1 min, 5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every
/// 12 h (until the TTL, at most 24 h, or the attempts run out).
pub const SCHEDULE: [Duration; 10] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(3 * 60 * 60),
    Duration::from_secs(6 * 60 * 60),
    Duration::from_secs(12 * 60 * 60),
];

/// "A little randomness": up to this fraction is added to every delay. Added, never taken
/// away, so no retry comes sooner than the documented minimum.
pub const JITTER: f64 = 0.2;

/// Delivery attempts time out after 30 s.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The validation handshake waits this long for the endpoint's answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A manual handshake (GET of the validationUrl) must happen within 5 minutes.
pub const MANUAL_VALIDATION_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Our choice (the docs only say endpoints that "keep failing"): an endpoint goes on probation
/// after this many failed attempts in a row.
pub const PROBATION_AFTER_FAILURES: u32 = 3;

pub fn is_success(status: u16) -> bool {
    (200..=204).contains(&status)
}

/// The smallest delay before the next attempt after this outcome: 408 at least 2 min, 503 at
/// least 30 s, anything else at least 10 s.
pub fn minimum_delay(outcome: Outcome) -> Duration {
    match outcome {
        Outcome::Status(408) => Duration::from_secs(120),
        Outcome::Status(503) => Duration::from_secs(30),
        _ => Duration::from_secs(10),
    }
}

/// Decides the fate of an event whose `attempts`-th attempt (1-based) had `outcome`.
/// `random` is uniform in `[0, 1)`.
pub fn after_attempt(outcome: Outcome, attempts: u32, max_attempts: u32, random: f64) -> Next {
    assert!(attempts >= 1, "called after an attempt");
    assert!((0.0..1.0).contains(&random), "random must be in [0, 1)");
    match outcome {
        Outcome::Status(s) if is_success(s) => return Next::Delivered,
        // Not retried for webhooks: the request itself is wrong or not allowed.
        Outcome::Status(400) => return Next::DeadLetter("UndeliverableDueToHttpBadRequest"),
        Outcome::Status(401) => return Next::DeadLetter("UndeliverableDueToHttpUnauthorized"),
        Outcome::Status(403) => return Next::DeadLetter("UndeliverableDueToHttpForbidden"),
        Outcome::Status(413) => {
            return Next::DeadLetter("UndeliverableDueToHttpRequestEntityTooLarge");
        }
        _ => {}
    }
    if attempts >= max_attempts {
        return Next::DeadLetter("MaxDeliveryAttemptsExceeded");
    }
    let step = SCHEDULE[(attempts as usize - 1).min(SCHEDULE.len() - 1)];
    let base = step.max(minimum_delay(outcome));
    Next::Retry(base.mul_f64(1.0 + JITTER * random))
}

/// `lastDeliveryOutcome` as Azure names it in dead-letter blobs and metrics.
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Status(s) if is_success(s) => "Succeeded",
        Outcome::Status(400) => "BadRequest",
        Outcome::Status(401) => "Unauthorized",
        Outcome::Status(403) => "Forbidden",
        Outcome::Status(404) => "NotFound",
        Outcome::Status(408) | Outcome::TimedOut => "TimedOut",
        Outcome::Status(413) => "RequestEntityTooLarge",
        Outcome::Status(429) | Outcome::Status(503) => "Busy",
        Outcome::SocketError => "SocketError",
        Outcome::Status(_) => "GenericError",
    }
}

/// How long an endpoint that keeps failing this way stays on probation (deliveries are held
/// back meanwhile): Busy and TimedOut 10 s, SocketError 30 s, NotFound, Unauthorized and
/// Forbidden 5 min. Other failures: 10 s (our choice).
pub fn probation(outcome: Outcome) -> Option<Duration> {
    match outcome_name(outcome) {
        "Succeeded" => None,
        "SocketError" => Some(Duration::from_secs(30)),
        "NotFound" | "Unauthorized" | "Forbidden" => Some(Duration::from_secs(5 * 60)),
        _ => Some(Duration::from_secs(10)),
    }
}

/// The TTL is checked when an attempt is due: an event older than its TTL is dead-lettered
/// instead of sent.
pub fn expired(age: Duration, ttl: Duration) -> bool {
    age >= ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(outcome: Outcome, attempts: u32, random: f64) -> Duration {
        match after_attempt(outcome, attempts, 30, random) {
            Next::Retry(d) => d,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn success_codes_are_200_to_204_only() {
        for s in 200..=204 {
            assert_eq!(
                after_attempt(Outcome::Status(s), 1, 30, 0.0),
                Next::Delivered
            );
        }
        for s in [205, 206, 302, 404, 500] {
            assert!(
                matches!(
                    after_attempt(Outcome::Status(s), 1, 30, 0.0),
                    Next::Retry(_)
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn no_retry_codes_dead_letter_at_once_even_with_attempts_left() {
        for s in [400, 401, 403, 413] {
            assert!(
                matches!(after_attempt(Outcome::Status(s), 1, 30, 0.5), Next::DeadLetter(r) if r.starts_with("Undeliverable"))
            );
        }
    }

    #[test]
    fn the_schedule_and_the_minimums() {
        let secs: Vec<u64> = (1..=12)
            .map(|n| retry_after(Outcome::Status(500), n, 0.0).as_secs())
            .collect();
        assert_eq!(
            secs,
            [
                10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 43200, 43200
            ]
        );
        assert_eq!(
            retry_after(Outcome::Status(408), 1, 0.0),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_after(Outcome::Status(503), 1, 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_after(Outcome::TimedOut, 1, 0.0),
            Duration::from_secs(10)
        );
        // Later steps are longer than the minimums, so the minimum no longer matters.
        assert_eq!(
            retry_after(Outcome::Status(408), 5, 0.0),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn jitter_only_lengthens() {
        let d = retry_after(Outcome::Status(500), 1, 0.999);
        assert!(
            d > Duration::from_secs(10) && d < Duration::from_secs(12),
            "{d:?}"
        );
    }

    #[test]
    fn attempts_run_out() {
        assert_eq!(
            after_attempt(Outcome::Status(500), 3, 3, 0.0),
            Next::DeadLetter("MaxDeliveryAttemptsExceeded")
        );
        assert_eq!(
            after_attempt(Outcome::SocketError, 1, 1, 0.0),
            Next::DeadLetter("MaxDeliveryAttemptsExceeded")
        );
        assert!(matches!(
            after_attempt(Outcome::Status(500), 2, 3, 0.0),
            Next::Retry(_)
        ));
    }

    #[test]
    fn probation_lengths() {
        assert_eq!(probation(Outcome::Status(200)), None);
        assert_eq!(
            probation(Outcome::Status(503)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(probation(Outcome::TimedOut), Some(Duration::from_secs(10)));
        assert_eq!(
            probation(Outcome::SocketError),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            probation(Outcome::Status(403)),
            Some(Duration::from_secs(300))
        );
        assert!(expired(Duration::from_secs(60), Duration::from_secs(60)));
        assert!(!expired(Duration::from_secs(59), Duration::from_secs(60)));
    }
}
