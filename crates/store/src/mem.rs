//! An in-memory database with the same semantics as the MongoDB store, for unit tests and the
//! deterministic simulation. Every operation is atomic (one mutex), and faults can be injected
//! per operation: failing *before* (nothing happened) or *after* (it happened, but the caller
//! hears an error — like a lost reply or an unknown commit result), or as contended (the
//! conflict retries were spent), which is how the simulation models crashes mid-way.
//!
//! Where the protocol depends on the database it behaves as `MongoStore` does, and the store
//! contract tests (`crates/store/tests/contract.rs`) run the same checks against both:
//! - the feed's sequence comes from one counter per ledger, shared by every handle (every
//!   instance of a region): no number is handed out twice, and an entry written after a reader
//!   was served up to `n` is numbered above `n` (the feed needs no horizon);
//! - a write acknowledged through one handle is seen by every other handle at once;
//! - times are kept in whole milliseconds, as `MongoStore` keeps them;
//! - limits are clamped to `1..=MAX_PAGE`, listings ordered as `MongoStore` orders them;
//! - a ledger held by another writer ([`MemDb::hold_ledger`]) makes every numbering write
//!   [`StoreError::Contended`], as a WriteConflict through every retry does.
//!
//! For the simulation, [`MemDb::set_stepping`] makes every operation a step of its own (the
//! caller's future yields before the operation takes effect, so a scheduler can run other
//! handlers and move time in between), and [`MemDb::mutate`] breaks the store on purpose so
//! that tests can show the simulation notices ([`Mutation`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::ProductView;

use crate::model::*;
use crate::{MAX_PAGE, MAX_PRODUCTS, Quarantined, Result, Store, StoreError, decide};

/// What an injected fault does to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The operation does nothing and fails.
    Before,
    /// The operation takes effect, then the caller gets an error.
    After,
    /// The operation does nothing and fails as contended: what `MongoStore` reports when a
    /// write kept conflicting with other writers through all its retries.
    Contended,
}

type FaultHook = Box<dyn FnMut(&str, &str) -> Fault + Send>;

/// A deliberate bug, for tests that show the simulation catches it (never set otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    #[default]
    None,
    /// Each handle (each instance) numbers the feed from its own counter, loaded at `init`, as
    /// sequences taken per process did: two instances hand out the same numbers, and the feed
    /// ties (and a number can fall below what a reader was already served).
    TieSequence,
    /// `execute` does not look for the applied-marker: a second executor applies the
    /// transaction again.
    SkipMarkerCheck,
    /// `insert_commands` answers that each command is new but keeps none of them (an
    /// acknowledged write that was never durable).
    LoseCommands,
}

/// One fresh execution, as the warehouse applied it (for the simulation's invariant checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub transaction: String,
    pub outcome: OutcomeRecord,
    /// The touched products before (None: did not exist) and after.
    pub before: Vec<(u64, Option<i64>)>,
    pub after: Vec<(u64, i64)>,
}

#[derive(Default)]
struct Ledger {
    entries: BTreeMap<String, LedgerEntry>,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    mutation: Mutation,
    /// Ledgers whose counter another writer holds (see [`MemDb::hold_ledger`]).
    held: BTreeSet<String>,
    ledgers: BTreeMap<String, Ledger>,
    peers: BTreeMap<String, BTreeMap<String, PeerRecord>>,
    cursors: BTreeMap<String, BTreeMap<String, u64>>,
    incarnations: BTreeMap<String, u64>,
    products: BTreeMap<u64, ProductView>,
    markers: BTreeMap<String, OutcomeRecord>,
    applied: Vec<Applied>,
    quarantine: BTreeMap<String, BTreeMap<String, Quarantined>>,
    down: bool,
}

/// The shared in-memory database; cheap to clone (all clones are the same database).
#[derive(Clone, Default)]
pub struct MemDb {
    inner: Arc<Mutex<Inner>>,
    hook: Arc<Mutex<Option<FaultHook>>>,
    stepping: Arc<AtomicBool>,
}

impl MemDb {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store handle for `node` (its ledger and peers, and the shared warehouse).
    pub fn store(&self, node: &str) -> MemStore {
        MemStore {
            db: self.clone(),
            node: node.to_string(),
            ops: Arc::new(AtomicU64::new(0)),
            local_seq: Arc::new(Mutex::new(None)),
        }
    }

    /// With stepping on, every operation's future yields once (waking itself) before the
    /// operation takes effect: a scheduler that polls handlers one step at a time interleaves
    /// them at database-call granularity, and can move time while a call is "on the wire".
    pub fn set_stepping(&self, on: bool) {
        self.stepping.store(on, Ordering::Relaxed);
    }

