//! A worker node's behaviour, independent of HTTP.
//!
//! Invariants this module maintains (with the store's):
//! 1. A delivery is acknowledged only after every command in it is durably in this node's
//!    ledger (`write_entries` returns after a majority, journaled write). What this node owns
//!    of it is executed first and written with its outcome in that same write (`delivery`).
//! 2. A redelivered command is recognised by its transaction id (the ledger's `_id`) and never
//!    inserted twice; execution itself is idempotent through the warehouse marker.
//! 3. A node executes a transaction only when no outcome is known to its ledger and its rank
//!    among the live nodes says it is its turn (`saldo_core::ledger`); the warehouse marker makes
//!    a wrong guess harmless (the loser adopts the winner's outcome).
//! 4. The ledger is the outbox: an outcome this node executed is published, then recorded in
//!    one write with the others of its delivery or sweep, marked published only if the topic
//!    took it; every sweep publishes what is still unpublished. Until the record is written the
//!    entry is pending and the warehouse marker is the record: the sweep adopts it and
//!    publishes again under the same event id (`outbox::settle`).
//! 5. A known outcome is never overwritten by a different one; a disagreement is logged as an
//!    error and counted (`conflicts`), since it would mean exactly-once broke.
//!
//! The [`Node`] is defined here; its behaviour lives in one module per job:
//! - `delivery`: one Event Grid delivery (envelope, handshake, intake, recording, inline
//!   execution);
//! - `execution`: executing or adopting a transaction and recording outcomes;
//! - `outbox`: the completion events this node owes, and publishing them;
//! - `sweep`: the periodic takeover, outbox re-publication and catch-up;
//! - `catch_up`: reconciling with peers' ledger feeds;
//! - `liveness`: the region's peer records, ranking, and this node's heartbeat;
//! - `probe`: fast takeover, asking the owners of waiting transactions whether they are up;
//! - `reads`: the ledger feed, entries, products and status this node serves;
//! - `counters`, `config` (with the bounds), `error`, and `ports` (clock, bus, peer client).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use saldo_store::Store;

use crate::intake;

mod catch_up;
mod config;
mod counters;
mod delivery;
mod error;
mod execution;
mod liveness;
mod outbox;
mod ports;
mod probe;
mod reads;
mod sweep;

pub use config::{
    CATCH_UP_PAGE, CATCH_UP_PAGES, Config, MAX_EVENTS_PER_DELIVERY, MAX_INLINE_EXECUTIONS,
    MAX_LACK_PROBES, MAX_PEERS, OUTBOX_BATCH, SWEEP_EXECUTIONS, SWEEP_SCAN,
};
pub use counters::Counters;
pub use delivery::{Delivery, SUBSCRIPTION_DELETED, SUBSCRIPTION_VALIDATION};
pub use error::NodeError;
pub use outbox::{COMPLETION_SUBJECT, completion_event, completion_event_id};
pub use ports::{Bus, BusError, Clock, ManualClock, PeerClient, PeerError, Probe, SystemClock};
pub use sweep::SweepReport;

use liveness::PeerCache;

/// One regional worker node. `S`: store, `C`: clock, `B`: bus, `P`: peer client.
pub struct Node<S, C, B, P> {
    pub cfg: Config,
    pub store: S,
    pub clock: C,
    pub bus: B,
    pub peer_client: P,
    pub counters: Counters,
    started_at: DateTime<Utc>,
    ready: AtomicBool,
    sweeps: AtomicU64,
    /// This process's incarnation (allocated in the database by [`Node::start`]; 0 before).
    incarnation: AtomicU64,
    /// The region's peer records as last read (see [`PeerCache`]).
    peers: Mutex<PeerCache>,
    /// When this instance first saw each pending transaction, on its own clock: the base of
    /// its takeover deadlines. (`received_at` was stamped by whichever instance of the region
    /// recorded it, on that machine's clock; comparing it with ours would compare two clocks.)
    /// Lost on restart, which only delays a takeover; bounded by [`SWEEP_SCAN`].
    pending_seen: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// What this node admits of events that parse (see [`intake::Admission`]).
    admission: intake::Admission,
    /// Peers this instance found down by asking them ([`Probe::Down`]), and when (our clock):
    /// left out of the ranking until their stored heartbeat changes after that (`probe`). A
    /// hint for the ranking only, which is never the safety (the warehouse marker is); each
    /// instance finds out for itself. Bounded by the peers known.
    down: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// When this instance last asked each peer and it was not down (our clock): a peer is
    /// asked at most once per a tenth of the takeover deadline. Bounded by the peers known.
    asked: Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    pub fn new(cfg: Config, store: S, clock: C, bus: B, peer_client: P) -> Self {
        assert!(cfg.takeover > Duration::zero(), "takeover must be positive");
        assert!(cfg.catch_up_every > 0, "catch_up_every must be positive");
        let started_at = clock.now();
        Node {
            cfg,
            store,
            clock,
            bus,
            peer_client,
            counters: Counters::default(),
            started_at,
            ready: AtomicBool::new(false),
            sweeps: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            peers: Mutex::new(PeerCache::default()),
            pending_seen: Mutex::new(BTreeMap::new()),
            admission: intake::Admission::default(),
            down: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets what this node admits (the fleet's names, the clock bound); the default admits any
    /// node and an hour of drift.
    pub fn with_admission(mut self, admission: intake::Admission) -> Self {
        self.admission = admission;
        self
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Start-up: indexes, the ledger's sequence, the persisted peers; then ready. The caller
    /// runs a first [`Node::catch_up`] afterwards (it may be slow; deliveries are accepted
    /// meanwhile, since merging is idempotent).
    pub async fn start(&self) -> Result<(), NodeError> {
        self.store.init().await?;
        if self.incarnation.load(Ordering::Acquire) == 0 {
            let n = self.store.next_incarnation().await?;
            self.incarnation.store(n, Ordering::Release);
        }
        self.refresh_peers(self.clock.now()).await?;
        self.ready.store(true, Ordering::Release);
        tracing::info!(node = %self.cfg.node, incarnation = self.incarnation.load(Ordering::Relaxed), "ready");
        Ok(())
    }
}
