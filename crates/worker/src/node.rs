//! A worker node's behaviour, independent of HTTP.
//!
//! Invariants this module maintains (with the store's):
//! 1. A delivery is acknowledged only after every command in it is durably in this node's
//!    ledger (`insert_commands` returns after a majority, journaled write).
//! 2. A redelivered command is recognised by its transaction id (the ledger's `_id`) and never
//!    inserted twice; execution itself is idempotent through the warehouse marker.
//! 3. A node executes a transaction only when no outcome is known to its ledger and its rank
//!    among the live nodes says it is its turn (`saldo_core::ledger`); the warehouse marker makes
//!    a wrong guess harmless (the loser adopts the winner's outcome).
//! 4. The ledger is the outbox: an outcome this node executed is recorded (unpublished) before
//!    `transactionCompleted` is published, and marked published only after the topic took it;
//!    every sweep publishes what is still unpublished.
//! 5. A known outcome is never overwritten by a different one; a disagreement is logged as an
//!    error and counted (`conflicts`), since it would mean exactly-once broke.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, Heartbeat, NODE_HEARTBEAT, Outcome, RecordUpdated, SaldoEvent,
    TRANSACTION_COMPLETED, TransactionCompleted,
};
use saldo_core::ledger::{is_live, rank_of, sweep_turn_at};
use saldo_core::views::{
    LedgerEntryView, LedgerPage, LedgerState, NodeStatusView, PeerView, ProductView,
};
use saldo_store::{
    Command, Inserted, LedgerEntry, NewCommand, OutcomeRecord, PeerRecord, Recorded, Store,
    StoreError,
};
use serde_json::Value;
use tracing::Instrument;

use crate::intake;

/// Event Grid's limit on events per delivery (and per publish request).
pub const MAX_EVENTS_PER_DELIVERY: usize = 5_000;
/// Pending entries a sweep looks at, and executions it performs, at most.
pub const SWEEP_SCAN: usize = 200;
pub const SWEEP_EXECUTIONS: usize = 50;
/// Executions done inline by one delivery at most: Event Grid gives a delivery 30 s, and the
/// rest are due at once for the next sweep anyway (rank 0 has no deadline to wait for).
pub const MAX_INLINE_EXECUTIONS: usize = 20;
/// Unpublished completions a sweep re-publishes at most.
pub const OUTBOX_BATCH: usize = 200;
/// Catch-up: entries per page, pages per peer per round, peers per round.
pub const CATCH_UP_PAGE: usize = 200;
pub const CATCH_UP_PAGES: usize = 50;
pub const MAX_PEERS: usize = 32;
/// The event types Event Grid itself sends to a webhook.
pub const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
pub const SUBSCRIPTION_DELETED: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";
/// Subjects of the events the workers publish.
pub const COMPLETION_SUBJECT: &str = "webapp/workers/transactions";

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

/// A node's fixed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub region: String,
    /// Base URL at which peers reach this node.
    pub public_url: String,
    /// Bootstrap peer base URLs (`SALDO_PEERS`); peers heard by heartbeat are added at run time.
    pub peers: Vec<String>,
    /// How long each rank waits after the one before it (`SALDO_TAKEOVER_MS`).
    pub takeover: Duration,
    /// A peer is live if its stored heartbeat changed within this (`SALDO_LIVENESS_MS`).
    pub liveness: Duration,
    /// How stale this instance's copy of the region's peer records may be before ranking reads
    /// them again (`SALDO_PEERS_CACHE_MS`).
    pub peers_cache: Duration,
    /// Catch up with peers every this many sweeps (and at start).
    pub catch_up_every: u64,
}