    /// Breaks the store on purpose (see [`Mutation`]); only tests of the simulation do this.
    pub fn mutate(&self, m: Mutation) {
        self.lock().mutation = m;
    }

    /// Another writer holds `node`'s ledger counter (an open transaction that wrote it): every
    /// write that numbers entries there fails as [`StoreError::Contended`] until released, as
    /// a WriteConflict that outlasts every retry does in `MongoStore`.
    pub fn hold_ledger(&self, node: &str, held: bool) {
        let mut inner = self.lock();
        if held {
            inner.held.insert(node.to_string());
        } else {
            inner.held.remove(node);
        }
    }

    /// `node`'s stored catch-up cursors, by peer URL (simulation inspection).
    pub fn cursors(&self, node: &str) -> BTreeMap<String, u64> {
        self.lock().cursors.get(node).cloned().unwrap_or_default()
    }

    /// Whether `node`'s ledger holds `transaction` (the simulation's acknowledgement check).
    pub fn has_entry(&self, node: &str, transaction: &str) -> bool {
        self.lock()
            .ledgers
            .get(node)
            .is_some_and(|l| l.entries.contains_key(transaction))
    }

    /// Whether `node`'s quarantine holds the entry `id`.
    pub fn has_quarantined(&self, node: &str, id: &str) -> bool {
        self.lock()
            .quarantine
            .get(node)
            .is_some_and(|q| q.contains_key(id))
    }

    /// `node`'s quarantine, by entry id (test and simulation inspection).
    pub fn quarantine_of(&self, node: &str) -> BTreeMap<String, Quarantined> {
        self.lock()
            .quarantine
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// While down, every operation fails with [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Installs a fault hook, called with (node, operation name) before every operation.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        *self.hook.lock().expect("fault hook lock") = hook;
    }

    /// Every fresh execution in commit order.
    pub fn applied(&self) -> Vec<Applied> {
        self.lock().applied.clone()
    }

    pub fn markers(&self) -> BTreeMap<String, OutcomeRecord> {
        self.lock().markers.clone()
    }

    pub fn stock(&self) -> BTreeMap<u64, ProductView> {
        self.lock().products.clone()
    }

    /// Every entry of `node`'s ledger (test and simulation inspection).
    pub fn ledger(&self, node: &str) -> BTreeMap<String, LedgerEntry> {
        self.lock()
            .ledgers
            .get(node)
            .map(|l| l.entries.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("MemDb lock poisoned: an invariant check panicked")
    }
}

/// [`Store`] over a [`MemDb`] for one node.
#[derive(Clone)]
pub struct MemStore {
    db: MemDb,
    node: String,
    ops: Arc<AtomicU64>,
    /// This handle's own counter: used only under [`Mutation::TieSequence`].
    local_seq: Arc<Mutex<Option<u64>>>,
}

/// Yields once, waking itself: a step boundary for a scheduler, harmless for any executor.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// What `MongoStore` keeps of a time: whole milliseconds.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn clamp(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

impl MemStore {
    pub fn db(&self) -> &MemDb {
        &self.db
    }

