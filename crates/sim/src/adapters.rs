//! What the simulated nodes are given as their ports: a clock of their own, a bus onto the
//! simulated topic, and peer clients over the simulated network (which logs every feed page).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use saldo_core::events::EventGridEvent;
use saldo_core::views::{LedgerPage, NodeStatusView};
use saldo_store::{Fault, MemStore};
use saldo_worker::{Bus, BusError, Clock, ManualClock, Node, PeerClient, PeerError, Probe};
use serde_json::Value;

use crate::faults::Faults;

pub type SimNode = Node<MemStore, SimClock, SimBus, SimPeers>;

/// One instance's clock: the simulation's time plus this machine's offset (seconds of skew;
/// a restarted instance draws a new one, so its clock may jump back).
#[derive(Clone)]
pub struct SimClock {
    pub(crate) base: ManualClock,
    pub(crate) offset: Duration,
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + self.offset
    }
}

/// The simulated topic's inbox of published events (shared by all nodes' buses).
#[derive(Clone, Default)]
pub struct Topic(pub(crate) Arc<Mutex<Vec<EventGridEvent<Value>>>>);

/// A node's connection to the topic. Publishing can fail (before or after the topic took it).
pub struct SimBus {
    pub(crate) topic: Topic,
    pub(crate) faults: Arc<Mutex<Faults>>,
}

impl Bus for SimBus {
    async fn publish(&self, events: Vec<EventGridEvent<Value>>) -> Result<(), BusError> {
        match self.faults.lock().unwrap().publish() {
            Fault::Before | Fault::Contended => Err("simulated: topic unreachable".into()),
            Fault::After => {
                self.topic.0.lock().unwrap().extend(events);
                Err("simulated: reply lost".into())
            }
            Fault::None => {
                self.topic.0.lock().unwrap().extend(events);
                Ok(())
            }
        }
    }
}

/// One running HTTP instance as the network reaches it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) node: Arc<SimNode>,
    pub(crate) alive: Arc<AtomicBool>,
}

/// The HTTP instances that are up, by region URL (what a peer's HTTP call would reach).
#[derive(Clone, Default)]
pub struct Directory(pub(crate) Arc<Mutex<BTreeMap<String, Vec<Endpoint>>>>);

/// What every feed page served: (reader region, peer URL) → (transaction, seq) served.
#[derive(Clone, Default)]
pub(crate) struct FeedLog(pub(crate) Arc<Mutex<Served>>);

#[derive(Default)]
pub(crate) struct Served {
    pub(crate) entries: BTreeMap<(String, String), BTreeSet<(String, u64)>>,
    pub(crate) pages: usize,
}

pub struct SimPeers {
    pub(crate) dir: Directory,
    pub(crate) faults: Arc<Mutex<Faults>>,
    /// The region this client's instance belongs to (the reader, in the feed log).
    pub(crate) reader: String,
    pub(crate) log: FeedLog,
    pub(crate) cut_p: f64,
}

impl SimPeers {
    /// A call reaches one of the region's HTTP instances, chosen by the load balancer.
    fn reach(&self, url: &str) -> Result<Endpoint, PeerError> {
        let mut f = self.faults.lock().unwrap();
        if f.peer_fails() {
            return Err(format!("simulated: {url} timed out").into());
        }
        let dir = self.dir.0.lock().unwrap();
        let up = dir
            .get(url)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| PeerError::new(format!("simulated: {url} is down")))?;
        Ok(up[f.rng.random_range(0..up.len())].clone())
    }
}

/// An answer from an instance that crashed while answering never arrives.
fn answered<T>(e: &Endpoint, url: &str, r: T) -> Result<T, PeerError> {
    if e.alive.load(Ordering::Relaxed) {
        Ok(r)
    } else {
        Err(format!("simulated: {url} reset the connection (crashed)").into())
    }
}

impl PeerClient for SimPeers {
    /// Whether the instance reached holds `transaction`: the takeover of a transaction whose
    /// first in line never heard of it (its delivery lost or late) is simulated too. No answer
    /// (a fault, a crash mid-answer, nothing up) proves nothing.
    async fn probe_for(&self, url: &str, transaction: &str, _within: std::time::Duration) -> Probe {
        let Ok(e) = self.reach(url) else {
            return Probe::Unknown;
        };
        match e.node.ledger_entry(transaction).await {
            Ok(found) => match answered(&e, url, found) {
                Ok(Some(_)) => Probe::Up,
                Ok(None) => Probe::Lacks,
                Err(_) => Probe::Unknown,
            },
            Err(_) => Probe::Unknown,
        }
    }
    async fn status(&self, url: &str) -> Result<NodeStatusView, PeerError> {
        let e = self.reach(url)?;
        let s = e.node.status().await;
        answered(&e, url, s)
    }
    async fn ledger(&self, url: &str, after: u64, limit: usize) -> Result<LedgerPage, PeerError> {
        let e = self.reach(url)?;
        // The caller asks for `limit`; the simulation sometimes asks for less, so that page
        // boundaries (where a tie would skip) fall anywhere in the feed.
        let limit = {
            let mut f = self.faults.lock().unwrap();
            if f.rng.random_bool(self.cut_p) {
                f.rng.random_range(1..=3).min(limit)
            } else {
                limit
            }
        };
        let page = e
            .node
            .feed(after, limit)
            .await
            .map_err(|e| PeerError::caused_by(e.to_string(), e))?;
        let page = answered(&e, url, page)?;
        let mut log = self.log.0.lock().unwrap();
        log.pages += 1;
        log.entries
            .entry((self.reader.clone(), url.to_string()))
            .or_default()
            .extend(page.entries.iter().map(|x| (x.transaction.clone(), x.seq)));
        Ok(page)
    }
}