/// Why a delivery or timer invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Can never succeed (HTTP 400: Event Grid dead-letters it, never retries).
    #[error("{0}")]
    Invalid(String),
    /// Not yet started (HTTP 503: retry).
    #[error("node is starting: {0}")]
    NotReady(String),
    /// The database failed (unavailable → 503, otherwise 500; both retried).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic did not take our events (retried by the next sweep: the ledger is the outbox).
    #[error("publishing failed: {0}")]
    Publish(String),
    /// A peer could not be reached or answered nonsense (catch-up skips it).
    #[error("peer: {0}")]
    Peer(String),
    /// A broken invariant ended the work (a panic): HTTP 500, retried.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a successful delivery amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The subscription validation handshake: answer `{"validationResponse": code}`.
    Validation { code: String },
    Accepted {
        new_commands: usize,
        duplicates: usize,
        outcomes: usize,
        heartbeats: usize,
        executed: usize,
        /// Bad events of this delivery, now in the quarantine.
        quarantined: usize,
    },
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub executed: usize,
    pub republished: usize,
    pub repairs: Option<usize>,
}

macro_rules! counters {
    ($($field:ident => $name:literal),* $(,)?) => {
        /// Monotonic counters, reported by `/api/status` and in heartbeats.
        #[derive(Default)]
        pub struct Counters { $(pub $field: AtomicU64,)* }
        impl Counters {
            pub fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert($name.to_string(), self.$field.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}
counters! {
    received => "received",
    duplicates => "duplicates",
    executed => "executed",
    taken_over => "takenOver",
    rejected => "rejected",
    adopted => "adopted",
    peers_recorded => "peersRecorded",
    catch_up_repairs => "catchUpRepairs",
    publish_retries => "publishRetries",
    conflicts => "conflicts",
    invalid => "invalid",
    contended => "contended",
    inline_failed => "inlineFailed",
}

fn inc(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// The deterministic id of a transaction's completion event: republishing the same outcome
/// (outbox retries, a restarted executor adopting its own marker) yields the same event id, so
/// any consumer that dedupes by event id sees it once. One transaction has one outcome (the
/// warehouse marker), so the transaction id alone determines it.
pub fn completion_event_id(transaction: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("saldo:transactionCompleted:{transaction}").as_bytes(),
    )
    .to_string()
}

/// Builds the `transactionCompleted` event for an outcome this node executed.
pub fn completion_event(
    transaction: &str,
    outcome: &OutcomeRecord,
    traceparent: Option<String>,
    tracestate: Option<String>,
    now: DateTime<Utc>,
) -> EventGridEvent<Value> {
    let data = TransactionCompleted {
        transaction: transaction.to_string(),
        status: outcome.status,
        timestamp: outcome.at,
        node: outcome.node.clone(),
        region: outcome.region.clone(),
        reason: outcome.reason.clone(),
        products: outcome.quantities.clone(),
        takeover: outcome.takeover,
        traceparent,
        tracestate,
    };
    EventGridEvent {
        id: completion_event_id(transaction),
        event_type: TRANSACTION_COMPLETED.to_string(),
        subject: COMPLETION_SUBJECT.to_string(),
        event_time: now,
        data: serde_json::to_value(data).expect("completion serialises"),
        data_version: DATA_VERSION.to_string(),
        metadata_version: None,
        topic: None,
    }
}

/// A heartbeat's place in its sender's history: (its incarnation, its timestamp).
type HeartbeatStamp = (u64, DateTime<Utc>);

/// This instance's copy of the region's peer records (`peers_<node>`, the one truth every
/// instance of the region reads), and when, on this instance's own clock, it saw each peer's
/// stored heartbeat change. A peer is live while that change is recent: no clock but this
/// instance's is ever compared, and any instance reading the same records reaches the same
/// verdict within `peers_cache` + `liveness`.
#[derive(Default)]
struct PeerCache {
    loaded_at: Option<DateTime<Utc>>,
    records: BTreeMap<String, PeerRecord>,
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

    fn is_live(&self, p: &PeerRecord, now: DateTime<Utc>, liveness: Duration) -> bool {
        p.ready
            && self
                .changed_at
                .get(&p.node)
                .is_some_and(|(_, at)| is_live(*at, now, liveness))
    }
}

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

    /// Reads the region's peer records (`peers_<node>`) into this instance's cache.
    async fn refresh_peers(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let records = self.store.peers().await?;
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
    /// be read the cached copy serves (the ranking is an optimisation, never the safety).
    async fn live_peers(&self, now: DateTime<Utc>) -> Vec<String> {
        let stale = {
            let cache = self.peers.lock().expect("peers lock");
            cache
                .loaded_at
                .is_none_or(|at| now < at || now - at >= self.cfg.peers_cache)
        };
        if stale && let Err(e) = self.refresh_peers(now).await {
            tracing::warn!(error = %e, "reading the region's peer records failed; ranking on the cached copy");
        }
        let cache = self.peers.lock().expect("peers lock");
        cache
            .records
            .values()
            .filter(|p| p.node != self.cfg.node && cache.is_live(p, now, self.cfg.liveness))
            .map(|p| p.node.clone())
            .collect()
    }

    fn rank(&self, transaction: &str, live: &[String]) -> usize {
        rank_of(transaction, &self.cfg.node, live.iter().map(String::as_str))
    }

    /// Stores what was heard of a peer if it is newer than the region's record; only then does
    /// it count as heard (a heartbeat whose store failed is redelivered and heard then).
    async fn remember_peer(&self, peer: PeerRecord) -> Result<bool, StoreError> {
        if peer.node == self.cfg.node {
            return Ok(false);
        }
        let newer = self.store.record_peer(&peer).await?;
        if newer {
            let now = self.clock.now();
            self.peers.lock().expect("peers lock").observe(peer, now);
            inc(&self.counters.peers_recorded, 1);
        }
        Ok(newer)
    }

    /// Handles one Event Grid delivery (the JSON body). A malformed delivery (not an array of
    /// 1..=5000 events, a validation event not alone) is refused whole with nothing written.
    /// Otherwise its events are sorted ([`intake`]): the valid ones are taken, the bad ones
    /// quarantined durably before the delivery is acknowledged; a delivery with nothing valid
    /// in it is refused (400).
    pub async fn handle_delivery(&self, body: &Value) -> Result<Delivery, NodeError> {
        let Some(items) = body.as_array() else {
            inc(&self.counters.invalid, 1);
            return Err(NodeError::Invalid(
                "a delivery is a JSON array of events".into(),
            ));
        };
        if items.is_empty() || items.len() > MAX_EVENTS_PER_DELIVERY {
            inc(&self.counters.invalid, 1);
            return Err(NodeError::Invalid(format!(
                "a delivery has 1..={MAX_EVENTS_PER_DELIVERY} events"
            )));
        }
        // The validation handshake (Event Grid schema): alone in its delivery.
        if let Some(v) = items
            .iter()
            .find(|e| e.get("eventType").and_then(Value::as_str) == Some(SUBSCRIPTION_VALIDATION))
        {
            let code = v.pointer("/data/validationCode").and_then(Value::as_str);
            return match (items.len(), code) {
                (1, Some(code)) if !code.is_empty() => Ok(Delivery::Validation {
                    code: code.to_string(),
                }),
                _ => Err(NodeError::Invalid(
                    "a validation event comes alone and carries data.validationCode".into(),
                )),
            };
        }
        // One bad event never takes good ones with it (see `intake`).
        let mut sorted = intake::sort(items, self.clock.now(), &self.admission);
        inc(&self.counters.invalid, sorted.bad.len());
        if sorted.taken.is_empty() && !sorted.bad.is_empty() {
            // Nothing here can ever be taken: 400, so Event Grid dead-letters it. Quarantined
            // as well when the database can be reached (the dead letter keeps it otherwise).
            let why = sorted.summary();
            if self.is_ready()
                && let Err(e) = self.store.quarantine(&sorted.bad).await
            {
                tracing::warn!(error = %e, "could not quarantine an all-bad delivery; Event Grid dead-letters it");
            }
            return Err(NodeError::Invalid(why));
        }
        let parsed = std::mem::take(&mut sorted.taken);
        if !self.is_ready() {
            return Err(NodeError::NotReady(
                "the ledger is not initialised yet".into(),
            ));
        }
        // The bad ones are durable before anything is acknowledged; if that fails, the whole
        // delivery is retried (503), and the valid ones are then recognised as duplicates.
        if !sorted.bad.is_empty() {
            self.store.quarantine(&sorted.bad).await?;
            tracing::warn!(quarantined = sorted.bad.len(), reason = %sorted.summary(), "quarantined bad events; taking the rest of the delivery");
        }
        let now = self.clock.now();
        let mut commands = Vec::new();
        let mut completions = Vec::new();
        let mut heartbeats = Vec::new();
        for e in parsed {
            match e {
                SaldoEvent::RecordUpdated(e) => commands.push(NewCommand {
                    transaction: e.id,
                    command: Command {
                        products: e.data.products,
                        traceparent: e.data.traceparent,
                        tracestate: e.data.tracestate,
                    },
                    received_at: now,
                }),
                SaldoEvent::TransactionCompleted(e) => completions.push(e.data),
                SaldoEvent::Heartbeat(e) => heartbeats.push(e.data),
            }
        }
        // 1. Commands: one batch insert; durable before we acknowledge.
        let inserted = self.store.insert_commands(&commands).await?;
        let new: Vec<&NewCommand> = commands
            .iter()
            .zip(&inserted)
            .filter(|(_, r)| **r == Inserted::New)
            .map(|(c, _)| c)
            .collect();
        inc(&self.counters.received, new.len());
        {
            let mut seen = self.pending_seen.lock().expect("pending lock");
            for c in new.iter().take(SWEEP_SCAN.saturating_sub(seen.len())) {
                seen.insert(c.transaction.clone(), now);
            }
        }
        inc(&self.counters.duplicates, commands.len() - new.len());
        // One span per command, a child of the API's request (trace context from
        // `data.traceparent`), so that each region's receipt shows in the purchase's trace.
        for (c, r) in commands.iter().zip(&inserted) {
            let span = tracing::info_span!(
                "recordUpdated",
                otel.kind = "consumer",
                transaction = %c.transaction,
                node = %self.cfg.node,
                region = %self.cfg.region,
                duplicate = *r == Inserted::Duplicate,
            );
            saldo_telemetry::set_parent_with_state(
                &span,
                c.command.traceparent.as_deref(),
                c.command.tracestate.as_deref(),
            );
            span.in_scope(|| tracing::info!("command recorded"));
        }
        // 2. Peers' outcomes. Our own come back to us too (one topic): they are in our ledger
        //    already, because the outbox records before it publishes, so skip them.
        let mut outcomes = 0;
        let mut decided = BTreeSet::new();
        for c in &completions {
            decided.insert(c.transaction.clone());
            if c.node == self.cfg.node {
                continue;
            }
            let outcome = OutcomeRecord {
                status: c.status,
                node: c.node.clone(),
                region: c.region.clone(),
                reason: c.reason.clone(),
                quantities: c.products.clone(),
                at: c.timestamp,
                takeover: c.takeover,
            };
            // The peer's record of the outcome joins the purchase's trace too.
            let span = tracing::info_span!(
                "transactionCompleted",
                otel.kind = "consumer",
                transaction = %c.transaction,
                node = %self.cfg.node,
                region = %self.cfg.region,
                executor = %c.node,
            );
            saldo_telemetry::set_parent_with_state(
                &span,
                c.traceparent.as_deref(),
                c.tracestate.as_deref(),
            );
            let recorded = self
                .record(&c.transaction, &outcome, true, now)
                .instrument(span.clone())
                .await?;
            if recorded == Recorded::New {
                span.in_scope(|| tracing::info!(status = ?c.status, "peer's outcome recorded"));
                outcomes += 1;
            }
        }
        // 3. Heartbeats: liveness on *our* clock.
        for h in &heartbeats {
            self.remember_peer(peer_from_heartbeat(h, now)).await?;
        }
        // 4. Acknowledged from here on. Execute what we own at rank 0; a failure here is not
        //    the delivery's failure (the sweep retries).
        let live = self.live_peers(now).await;
        let mine: Vec<&NewCommand> = new
            .into_iter()
            .filter(|c| !decided.contains(&c.transaction) && self.rank(&c.transaction, &live) == 0)
            .take(MAX_INLINE_EXECUTIONS)
            .collect();
        let mut executed = 0;
        let mut to_publish = Vec::new();
        for c in mine {
            match self.execute_one(&c.transaction, &c.command, 0).await {
                Ok(Some(p)) => {
                    executed += 1;
                    to_publish.push(p);
                }
                Ok(None) => executed += 1,
                Err(e) => {
                    // Possibly after its commit (a timeout, a conflict recording the outcome):
                    // the sweep then adopts our own marker.
                    inc(&self.counters.inline_failed, 1);
                    tracing::warn!(transaction = %c.transaction, error = %e, "inline execution failed; the sweep will retry")
                }
            }
        }
        if let Err(e) = self.publish_completions(to_publish).await {
            tracing::warn!(error = %e, "publishing completions failed; the sweep will retry");
        }
        Ok(Delivery::Accepted {
            new_commands: inserted.iter().filter(|r| **r == Inserted::New).count(),
            duplicates: inserted
                .iter()
                .filter(|r| **r == Inserted::Duplicate)
                .count(),
            outcomes,
            heartbeats: heartbeats.len(),
            executed,
            quarantined: sorted.bad.len(),
        })
    }

    /// Records an outcome in our ledger; a conflicting known outcome is logged loudly.
    async fn record(
        &self,
        tx: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        let r = self
            .store
            .record_outcome(tx, outcome, published, now)
            .await?;
        if let Recorded::Conflict(known) = &r {
            inc(&self.counters.conflicts, 1);
            tracing::error!(
                transaction = tx, known = ?known, heard = ?outcome,
                "CONFLICTING OUTCOMES for one transaction: exactly-once is broken; keeping the first"
            );
        }
        Ok(r)
    }

    /// Executes (or adopts) one transaction and records the outcome. Returns the completion
    /// this node owes the fleet (when the marker is its own), to be published.
    async fn execute_one(
        &self,
        tx: &str,
        command: &Command,
        rank: usize,
    ) -> Result<Option<(String, OutcomeRecord, Option<String>, Option<String>)>, StoreError> {
        let span = tracing::info_span!(
            "execute",
            otel.kind = "consumer",
            transaction = tx,
            node = %self.cfg.node,
            region = %self.cfg.region,
            rank
        );
        saldo_telemetry::set_parent_with_state(
            &span,
            command.traceparent.as_deref(),
            command.tracestate.as_deref(),
        );
        let result = async {
            let now = self.clock.now();
            let ex = self.store.execute(tx, &command.products, &self.cfg.region, rank > 0, now).await?;
            if ex.fresh {
                inc(&self.counters.executed, 1);
                if ex.outcome.status == Outcome::Rejected {
                    inc(&self.counters.rejected, 1);
                }
                if rank > 0 {
                    inc(&self.counters.taken_over, 1);
                }
                tracing::info!(status = ?ex.outcome.status, reason = ?ex.outcome.reason, "executed");
            } else {
                inc(&self.counters.adopted, 1);
            }
            let ours = ex.outcome.node == self.cfg.node;
            self.record(tx, &ex.outcome, !ours, now).await?;
            let traceparent = saldo_telemetry::current_traceparent().or_else(|| command.traceparent.clone());
            Ok(ours.then(|| (tx.to_string(), ex.outcome, traceparent, command.tracestate.clone())))
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            // Inside the execution's span, so the failure is an exception of this purchase's
            // trace (Application Insights), not a loose log line.
            span.in_scope(|| tracing::error!(error = %e, "execution failed"));
        }
        result
    }

    /// Publishes completions in one batch, then marks them published.
    async fn publish_completions(
        &self,
        items: Vec<(String, OutcomeRecord, Option<String>, Option<String>)>,
    ) -> Result<usize, NodeError> {
        if items.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let mut n = 0;
        for chunk in items.chunks(OUTBOX_BATCH) {
            let events = chunk
                .iter()
                .map(|(tx, o, tp, ts)| completion_event(tx, o, tp.clone(), ts.clone(), now))
                .collect();
            self.bus.publish(events).await.map_err(NodeError::Publish)?;
            let txs: Vec<String> = chunk.iter().map(|(tx, ..)| tx.clone()).collect();
            self.store.mark_published(&txs).await?;
            n += chunk.len();
        }
        Ok(n)
    }

    /// The periodic work: take over overdue transactions, re-publish the outbox, and catch up
    /// with peers every `catch_up_every` sweeps (the first sweep included).
    pub async fn sweep(&self) -> Result<SweepReport, NodeError> {
        if !self.is_ready() {
            self.start().await?;
        }
        let round = self.sweeps.fetch_add(1, Ordering::Relaxed);
        let mut report = SweepReport::default();
        // 1. Takeover (and retry of failed inline executions).
        let now = self.clock.now();
        let live = self.live_peers(now).await;
        let mut to_publish = Vec::new();
        let mut first_error = None;
        let pending = self.store.pending(SWEEP_SCAN).await?;
        let seen_at: BTreeMap<String, DateTime<Utc>> = {
            let mut seen = self.pending_seen.lock().expect("pending lock");
            let mut next = BTreeMap::new();
            for e in &pending {
                let at = seen.get(&e.transaction).copied().unwrap_or(now);
                next.insert(e.transaction.clone(), at);
            }
            *seen = next.clone();
            next
        };
        for e in pending {
            if report.executed >= SWEEP_EXECUTIONS {
                break;
            }
            let Some(command) = &e.command else { continue };
            let rank = self.rank(&e.transaction, &live);
            if now < sweep_turn_at(seen_at[&e.transaction], rank, self.cfg.takeover) {
                continue;
            }
            match self.execute_one(&e.transaction, command, rank).await {
                Ok(p) => {
                    report.executed += 1;
                    to_publish.extend(p);
                }
                Err(err @ StoreError::Contended(_)) => {
                    // Contention is not an outage: this transaction's documents are hot (its
                    // products, or our ledger's counter). Go on with the others; the next sweep
                    // tries this one again.
                    inc(&self.counters.contended, 1);
                    tracing::info!(transaction = %e.transaction, error = %err, "sweep execution contended; next sweep retries it");
                }
                Err(err @ StoreError::Unavailable(_)) => {
                    // Stop at the first outage: with the database down every further attempt
                    // would wait out its own timeout.
                    tracing::warn!(transaction = %e.transaction, error = %err, "sweep execution failed");
                    first_error = Some(err);
                    break;
                }
                Err(err) => {
                    // Anything else is specific to this transaction (a bug, corrupt data): skip
                    // it so that one poisoned entry cannot stall the takeover of all others,
                    // the outbox and catch-up; the sweep reports the failure at the end.
                    tracing::error!(transaction = %e.transaction, error = %err, "sweep execution failed; skipped");
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(e @ StoreError::Unavailable(_)) = &first_error {
            // Publish what did execute; the outage fails this sweep.
            if let Err(p) = self.publish_completions(to_publish).await {
                tracing::warn!(error = %p, "publishing completions failed; the outbox retries");
            }
            return Err(e.clone().into());
        }
        // A topic outage must not stop the outbox check or catch-up (which talks to peers,
        // not to the topic): remember the first failure and report it at the end.
        let mut failure: Option<NodeError> = first_error.map(NodeError::from);
        if let Err(e) = self.publish_completions(to_publish).await {
            failure.get_or_insert(e);
        }
        // 2. The outbox: whatever is still unpublished (a publish that failed before, or a
        //    crash between recording and publishing).
        let unpublished = self.store.unpublished(OUTBOX_BATCH).await?;
        let items: Vec<_> = unpublished
            .into_iter()
            .filter_map(|e| {
                let o = e.outcome?;
                let (tp, ts) = e
                    .command
                    .map(|c| (c.traceparent, c.tracestate))
                    .unwrap_or_default();
                Some((e.transaction, o, tp, ts))
            })
            .collect();
        match self.publish_completions(items).await {
            Ok(n) => {
                inc(&self.counters.publish_retries, n);
                report.republished = n;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        // 3. Catch-up.
        if round.is_multiple_of(self.cfg.catch_up_every) {
            report.repairs = Some(self.catch_up().await?);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(report)
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
            self.store
                .record_peer(&peer_from_heartbeat(&hb, now))
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

    /// Reconciles with every known peer: pages through its ledger feed from the last cursor and
    /// merges commands and outcomes into ours. Returns the number of repairs (entries our
    /// ledger learnt). A peer that cannot be reached is skipped (logged); a failure of our own
    /// database fails the round.
    pub async fn catch_up(&self) -> Result<usize, NodeError> {
        let mut urls: BTreeSet<String> = self.cfg.peers.iter().cloned().collect();
        urls.extend(
            self.peers
                .lock()
                .expect("peers lock")
                .records
                .values()
                .map(|p| p.url.clone()),
        );
        urls.remove(&self.cfg.public_url);
        let mut repairs = 0;
        for url in urls.into_iter().filter(|u| !u.is_empty()).take(MAX_PEERS) {
            match self.catch_up_from(&url).await {
                Ok(n) => repairs += n,
                Err(NodeError::Store(StoreError::Contended(e))) => {
                    // Our ledger was busy through the retries: this peer's turn comes again.
                    inc(&self.counters.contended, 1);
                    tracing::info!(peer = %url, error = %e, "catch-up from a peer contended; next round");
                }
                Err(NodeError::Store(e)) => return Err(NodeError::Store(e)),
                Err(e) => tracing::info!(peer = %url, error = %e, "catch-up skipped a peer"),
            }
        }
        Ok(repairs)
    }

    /// Catch-up from one peer (see [`Node::catch_up`]).
    pub async fn catch_up_from(&self, url: &str) -> Result<usize, NodeError> {
        let status = self
            .peer_client
            .status(url)
            .await
            .map_err(NodeError::Peer)?;
        if status.node == self.cfg.node {
            return Ok(0);
        }
        let now = self.clock.now();
        // Known from now on (its URL and region), if it was not: a status answer carries no
        // place in the peer's heartbeat history, so it never overrides a heartbeat.
        self.remember_peer(PeerRecord {
            node: status.node.clone(),
            region: status.region.clone(),
            url: url.to_string(),
            ready: status.ready,
            started_at: status.started_at,
            last_heartbeat: now,
            incarnation: 0,
            beat_at: DateTime::<Utc>::UNIX_EPOCH,
            counters: status.counters.clone(),
        })
        .await?;
        let mut cursor = self.store.cursor(url).await?;
        let mut repairs = 0;
        for _ in 0..CATCH_UP_PAGES {
            let page = self
                .peer_client
                .ledger(url, cursor, CATCH_UP_PAGE)
                .await
                .map_err(NodeError::Peer)?;
            if page.entries.is_empty() {
                break;
            }
            if page.next <= cursor {
                tracing::warn!(peer = %url, cursor, next = page.next, "peer feed did not advance; stopping");
                break;
            }
            repairs += self.merge(&page.entries).await?;
            cursor = page.next;
            self.store.set_cursor(url, cursor).await?;
            if page.entries.len() < CATCH_UP_PAGE {
                break;
            }
        }
        inc(&self.counters.catch_up_repairs, repairs);
        Ok(repairs)
    }

    /// Merges a peer's ledger entries into ours. Returns how many taught us something.
    pub async fn merge(&self, entries: &[LedgerEntryView]) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut repairs = 0;
        let mut commands = Vec::new();
        for e in entries.iter().filter(|e| e.state == LedgerState::Pending) {
            if let Some(products) = &e.products {
                // A peer validated it already; check again so a peer's bug cannot poison us.
                let cmd = RecordUpdated {
                    transaction: None,
                    products: products.clone(),
                    traceparent: None,
                    tracestate: None,
                };
                if let Err(err) = cmd.validate(&e.transaction) {
                    tracing::warn!(transaction = %e.transaction, error = %err, "peer sent an invalid command; skipped");
                } else {
                    commands.push(NewCommand {
                        transaction: e.transaction.clone(),
                        command: Command {
                            products: products.clone(),
                            traceparent: e.traceparent.clone(),
                            tracestate: None,
                        },
                        received_at: now,
                    });
                }
            }
        }
        let inserted = self.store.insert_commands(&commands).await?;
        repairs += inserted.iter().filter(|r| **r == Inserted::New).count();
        for e in entries {
            let status = match e.state {
                LedgerState::Pending => continue,
                LedgerState::Completed => Outcome::Completed,
                LedgerState::Rejected => Outcome::Rejected,
            };
            let Some(node) = e.executed_by.clone() else {
                tracing::warn!(transaction = %e.transaction, "peer entry has an outcome but no executor; skipped");
                continue;
            };
            let outcome = OutcomeRecord {
                status,
                // The executor of our own outcome heard back from a peer: we lost our record
                // (crash between commit and record); owe the fleet its publication again.
                node: node.clone(),
                region: e.executed_region.clone().unwrap_or_default(),
                reason: e.reason.clone(),
                quantities: e.quantities.clone(),
                at: e.recorded_at,
                takeover: e.takeover,
            };
            let published = node != self.cfg.node;
            if self
                .record(&e.transaction, &outcome, published, now)
                .await?
                == Recorded::New
            {
                repairs += 1;
            }
        }
        Ok(repairs)
    }

    /// One page of this node's ledger feed.
    pub async fn feed(&self, after: u64, limit: usize) -> Result<LedgerPage, StoreError> {
        let entries = self
            .store
            .page(after, limit.clamp(1, saldo_store::MAX_PAGE))
            .await?;
        let next = entries.last().map(|e| e.seq).unwrap_or(after);
        Ok(LedgerPage {
            entries: entries.iter().map(|e| e.view(&self.cfg.node)).collect(),
            next,
        })
    }

    /// The newest entries of this node's ledger, newest first (`next` is 0: not a feed page).
    pub async fn recent(&self, limit: usize) -> Result<LedgerPage, StoreError> {
        let entries = self
            .store
            .recent(limit.clamp(1, saldo_store::MAX_PAGE))
            .await?;
        Ok(LedgerPage {
            entries: entries.iter().map(|e| e.view(&self.cfg.node)).collect(),
            next: 0,
        })
    }

    pub async fn ledger_entry(&self, tx: &str) -> Result<Option<LedgerEntryView>, StoreError> {
        Ok(self
            .store
            .entry(tx)
            .await?
            .map(|e: LedgerEntry| e.view(&self.cfg.node)))
    }

    pub async fn products(&self) -> Result<Vec<ProductView>, StoreError> {
        self.store.products().await
    }

    pub async fn product(&self, id: u64) -> Result<Option<ProductView>, StoreError> {
        self.store.product(id).await
    }

    pub fn counters_snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = self.counters.snapshot();
        m.insert("dbOps".into(), self.store.db_ops());
        m
    }

    /// This node's status; its peers as the region's records say (read again if stale).
    pub async fn status(&self) -> NodeStatusView {
        let now = self.clock.now();
        let live: BTreeSet<String> = self.live_peers(now).await.into_iter().collect();
        let peers = self
            .peers
            .lock()
            .expect("peers lock")
            .records
            .values()
            .map(|p| PeerView {
                node: p.node.clone(),
                region: p.region.clone(),
                url: p.url.clone(),
                last_heartbeat: p.last_heartbeat,
                live: live.contains(&p.node),
            })
            .collect();
        NodeStatusView {
            node: self.cfg.node.clone(),
            region: self.cfg.region.clone(),
            url: self.cfg.public_url.clone(),
            ready: self.is_ready(),
            started_at: self.started_at,
            counters: self.counters_snapshot(),
            peers,
        }
    }
}

fn peer_from_heartbeat(h: &Heartbeat, heard_at: DateTime<Utc>) -> PeerRecord {
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