    /// Runs `f` atomically under the database lock, honouring "down" and injected faults (one
    /// step of its own when stepping is on).
    async fn op<T>(&self, name: &str, f: impl FnOnce(&mut Inner, &str) -> Result<T>) -> Result<T> {
        if self.db.stepping.load(Ordering::Relaxed) {
            YieldOnce(false).await;
        }
        self.ops.fetch_add(1, Ordering::Relaxed);
        let fault = match self.db.hook.lock().expect("fault hook lock").as_mut() {
            Some(h) => h(&self.node, name),
            None => Fault::None,
        };
        let mut inner = self.db.lock();
        if inner.down {
            return Err(StoreError::Unavailable(
                format!("{name}: database is down").into(),
            ));
        }
        if fault == Fault::Before {
            return Err(StoreError::Unavailable(
                format!("{name}: injected fault before").into(),
            ));
        }
        if fault == Fault::Contended {
            return Err(StoreError::Contended(
                format!("{name}: injected: still conflicting after retries").into(),
            ));
        }
        let result = f(&mut inner, &self.node);
        if fault == Fault::After {
            return Err(StoreError::Unavailable(
                format!("{name}: injected fault after (it happened)").into(),
            ));
        }
        result
    }
}

impl Ledger {
    /// The next feed number: from the ledger's one counter (what `MongoStore`'s counter
    /// document is), or, mutated, from the writing handle's own.
    fn next_seq(&mut self, mutation: Mutation, local: &Mutex<Option<u64>>) -> u64 {
        if mutation == Mutation::TieSequence {
            // (Loaded from the ledger by `init`, or by the first write if that came first.)
            let mut local = local.lock().expect("local sequence lock");
            let n = local.unwrap_or(self.seq) + 1;
            *local = Some(n);
            self.seq = self.seq.max(n);
            return n;
        }
        self.seq += 1;
        self.seq
    }
}

/// Fails a numbering write on a held ledger, as `MongoStore` does once its conflict retries are
/// spent.
fn check_held(db: &Inner, node: &str, what: &str) -> Result<()> {
    if db.held.contains(node) {
        return Err(StoreError::Contended(
            format!("{what}: still conflicting after retries (the ledger's counter is held)")
                .into(),
        ));
    }
    Ok(())
}

impl Store for MemStore {
    async fn quarantine(&self, events: &[Quarantined]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.op("quarantine", |db, node| {
            let q = db.quarantine.entry(node.to_string()).or_default();
            for e in events {
                q.entry(e.id.clone()).or_insert_with(|| e.clone());
            }
            Ok(())
        })
        .await
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>> {
        self.op("quarantined", |db, node| {
            let mut all: Vec<Quarantined> = db
                .quarantine
                .get(node)
                .map(|q| q.values().cloned().collect())
                .unwrap_or_default();
            all.sort_by_key(|q| std::cmp::Reverse(q.at_ms));
            all.truncate(clamp(limit));
            Ok(all)
        })
        .await
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn init(&self) -> Result<()> {
        let local = self.local_seq.clone();
        self.op("init", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            // (Mutated: this handle numbers on from what the ledger held when it started.)
            local
                .lock()
                .expect("local sequence lock")
                .get_or_insert(ledger.seq);
            Ok(())
        })
        .await
    }

    fn db_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let local = self.local_seq.clone();
        self.op("insert_commands", |db, node| {
            check_held(db, node, "insert commands")?;
            let mutation = db.mutation;
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                if ledger.entries.contains_key(&c.transaction) {
                    out.push(Inserted::Duplicate);
                    continue;
                }
                let seq = ledger.next_seq(mutation, &local);
                if mutation == Mutation::LoseCommands {
                    out.push(Inserted::New);
                    continue;
                }
                ledger.entries.insert(
                    c.transaction.clone(),
                    LedgerEntry {
                        transaction: c.transaction.clone(),
                        command: Some(c.command.clone()),
                        received_at: Some(ms(c.received_at)),
                        outcome: None,
                        published: true,
                        recorded_at: ms(c.received_at),
                        seq,
                    },
                );
                out.push(Inserted::New);
            }
            Ok(out)
        })
        .await
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let local = self.local_seq.clone();
        self.op("record_outcome", |db, node| {
            // `MongoStore` takes the number first, so a held counter fails even a repeat.
            check_held(db, node, "record outcome")?;
            let mutation = db.mutation;
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            if let Some(known) = ledger
                .entries
                .get(transaction)
                .and_then(|e| e.outcome.as_ref())
            {
                return Ok(if known.agrees_with(outcome) {
                    Recorded::Same
                } else {
                    Recorded::Conflict(known.clone())
                });
            }
            let seq = ledger.next_seq(mutation, &local);
            let entry = ledger
                .entries
                .entry(transaction.to_string())
                .or_insert_with(|| LedgerEntry {
                    transaction: transaction.to_string(),
                    command: None,
                    received_at: None,
                    outcome: None,
                    published: true,
                    recorded_at: ms(now),
                    seq,
                });
            entry.outcome = Some(outcome.clone());
            entry.published = published;
            entry.seq = seq;
            Ok(Recorded::New)
        })
        .await
    }

