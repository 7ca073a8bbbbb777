//! The topic's publish rate limit: the only reason the emulator answers 429, as in Azure
//! (5,000 events/s and 5 MB/s per custom topic). A token bucket per limit, holding at most one
//! second's worth, so a burst up to the limit passes and a sustained rate above it is refused.

use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

/// Azure's documented per-topic publish rate limits.
pub const AZURE_EVENTS_PER_SECOND: u64 = 5_000;
pub const AZURE_BYTES_PER_SECOND: u64 = 5 * 1024 * 1024;

struct Buckets {
    events: f64,
    bytes: f64,
    at: Instant,
}

pub struct RateLimit {
    /// 0 means unlimited.
    events_per_second: u64,
    bytes_per_second: u64,
    state: Mutex<Buckets>,
}

impl RateLimit {
    pub fn new(events_per_second: u64, bytes_per_second: u64, now: Instant) -> Self {
        Self {
            events_per_second,
            bytes_per_second,
            state: Mutex::new(Buckets {
                events: events_per_second as f64,
                bytes: bytes_per_second as f64,
                at: now,
            }),
        }
    }

    /// Takes `events` and `bytes` from the buckets, or refuses the whole request (nothing is
    /// taken) with Azure's 429.
    pub fn admit(&self, events: usize, bytes: usize, now: Instant) -> Result<(), ApiError> {
        let mut b = self.state.lock().expect("lock poisoned");
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = b.at.max(now);
        let (er, br) = (self.events_per_second as f64, self.bytes_per_second as f64);
        b.events = (b.events + secs * er).min(er);
        b.bytes = (b.bytes + secs * br).min(br);
        let over_events = self.events_per_second > 0 && events as f64 > b.events;
        let over_bytes = self.bytes_per_second > 0 && bytes as f64 > b.bytes;
        if over_events || over_bytes {
            let what = if over_events {
                format!("{} events per second", self.events_per_second)
            } else {
                format!("{} bytes per second", self.bytes_per_second)
            };
            return Err(ApiError::new(
                429,
                "TooManyRequests",
                "TooManyRequests",
                format!(
                    "the topic's publish rate limit of {what} was exceeded; publish again later"
                ),
            ));
        }
        if self.events_per_second > 0 {
            b.events -= events as f64;
        }
        if self.bytes_per_second > 0 {
            b.bytes -= bytes as f64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_worth_passes_more_is_refused_and_time_refills() {
        let t0 = Instant::now();
        let r = RateLimit::new(100, 0, t0);
        r.admit(60, 1 << 30, t0).unwrap();
        r.admit(40, 0, t0).unwrap();
        let e = r.admit(1, 0, t0).unwrap_err();
        assert_eq!((e.status, e.code), (429, "TooManyRequests"));
        // A refused request takes nothing: half a second later, 50 pass.
        r.admit(50, 0, t0 + Duration::from_millis(500)).unwrap();
        assert!(r.admit(1, 0, t0 + Duration::from_millis(500)).is_err());
        // The bucket never holds more than one second's worth.
        let later = t0 + Duration::from_secs(60);
        r.admit(100, 0, later).unwrap();
        assert!(r.admit(1, 0, later).is_err());
    }

    #[test]
    fn bytes_are_limited_too_and_zero_means_unlimited() {
        let t0 = Instant::now();
        let r = RateLimit::new(0, 1000, t0);
        r.admit(1_000_000, 999, t0).unwrap();
        assert!(
            r.admit(1, 2, t0)
                .unwrap_err()
                .message
                .contains("bytes per second")
        );
        let free = RateLimit::new(0, 0, t0);
        free.admit(usize::MAX / 2, usize::MAX / 2, t0).unwrap();
    }
}
