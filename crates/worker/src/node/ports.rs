//! What a node is generic over besides its store: the clock, the outbound bus and the peer
//! client, injected so that the HTTP handlers and the simulation run the same node code.

use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use saldo_core::events::EventGridEvent;
use saldo_core::views::{LedgerPage, NodeStatusView};
use saldo_store::Detail;
use serde_json::Value;

/// Wall-clock time, injected so tests and the simulation control it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to (tests, simulation). Clones share the time.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);
impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = t;
    }
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().expect("clock lock");
        *t += d;
    }
}
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// Where a node publishes its events (the Event Grid topic).
pub trait Bus: Send + Sync + 'static {
    /// Publishes one batch; an error means it may or may not have been delivered.
    fn publish(
        &self,
        events: Vec<EventGridEvent<Value>>,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Why a publish failed (the events may or may not have been delivered). `Display` is the
/// message; the publisher's error, when there is one, is the source, so that whoever logs a
/// [`NodeError::Publish`](crate::NodeError::Publish) can walk down to the transport's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct BusError(Detail);

/// Why a call to a peer failed: unreachable, an error status, or an answer that is not what a
/// node serves. `Display` is the message, the HTTP client's (or decoder's) error the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct PeerError(Detail);

macro_rules! port_error {
    ($t:ident) => {
        impl $t {
            /// An error with no error beneath it (a refusal described by its message).
            pub fn new(message: impl Into<String>) -> Self {
                $t(Detail::new(message))
            }
            /// An error caused by `cause`, which stays reachable through `source()`.
            pub fn caused_by(
                message: impl Into<String>,
                cause: impl std::error::Error + Send + Sync + 'static,
            ) -> Self {
                $t(Detail::caused_by(message, cause))
            }
        }
        impl From<&str> for $t {
            fn from(message: &str) -> Self {
                $t::new(message)
            }
        }
        impl From<String> for $t {
            fn from(message: String) -> Self {
                $t::new(message)
            }
        }
    };
}
port_error!(BusError);
port_error!(PeerError);

/// What asking a peer directly whether it is up said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Up,
    /// It cannot be executing anything: its app is stopped (Azure's front end, and the local
    /// host, answer 403 "This web app is stopped.") or nothing listens (connection refused).
    Down,
    /// No answer in time, or an answer that proves nothing (a paused process, a network
    /// fault): treated as up, so the deadline decides.
    Unknown,
    /// Asked about one transaction ([`PeerClient::probe_for`]): it answered, and its ledger
    /// does not hold the transaction. It is not executing it (a node executes only what its
    /// ledger holds) and may not hear of it for minutes: Event Grid holds back the deliveries
    /// of an endpoint on probation, for 5 minutes after it answered 403 while stopped.
    Lacks,
}

/// How a node talks to its peers directly (catch-up, and asking an owner whether it is up).
pub trait PeerClient: Send + Sync + 'static {
    /// Asks the peer at `url` whether it is up, waiting at most `within`. The default knows
    /// nothing ([`Probe::Unknown`]): takeovers then wait for their deadlines.
    fn probe(&self, url: &str, within: std::time::Duration) -> impl Future<Output = Probe> + Send {
        let _ = (url, within);
        async { Probe::Unknown }
    }
    /// Asks the peer at `url` whether its ledger holds `transaction` ([`Probe::Up`] when it
    /// does, [`Probe::Lacks`] when it answers that it does not), waiting at most `within`. The
    /// default asks only whether it is up.
    fn probe_for(
        &self,
        url: &str,
        transaction: &str,
        within: std::time::Duration,
    ) -> impl Future<Output = Probe> + Send {
        let _ = transaction;
        self.probe(url, within)
    }
    fn status(&self, url: &str) -> impl Future<Output = Result<NodeStatusView, PeerError>> + Send;
    fn ledger(
        &self,
        url: &str,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<LedgerPage, PeerError>> + Send;
}
