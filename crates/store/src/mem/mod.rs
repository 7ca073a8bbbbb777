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
//!
//! `store` holds the [`Store`](crate::Store) operations; this module the database, its handles and the
//! inspection and fault-injection API.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use saldo_core::views::ProductView;

use crate::model::*;
use crate::{MAX_PAGE, Quarantined, Result, StoreError};

mod store;

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