    async fn mark_published(&self, transactions: &[String]) -> Result<()> {
        if transactions.is_empty() {
            return Ok(());
        }
        self.op("mark_published", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            for t in transactions {
                if let Some(e) = ledger.entries.get_mut(t) {
                    e.published = true;
                }
            }
            Ok(())
        })
        .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("pending", |db, node| {
            let mut v: Vec<LedgerEntry> = db
                .ledgers
                .get(node)
                .map(|l| {
                    l.entries
                        .values()
                        .filter(|e| e.outcome.is_none())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            v.sort_by(|a, b| {
                a.received_at
                    .cmp(&b.received_at)
                    .then(a.transaction.cmp(&b.transaction))
            });
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("unpublished", |db, node| {
            let mut v: Vec<LedgerEntry> = db
                .ledgers
                .get(node)
                .map(|l| {
                    l.entries
                        .values()
                        .filter(|e| !e.published)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            v.sort_by_key(|e| e.seq);
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn entry(&self, transaction: &str) -> Result<Option<LedgerEntry>> {
        self.op("entry", |db, node| {
            Ok(db
                .ledgers
                .get(node)
                .and_then(|l| l.entries.get(transaction).cloned()))
        })
        .await
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("page", |db, node| {
            let mut v: Vec<LedgerEntry> = db
                .ledgers
                .get(node)
                .map(|l| {
                    l.entries
                        .values()
                        .filter(|e| e.seq > after)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            // (Ties, possible only mutated, in transaction order, as an index would.)
            v.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.transaction.cmp(&b.transaction)));
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("recent", |db, node| {
            let mut v: Vec<LedgerEntry> = db
                .ledgers
                .get(node)
                .map(|l| l.entries.values().cloned().collect())
                .unwrap_or_default();
            v.sort_by_key(|e| std::cmp::Reverse(e.seq));
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn record_peer(&self, peer: &PeerRecord) -> Result<bool> {
        // Kept as `MongoStore` keeps it (whole milliseconds), and compared as kept.
        let peer = PeerRecord {
            started_at: ms(peer.started_at),
            last_heartbeat: ms(peer.last_heartbeat),
            beat_at: ms(peer.beat_at),
            ..peer.clone()
        };
        self.op("record_peer", |db, node| {
            let peers = db.peers.entry(node.to_string()).or_default();
            match peers.get(&peer.node) {
                Some(known) if known.stamp() >= peer.stamp() => Ok(false),
                _ => {
                    peers.insert(peer.node.clone(), peer.clone());
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn next_incarnation(&self) -> Result<u64> {
        self.op("next_incarnation", |db, node| {
            let n = db.incarnations.entry(node.to_string()).or_default();
            *n += 1;
            Ok(*n)
        })
        .await
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>> {
        self.op("peers", |db, node| {
            Ok(db
                .peers
                .get(node)
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default())
        })
        .await
    }

    async fn cursor(&self, url: &str) -> Result<u64> {
        self.op("cursor", |db, node| {
            Ok(db
                .cursors
                .get(node)
                .and_then(|c| c.get(url).copied())
                .unwrap_or(0))
        })
        .await
    }

    async fn set_cursor(&self, url: &str, cursor: u64) -> Result<()> {
        self.op("set_cursor", |db, node| {
            db.cursors
                .entry(node.to_string())
                .or_default()
                .insert(url.to_string(), cursor);
            Ok(())
        })
        .await
    }

    async fn execute(
        &self,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> Result<Execution> {
        self.op("execute", |db, node| {
            if db.mutation != Mutation::SkipMarkerCheck
                && let Some(m) = db.markers.get(transaction)
            {
                return Ok(Execution {
                    outcome: m.clone(),
                    fresh: false,
                });
            }
            let current: BTreeMap<u64, ProductView> = lines
                .iter()
                .filter_map(|l| db.products.get(&l.id).map(|p| (p.id, p.clone())))
                .collect();
            let (decision, outcome) = decide(&current, lines, node, region, takeover, now);
            let before = lines
                .iter()
                .map(|l| (l.id, current.get(&l.id).map(|p| p.saldo)))
                .collect();
            let mut after = Vec::new();
            if let StockDecision::Apply { products, .. } = decision {
                for p in products {
                    // The invariant the whole fleet exists for; checked at the point of writing.
                    assert!(
                        p.saldo >= 0,
                        "stock below zero for product {} by {transaction}",
                        p.id
                    );
                    after.push((p.id, p.saldo));
                    db.products.insert(p.id, p);
                }
            }
            db.markers.insert(transaction.to_string(), outcome.clone());
            db.applied.push(Applied {
                transaction: transaction.to_string(),
                outcome: outcome.clone(),
                before,
                after,
            });
            Ok(Execution {
                outcome,
                fresh: true,
            })
        })
        .await
    }

    async fn marker(&self, transaction: &str) -> Result<Option<OutcomeRecord>> {
        self.op("marker", |db, _| Ok(db.markers.get(transaction).cloned()))
            .await
    }

    async fn products(&self) -> Result<Vec<ProductView>> {
        self.op("products", |db, _| {
            Ok(db.products.values().take(MAX_PRODUCTS).cloned().collect())
        })
        .await
    }

    async fn product(&self, id: u64) -> Result<Option<ProductView>> {
        self.op("product", |db, _| Ok(db.products.get(&id).cloned()))
            .await
    }
}
