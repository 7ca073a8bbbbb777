//! Restarting what dies, as Azure's platform restarts a failed instance.
//!
//! `saldo up` keeps every component alive: a component that exits or is killed (SIGKILL of the
//! database, the topic, a host, the API or the SPA server) is started again with the same
//! program, port and data, after a bounded, jittered exponential back-off (`backon`), so that a
//! component that cannot start does not spin. The back-off starts afresh once a component has
//! stayed up for [`Policy::stable_after`].
//!
//! What is not a death: a component stopped on purpose ([`crate::Stack::stop_component`], or the
//! whole stack stopping). A region stopped with `saldo region stop` is not one either: its host
//! stays up and answers 403, as a stopped Function App does, so the supervisor sees nothing.
//!
//! This module holds the bookkeeping only (what happened, when the next start is due); the
//! [`crate::Stack`] owns the processes and does the restarting.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How components are restarted. Durations come from here so tests can make them short.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The first wait after a death.
    pub min_delay: Duration,
    /// The longest wait between two restarts before jitter (the bound of the back-off; with
    /// jitter a wait is at most twice this).
    pub max_delay: Duration,
    /// A component up at least this long is considered recovered: its next death waits
    /// `min_delay` again.
    pub stable_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            stable_after: Duration::from_secs(30),
        }
    }
}

impl Policy {
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// How a component last ended on its own (in the manifest, for `saldo status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// e.g. `signal: 9 (SIGKILL)` or `exit status: 1`.
    pub status: String,
    pub at: DateTime<Utc>,
}

/// The supervision state of one component.
#[derive(Debug)]
pub struct Life {
    policy: Policy,
    backoff: ExponentialBackoff,
    /// When the current process was started.
    started: Instant,
    /// Set while a dead component waits for its next start.
    due: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
}

impl Life {
    pub fn new(policy: Policy, now: Instant) -> Life {
        Life {
            backoff: policy.backoff(),
            policy,
            started: now,
            due: None,
            restarts: 0,
            last_exit: None,
        }
    }

    /// Is the component dead and waiting for its next start?
    pub fn waiting(&self) -> bool {
        self.due.is_some()
    }

    /// The process ended on its own: note it and schedule the next start. Returns the wait.
    pub fn died(&mut self, status: String, now: Instant, wall: DateTime<Utc>) -> Duration {
        if now.saturating_duration_since(self.started) >= self.policy.stable_after {
            self.backoff = self.policy.backoff();
        }
        // Without max_times the iterator never ends; max_delay is the fallback all the same.
        let delay = self.backoff.next().unwrap_or(self.policy.max_delay);
        self.last_exit = Some(Exit { status, at: wall });
        self.due = Some(now + delay);
        delay
    }

    /// A start failed before the process ran (e.g. its program vanished): wait again.
    pub fn start_failed(&mut self, reason: String, now: Instant, wall: DateTime<Utc>) -> Duration {
        self.started = now;
        self.died(format!("could not start: {reason}"), now, wall)
    }

    /// Is the next start due?
    pub fn due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| now >= d)
    }

    /// The component was started again.
    pub fn restarted(&mut self, now: Instant) {
        self.due = None;
        self.started = now;
        self.restarts += 1;
    }

    /// Started on purpose (e.g. [`crate::Stack::start_component`]): not a restart.
    pub fn started_on_purpose(&mut self, now: Instant) {
        self.due = None;
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            stable_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn waits_grow_to_the_bound_and_reset_after_a_stable_run() {
        let t0 = Instant::now();
        let mut life = Life::new(policy(), t0);
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let w = life.died("signal: 9 (SIGKILL)".into(), t, Utc::now());
            assert!(life.waiting() && !life.due(t));
            t += w;
            assert!(life.due(t));
            life.restarted(t);
            waits.push(w);
        }
        assert_eq!(life.restarts, 10);
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(2)),
            "{waits:?}"
        );
        assert!(
            waits[9] > waits[0],
            "the back-off grows while the component keeps dying: {waits:?}"
        );
        // Up for longer than stable_after: the next death waits the minimum again (plus jitter).
        t += Duration::from_secs(6);
        let w = life.died("exit status: 1".into(), t, Utc::now());
        assert!(w <= Duration::from_millis(200), "{w:?}");
        assert_eq!(life.last_exit.as_ref().unwrap().status, "exit status: 1");
    }
}
