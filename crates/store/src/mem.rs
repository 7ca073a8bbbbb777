//! An in-memory database with the same semantics as the MongoDB store, for unit tests and the
//! deterministic simulation. Every operation is atomic (one mutex), and faults can be injected
//! per operation: failing *before* (nothing happened) or *after* (it happened, but the caller
//! hears an error — like a lost reply), which is how the simulation models crashes mid-way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::ProductView;

use crate::model::*;
use crate::{MAX_PAGE, Result, Store, StoreError, decide};

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
    ledgers: BTreeMap<String, Ledger>,
    peers: BTreeMap<String, BTreeMap<String, PeerRecord>>,
    cursors: BTreeMap<String, BTreeMap<String, u64>>,
    incarnations: BTreeMap<String, u64>,
    products: BTreeMap<u64, ProductView>,
    markers: BTreeMap<String, OutcomeRecord>,
    applied: Vec<Applied>,
    down: bool,
}

/// The shared in-memory database; cheap to clone (all clones are the same database).
#[derive(Clone, Default)]
pub struct MemDb {
    inner: Arc<Mutex<Inner>>,
    hook: Arc<Mutex<Option<FaultHook>>>,
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
        }
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
}

impl MemStore {
    pub fn db(&self) -> &MemDb {
        &self.db
    }

    /// Runs `f` atomically under the database lock, honouring "down" and injected faults.
    fn op<T>(&self, name: &str, f: impl FnOnce(&mut Inner, &str) -> Result<T>) -> Result<T> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let fault = match self.db.hook.lock().expect("fault hook lock").as_mut() {
            Some(h) => h(&self.node, name),
            None => Fault::None,
        };
        let mut inner = self.db.lock();
        if inner.down {
            return Err(StoreError::Unavailable(format!("{name}: database is down")));
        }
        if fault == Fault::Before {
            return Err(StoreError::Unavailable(format!(
                "{name}: injected fault before"
            )));
        }
        if fault == Fault::Contended {
            return Err(StoreError::Contended(format!(
                "{name}: injected: still conflicting after retries"
            )));
        }
        let result = f(&mut inner, &self.node);
        if fault == Fault::After {
            return Err(StoreError::Unavailable(format!(
                "{name}: injected fault after (it happened)"
            )));
        }
        result
    }
}

impl Ledger {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

impl Store for MemStore {
    fn node(&self) -> &str {
        &self.node
    }

    async fn init(&self) -> Result<()> {
        self.op("init", |db, node| {
            db.ledgers.entry(node.to_string()).or_default();
            Ok(())
        })
    }

    fn db_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        self.op("insert_commands", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                if ledger.entries.contains_key(&c.transaction) {
                    out.push(Inserted::Duplicate);
                    continue;
                }
                let seq = ledger.next_seq();
                ledger.entries.insert(
                    c.transaction.clone(),
                    LedgerEntry {
                        transaction: c.transaction.clone(),
                        command: Some(c.command.clone()),
                        received_at: Some(c.received_at),
                        outcome: None,
                        published: true,
                        recorded_at: c.received_at,
                        seq,
                    },
                );
                out.push(Inserted::New);
            }
            Ok(out)
        })
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        self.op("record_outcome", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            let seq = ledger.seq + 1;
            let entry = ledger
                .entries
                .entry(transaction.to_string())
                .or_insert_with(|| LedgerEntry {
                    transaction: transaction.to_string(),
                    command: None,
                    received_at: None,
                    outcome: None,
                    published: true,
                    recorded_at: now,
                    seq,
                });
            match &entry.outcome {
                Some(known) if known.agrees_with(outcome) => Ok(Recorded::Same),
                Some(known) => Ok(Recorded::Conflict(known.clone())),
                None => {
                    entry.outcome = Some(outcome.clone());
                    entry.published = published;
                    entry.seq = seq;
                    ledger.seq = seq;
                    Ok(Recorded::New)
                }
            }
        })
    }

    async fn mark_published(&self, transactions: &[String]) -> Result<()> {
        self.op("mark_published", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            for t in transactions {
                if let Some(e) = ledger.entries.get_mut(t) {
                    e.published = true;
                }
            }
            Ok(())
        })
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
            v.truncate(limit.min(MAX_PAGE));
            Ok(v)
        })
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("unpublished", |db, node| {
            Ok(db
                .ledgers
                .get(node)
                .map(|l| {
                    l.entries
                        .values()
                        .filter(|e| !e.published)
                        .take(limit.min(MAX_PAGE))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    async fn entry(&self, transaction: &str) -> Result<Option<LedgerEntry>> {
        self.op("entry", |db, node| {
            Ok(db
                .ledgers
                .get(node)
                .and_then(|l| l.entries.get(transaction).cloned()))
        })
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
            v.sort_by_key(|e| e.seq);
            v.truncate(limit.min(MAX_PAGE));
            Ok(v)
        })
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("recent", |db, node| {
            let mut v: Vec<LedgerEntry> = db
                .ledgers
                .get(node)
                .map(|l| l.entries.values().cloned().collect())
                .unwrap_or_default();
            v.sort_by_key(|e| std::cmp::Reverse(e.seq));
            v.truncate(limit.min(MAX_PAGE));
            Ok(v)
        })
    }

    async fn record_peer(&self, peer: &PeerRecord) -> Result<bool> {
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
    }

    async fn next_incarnation(&self) -> Result<u64> {
        self.op("next_incarnation", |db, node| {
            let n = db.incarnations.entry(node.to_string()).or_default();
            *n += 1;
            Ok(*n)
        })
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>> {
        self.op("peers", |db, node| {
            Ok(db
                .peers
                .get(node)
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    async fn cursor(&self, url: &str) -> Result<u64> {
        self.op("cursor", |db, node| {
            Ok(db
                .cursors
                .get(node)
                .and_then(|c| c.get(url).copied())
                .unwrap_or(0))
        })
    }

    async fn set_cursor(&self, url: &str, cursor: u64) -> Result<()> {
        self.op("set_cursor", |db, node| {
            db.cursors
                .entry(node.to_string())
                .or_default()
                .insert(url.to_string(), cursor);
            Ok(())
        })
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
            if let Some(m) = db.markers.get(transaction) {
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
    }

    async fn marker(&self, transaction: &str) -> Result<Option<OutcomeRecord>> {
        self.op("marker", |db, _| Ok(db.markers.get(transaction).cloned()))
    }

    async fn products(&self) -> Result<Vec<ProductView>> {
        self.op("products", |db, _| {
            Ok(db.products.values().cloned().collect())
        })
    }

    async fn product(&self, id: u64) -> Result<Option<ProductView>> {
        self.op("product", |db, _| Ok(db.products.get(&id).cloned()))
    }
}
