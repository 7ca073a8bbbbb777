//! Test doubles of the node's ports, one copy for every suite that drives a [`Node`](crate::Node)
//! without a topic or peers: the worker's own tests and the simulation's (feature `testing`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saldo_core::events::EventGridEvent;
use saldo_core::views::{LedgerPage, NodeStatusView};
use serde_json::Value;

use crate::node::{Bus, BusError, PeerClient, PeerError, Probe};

/// A bus that keeps everything published, optionally after a delay (a slow topic), or refuses
/// every publish while told to (a topic outage). Clones share what was captured and the
/// settings, so a test keeps one and gives the node the other.
#[derive(Clone, Default)]
pub struct Captured {
    events: Arc<Mutex<Vec<EventGridEvent<Value>>>>,
    delay_ms: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

impl Captured {
    /// Every event published so far, in order.
    pub fn published(&self) -> Vec<EventGridEvent<Value>> {
        self.events.lock().expect("captured lock").clone()
    }

    /// Every later publish waits `delay` before it is taken (needs a tokio runtime when non-zero).
    pub fn delay_publishing(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// While `failing`, every publish fails (and keeps nothing), caused by an I/O error as a
    /// real transport's would be.
    pub fn fail_publishing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

impl Bus for Captured {
    async fn publish(&self, events: Vec<EventGridEvent<Value>>) -> Result<(), BusError> {
        // No timer without a delay: suites that run the node on `block_on` have no tokio runtime.
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(BusError::caused_by(
                "captured: topic unreachable",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ));
        }
        self.events.lock().expect("captured lock").extend(events);
        Ok(())
    }
}

/// A bus that takes every publish and keeps nothing.
pub struct NullBus;

impl Bus for NullBus {
    async fn publish(&self, _: Vec<EventGridEvent<Value>>) -> Result<(), BusError> {
        Ok(())
    }
}

/// No peer is reachable: every call fails, naming the URL.
pub struct NoPeers;

impl PeerClient for NoPeers {
    async fn status(&self, url: &str) -> Result<NodeStatusView, PeerError> {
        Err(PeerError::new(format!("{url}: no peers in this test")))
    }
    async fn ledger(&self, url: &str, _: u64, _: usize) -> Result<LedgerPage, PeerError> {
        Err(PeerError::new(format!("{url}: no peers in this test")))
    }
}

/// No peer is reachable for catch-up, but probes are answered as the test says, per URL
/// (unknown URLs: no answer, [`Probe::Unknown`]).
/// Asked about one transaction, a peer answers what [`Probes::set_for`] said for it, else what
/// [`Probes::set`] said for the peer.
#[derive(Clone, Default)]
pub struct Probes(Arc<Mutex<ProbeAnswers>>);

#[derive(Default)]
struct ProbeAnswers {
    by_url: std::collections::BTreeMap<String, Probe>,
    by_transaction: std::collections::BTreeMap<(String, String), Probe>,
}

impl Probes {
    /// From now on the peer at `url` answers `answer`.
    pub fn set(&self, url: &str, answer: Probe) {
        self.0
            .lock()
            .expect("probes lock")
            .by_url
            .insert(url.into(), answer);
    }

    /// From now on the peer at `url`, asked about `transaction`, answers `answer`.
    pub fn set_for(&self, url: &str, transaction: &str, answer: Probe) {
        self.0
            .lock()
            .expect("probes lock")
            .by_transaction
            .insert((url.into(), transaction.into()), answer);
    }
}

impl PeerClient for Probes {
    async fn probe(&self, url: &str, _within: std::time::Duration) -> Probe {
        let answers = self.0.lock().expect("probes lock");
        answers.by_url.get(url).copied().unwrap_or(Probe::Unknown)
    }
    async fn probe_for(&self, url: &str, transaction: &str, within: std::time::Duration) -> Probe {
        let known = {
            let answers = self.0.lock().expect("probes lock");
            answers
                .by_transaction
                .get(&(url.to_string(), transaction.to_string()))
                .copied()
        };
        match known {
            Some(answer) => answer,
            None => self.probe(url, within).await,
        }
    }
    async fn status(&self, url: &str) -> Result<NodeStatusView, PeerError> {
        NoPeers.status(url).await
    }
    async fn ledger(&self, url: &str, after: u64, limit: usize) -> Result<LedgerPage, PeerError> {
        NoPeers.ledger(url, after, limit).await
    }
}
