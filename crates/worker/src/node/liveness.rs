//! Which peers are live, and this node's own heartbeat: the region's peer records
//! (`peers_<node>`), this instance's cached copy of them, and the rank they give a transaction.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Duration, Utc};
use saldo_core::events::{DATA_VERSION, EventGridEvent, Heartbeat, NODE_HEARTBEAT};
use saldo_core::ledger::{is_live, rank_of};
use saldo_store::origin::{Origin, scope};
use saldo_store::{PeerRecord, Store, StoreError};

use super::counters::inc;
use super::{Bus, Clock, Node, NodeError, PeerClient};

/// A heartbeat's place in its sender's history: (its incarnation, its timestamp).
type HeartbeatStamp = (u64, DateTime<Utc>);

/// This instance's copy of the region's peer records (`peers_<node>`, the one truth every
/// instance of the region reads), and when, on this instance's own clock, it saw each peer's
/// stored heartbeat change. A peer is live while that change is recent: no clock but this
/// instance's is ever compared, and any instance reading the same records reaches the same
/// verdict within `peers_cache` + `liveness`.
#[derive(Default)]
pub(super) struct PeerCache {
    loaded_at: Option<DateTime<Utc>>,
    pub(super) records: BTreeMap<String, PeerRecord>,
    changed_at: BTreeMap<String, (HeartbeatStamp, DateTime<Utc>)>,
}

impl PeerCache {
    fn observe(&mut self, rec: PeerRecord, now: DateTime<Utc>) {
        let stamp = rec.stamp();
        match self.changed_at.get(&rec.node) {
            Some((seen, _)) if *seen >= stamp => {}
            _ => {
                self.changed_at.insert(rec.node.clone(), (stamp, now));
            }
        }
        let newer = self
            .records
            .get(&rec.node)
            .is_none_or(|known| known.stamp() <= stamp);
        if newer {
            self.records.insert(rec.node.clone(), rec);
        }
    }

    /// Found down by a probe at a time in `down`, and its stored heartbeat not changed since.
    pub(super) fn down_since_heard(
        &self,
        p: &PeerRecord,
        down: &BTreeMap<String, DateTime<Utc>>,
    ) -> bool {
        down.get(&p.node).is_some_and(|at| {
            self.changed_at
                .get(&p.node)
                .is_none_or(|(_, changed)| changed <= at)
        })
    }

    fn is_live(&self, p: &PeerRecord, now: DateTime<Utc>, liveness: Duration) -> bool {
        p.ready
            && self
                .changed_at
                .get(&p.node)
                .is_some_and(|(_, at)| is_live(*at, now, liveness))
    }
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// Reads the region's peer records (`peers_<node>`) into this instance's cache.
    pub(super) async fn refresh_peers(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let records = scope(Origin::Heartbeat, self.store.peers()).await?;
        let mut cache = self.peers.lock().expect("peers lock");
        for p in records {
            if p.node != self.cfg.node {
                cache.observe(p, now);
            }
        }
        cache.loaded_at = Some(now);
        Ok(())
    }

    /// Names of the peers believed live now (self excluded; [`rank_of`] adds it), from the
    /// region's records, read again once the cached copy is `peers_cache` old. If they cannot
    /// be read the cached copy serves (the ranking is an optimisation, never the safety). A
    /// peer this instance found down (`probe`) is left out until it is heard again.
    pub(super) async fn live_peers(&self, now: DateTime<Utc>) -> Vec<String> {
        let stale = {
            let cache = self.peers.lock().expect("peers lock");
            cache
                .loaded_at
                .is_none_or(|at| now < at || now - at >= self.cfg.peers_cache)
        };
        if stale && let Err(e) = self.refresh_peers(now).await {
            tracing::warn!(error = %e, "reading the region's peer records failed; ranking on the cached copy");
        }
        let down = self.down.lock().expect("down lock").clone();
        let cache = self.peers.lock().expect("peers lock");
        cache
            .records
            .values()
            .filter(|p| p.node != self.cfg.node && cache.is_live(p, now, self.cfg.liveness))
            .filter(|p| !cache.down_since_heard(p, &down))
            .map(|p| p.node.clone())
            .collect()
    }

    pub(super) fn rank(&self, transaction: &str, live: &[String]) -> usize {
        rank_of(transaction, &self.cfg.node, live.iter().map(String::as_str))
    }

    /// Stores what was heard of a peer if it is newer than the region's record; only then does
    /// it count as heard (a heartbeat whose store failed is redelivered and heard then).
    pub(super) async fn remember_peer(&self, peer: PeerRecord) -> Result<bool, StoreError> {
        if peer.node == self.cfg.node {
            return Ok(false);
        }
        let newer = scope(Origin::Heartbeat, self.store.record_peer(&peer)).await?;
        if newer {
            let now = self.clock.now();
            self.peers.lock().expect("peers lock").observe(peer, now);
            inc(&self.counters.peers_recorded, 1);
        }
        Ok(newer)
    }

    /// Publishes a heartbeat (and records this node in its own peers collection).
    pub async fn heartbeat(&self) -> Result<(), NodeError> {
        let now = self.clock.now();
        let hb = Heartbeat {
            node: self.cfg.node.clone(),
            region: self.cfg.region.clone(),
            url: self.cfg.public_url.clone(),
            ready: self.is_ready(),
            started_at: self.started_at,
            timestamp: now,
            incarnation: self.incarnation.load(Ordering::Acquire),
            counters: self.counters_snapshot(),
        };
        if self.is_ready() {
            scope(
                Origin::Heartbeat,
                self.store.record_peer(&peer_from_heartbeat(&hb, now)),
            )
            .await?;
        }
        let event = EventGridEvent {
            id: uuid::Uuid::new_v4().to_string(),
            event_type: NODE_HEARTBEAT.to_string(),
            subject: format!("webapp/workers/{}", self.cfg.node),
            event_time: now,
            data: serde_json::to_value(hb).expect("heartbeat serialises"),
            data_version: DATA_VERSION.to_string(),
            metadata_version: None,
            topic: None,
        };
        self.bus
            .publish(vec![event])
            .await
            .map_err(NodeError::Publish)
    }
}

pub(super) fn peer_from_heartbeat(h: &Heartbeat, heard_at: DateTime<Utc>) -> PeerRecord {
    PeerRecord {
        node: h.node.clone(),
        region: h.region.clone(),
        url: h.url.clone(),
        ready: h.ready,
        started_at: h.started_at,
        last_heartbeat: heard_at,
        incarnation: h.incarnation,
        beat_at: h.timestamp,
        counters: h.counters.clone(),
    }
}
