//! What a node is generic over besides its store: the clock, the outbound bus and the peer
//! client, injected so that the HTTP handlers and the simulation run the same node code.

use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use saldo_core::events::EventGridEvent;
use saldo_core::views::{LedgerPage, NodeStatusView};
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
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// How a node talks to its peers directly (catch-up).
pub trait PeerClient: Send + Sync + 'static {
    fn status(&self, url: &str) -> impl Future<Output = Result<NodeStatusView, String>> + Send;
    fn ledger(
        &self,
        url: &str,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<LedgerPage, String>> + Send;
}
