//! The MongoDB store: SecantusDB locally, Azure Cosmos DB for MongoDB (RU) in Azure.
//!
//! Cosmos DB limits and how this module respects them:
//! - Multi-document transactions only inside ONE unsharded collection (5 s limit): the warehouse
//!   keeps products and applied-markers in the single `warehouse` collection, and an execution
//!   is one short transaction in it (read, decide, write, commit; no waiting inside).
//! - Unique indexes only on empty collections: the only uniqueness Saldo relies on is `_id`
//!   (the transaction id in a ledger, `tx:<id>` for markers), which every collection has from
//!   birth. The other indexes are plain and are created by [`Store::init`] at start-up, before
//!   any data is written; creating an existing index is a no-op.
//! - Error 16500 (TooManyRequests, the RU budget is spent) is not retried by the driver: every
//!   operation here retries it with exponential back-off and full jitter (`backon`), a bounded
//!   number of times ([`MAX_ATTEMPTS`]), then reports the database unavailable (HTTP 503, Event
//!   Grid retries). Error 112 (WriteConflict) and the `TransientTransactionError` label are
//!   retried the same way and, once the retries are spent, reported as
//!   [`StoreError::Contended`]: the database is up, the document is hot. No lock is held while
//!   backing off. Every operation (its retries included) is bounded by the store's timeout
//!   ([`MongoStore::with_timeout`]).
//! - The feed's sequence: a counter document (`_id: 0`) in the ledger collection itself, bumped in
//!   the same transaction that writes the entries it numbers (see [`MongoStore`]'s `ledger`).
//! - Idle connections are dropped after about 4 minutes: `maxIdleTimeMS=120000` unless the
//!   connection string says otherwise. Server selection and connect time out after 5 s (not the
//!   driver's 30 s, which is Event Grid's whole delivery timeout) so an unreachable database
//!   becomes a timely 503.
//! - Sorting needs an index in Cosmos DB: the ledger is sorted only by `seq` and by
//!   `received_at_ms`, both indexed; products are sorted in memory.
//!
//! Every round trip is counted ([`Store::db_ops`]): Cosmos DB bills each one in request units
//! and SecantusDB manages a few hundred writes a second, so writes are batched where Event Grid
//! batches (one `insert_many` per delivery) and an execution is 3 + (lines) round trips.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{
    ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadConcern, ReturnDocument,
    WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::{LedgerState, ProductView};
use serde::{Deserialize, Serialize};

use crate::model::*;
use crate::{
    MAX_PAGE, MAX_PRODUCTS, Quarantined, Result, Store, StoreError, decide, valid_node_name,
};

/// Attempts per operation for retryable server errors (16500, 112, transient transaction errors).
pub const MAX_ATTEMPTS: usize = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(2000);
/// The default bound on one store operation, retries included (`SALDO_DB_TIMEOUT_MS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `_id` of the feed's sequence counter in `ledger_<node>`. Transaction ids are strings, so an
/// integer `_id` can never be a transaction's.
const COUNTER_ID: i32 = 0;

const DUPLICATE_KEY: i32 = 11000;
const WRITE_CONFLICT: i32 = 112;
const TOO_MANY_REQUESTS: i32 = 16500;

/// The collections of one node plus the shared warehouse.
pub struct MongoStore {
    client: Client,
    node: String,
    /// `ledger_<node>`: the entries, plus the feed's sequence counter (`_id: 0`, field `next`).
    ///
    /// Several instances of one region's app write this ledger at once. Every write that gives
    /// an entry a sequence number is ONE transaction that increments the counter by the number
    /// of entries it writes and numbers them with the range it got. Two such transactions both
    /// write the counter, so the second gets a WriteConflict (112) and is retried on a fresh
    /// snapshot, after the first committed: commit order equals sequence order, and numbers are
    /// never handed out twice. A reader whose snapshot holds the entry numbered n therefore holds
    /// every entry numbered below n that will ever exist, and the feed serves all it sees: no
    /// horizon, no lag, no clock (ARCHITECTURE.md, invariant 8).
    ledger: Collection<Document>,
    /// Orders this process's ledger writes (they all write the counter document, so two of
    /// ours at once could only conflict with each other, 112, and back off: under a burst of
    /// deliveries that became retry storms and 503s). Held for one attempt of one transaction,
    /// never across a back-off sleep. Other instances of the region still race with us; the
    /// counter's conflict orders them, as above.
    ledger_writes: tokio::sync::Mutex<()>,
    peers: Collection<Document>,
    warehouse: Collection<Document>,
    /// Bound on one operation, its retries included.
    timeout: Duration,
    ops: AtomicU64,
}

/// The ledger document (`ledger_<node>`); timestamps are epoch milliseconds so they sort and
/// index the same on every MongoDB flavour.
#[derive(Debug, Serialize, Deserialize)]
struct LedgerDoc {
    #[serde(rename = "_id")]
    id: String,
    state: LedgerState,
    command: Option<Command>,
    received_at_ms: Option<i64>,
    outcome: Option<OutcomeRecord>,
    published: bool,
    recorded_at_ms: i64,
    seq: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProductDoc {
    #[serde(rename = "_id")]
    key: String,
    id: i64,
    ean: i64,
    name: String,
    saldo: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarkerDoc {
    #[serde(rename = "_id")]
    key: String,
    transaction: String,
    outcome: OutcomeRecord,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}
fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}
fn product_key(id: u64) -> String {
    format!("product:{id}")
}
fn marker_key(tx: &str) -> String {
    format!("tx:{tx}")
}
fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::Failed(format!("{what} {v} does not fit the database")))
}

impl LedgerDoc {
    fn into_entry(self) -> Result<LedgerEntry> {
        Ok(LedgerEntry {
            transaction: self.id,
            command: self.command,
            received_at: self.received_at_ms.map(from_ms),
            outcome: self.outcome,
            published: self.published,
            recorded_at: from_ms(self.recorded_at_ms),
            seq: u64::try_from(self.seq)
                .map_err(|_| StoreError::Failed(format!("negative seq {}", self.seq)))?,
        })
    }
}

impl ProductDoc {
    fn from_view(p: &ProductView) -> Result<Self> {
        Ok(ProductDoc {
            key: product_key(p.id),
            id: to_i64(p.id, "product id")?,
            ean: to_i64(p.ean, "ean")?,
            name: p.name.clone(),
            saldo: p.saldo,
        })
    }
    fn view(&self) -> ProductView {
        ProductView {
            id: self.id as u64,
            ean: self.ean as u64,
            name: self.name.clone(),
            saldo: self.saldo,
        }
    }
}

/// Majority + journal: an acknowledged write survives the loss of the primary, so a 2xx to
/// Event Grid is only ever given for a durable ledger entry. (Cosmos DB always writes durably
/// and accepts this write concern.)
fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// The server error code of an error, if it has one.
fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        // Per-document errors: report the one that decides what to do. Throttling or a
        // conflict on any document makes the batch worth retrying (the documents that did get
        // in come back as duplicates then); otherwise the first error.
        ErrorKind::InsertMany(im) => {
            let errors = im.write_errors.as_deref().unwrap_or_default();
            errors
                .iter()
                .find(|w| matches!(w.code, TOO_MANY_REQUESTS | WRITE_CONFLICT))
                .or(errors.first())
                .map(|w| w.code)
                .or(im.write_concern_error.as_ref().map(|w| w.code))
        }
        _ => None,
    }
}

/// Whether retrying the same operation soon may succeed.
fn retryable(e: &mongodb::error::Error) -> bool {
    throttled(e) || conflicted(e)
}

/// The RU budget is spent (Cosmos DB's 16500).
fn throttled(e: &mongodb::error::Error) -> bool {
    code(e) == Some(TOO_MANY_REQUESTS)
}

/// Another writer touched the same document (112, or a transaction the server aborted for it).
fn conflicted(e: &mongodb::error::Error) -> bool {
    code(e) == Some(WRITE_CONFLICT) || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

/// Maps a driver error to the store's kinds: unavailable (try later, 503), contended (the
/// conflict retries are spent: the database is fine, the document is hot) or failed.
fn classify(what: &str, e: mongodb::error::Error) -> StoreError {
    if conflicted(&e) && !throttled(&e) {
        return StoreError::Contended(format!("{what}: still conflicting after retries: {e}"));
    }
    let unavailable = matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || retryable(&e)
        || e.contains_label("RetryableWriteError")
        || matches!(
            code(&e),
            Some(6 | 7 | 89 | 91 | 189 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436)
        );
    if unavailable {
        StoreError::Unavailable(format!("{what}: {e}"))
    } else {
        StoreError::Failed(format!("{what}: {e}"))
    }
}

/// The retry schedule: exponential back-off with full jitter, so that writers that conflicted
/// together do not retry together; [`MAX_ATTEMPTS`] attempts in all.
fn backoff_schedule() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_BASE)
        .with_max_delay(BACKOFF_CAP)
        .with_max_times(MAX_ATTEMPTS - 1)
        .with_jitter()
        .build()
}

/// What one attempt of a transaction came to.
enum Attempt<T> {
    Done(T),
    /// Lost a race the server did not report as a conflict (a product changed under us, a
    /// concurrent writer's insert committed first): start over on a fresh snapshot.
    Again,
}

impl MongoStore {
    /// Connects (lazily: the first operation reaches the server) to `uri`, database `database`,
    /// for node `node`.
    pub async fn connect(uri: &str, database: &str, node: &str) -> Result<Self> {
        if !valid_node_name(node) {
            return Err(StoreError::Failed(format!(
                "invalid node name {node:?}: use letters, digits, - and _"
            )));
        }
        let mut opts = ClientOptions::parse(uri)
            .await
            .map_err(|e| classify("parse connection string", e))?;
        opts.server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        opts.connect_timeout.get_or_insert(Duration::from_secs(5));
        opts.max_idle_time
            .get_or_insert(Duration::from_millis(120_000));
        opts.app_name
            .get_or_insert_with(|| format!("saldo-worker-{node}"));
        let client = Client::with_options(opts).map_err(|e| classify("create client", e))?;
        let db = client.database(database);
        // Majority + journal: an acknowledged write survives the loss of the primary, so a 2xx
        // to Event Grid is only ever given for a durable ledger entry.
        let durable = CollectionOptions::builder()
            .write_concern(durable_write_concern())
            .build();
        Ok(MongoStore {
            ledger: db.collection_with_options(&format!("ledger_{node}"), durable.clone()),
            peers: db.collection_with_options(&format!("peers_{node}"), durable.clone()),
            warehouse: db.collection_with_options("warehouse", durable),
            client,
            node: node.to_string(),
            timeout: DEFAULT_TIMEOUT,
            ledger_writes: tokio::sync::Mutex::new(()),
            ops: AtomicU64::new(0),
        })
    }

    /// Bounds every operation, its retries and back-off included: past it the operation is
    /// abandoned and reported unavailable (its effect, if any, is idempotent to redo).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn count(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` within the store's time bound.
    async fn bounded<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Runs one database operation with bounded retries of throttling and write conflicts,
    /// counting every attempt as a round trip. Returns the driver's error for inspection.
    async fn retry_raw<T, F, Fut>(&self, what: &str, mut f: F) -> mongodb::error::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let mut delays = backoff_schedule();
        loop {
            self.count();
            match f().await {
                Err(e) if retryable(&e) => match delays.next() {
                    Some(wait) => {
                        tracing::debug!(what, error = %e, ?wait, "retrying database operation");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        self.bounded(what, async {
            self.retry_raw(what, f).await.map_err(|e| classify(what, e))
        })
        .await
    }

    /// Runs `attempt` as one multi-document transaction (snapshot reads, durable commit) until
    /// it commits, fails for good, or conflicts past the retry budget ([`StoreError::Contended`]).
    /// `attempt` gets a session with the transaction started; it returns `Again` (after aborting)
    /// to start over on a fresh snapshot. Bounded by the store's timeout. With `gate`, each
    /// attempt runs holding it (released before any back-off sleep).
    async fn transact<T, F, Fut>(
        &self,
        what: &str,
        gate: Option<&tokio::sync::Mutex<()>>,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, mongodb::error::Result<Attempt<T>>)>,
    {
        self.bounded(what, async {
            let mut delays = backoff_schedule();
            loop {
                let held = match gate {
                    Some(g) => Some(g.lock().await),
                    None => None,
                };
                let mut session = self
                    .client
                    .start_session()
                    .await
                    .map_err(|e| classify(what, e))?;
                // Transactions take their write concern here, never per operation (the driver
                // drops the collections' own inside a transaction): majority, journaled.
                session
                    .start_transaction()
                    .read_concern(ReadConcern::snapshot())
                    .write_concern(durable_write_concern())
                    .await
                    .map_err(|e| classify(what, e))?;
                let (mut session, r) = attempt(session).await;
                let last = match r {
                    Ok(Attempt::Done(v)) => return Ok(v),
                    Ok(Attempt::Again) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        None
                    }
                    Err(e) if retryable(&e) || code(&e) == Some(DUPLICATE_KEY) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        Some(e)
                    }
                    Err(e) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        return Err(classify(what, e));
                    }
                };
                drop(held);
                match delays.next() {
                    Some(wait) => {
                        tracing::debug!(what, error = ?last, ?wait, "transaction lost a race; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(match last {
                            Some(e) if throttled(&e) => classify(what, e),
                            Some(e) => StoreError::Contended(format!(
                                "{what}: still conflicting after {MAX_ATTEMPTS} attempts: {e}"
                            )),
                            None => StoreError::Contended(format!(
                                "{what}: still racing after {MAX_ATTEMPTS} attempts"
                            )),
                        });
                    }
                }
            }
        })
        .await
    }

    /// Commits `session`'s transaction; an unknown commit result is retried as the driver
    /// documents (bounded).
    async fn commit(&self, session: &mut ClientSession) -> mongodb::error::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.count();
            match session.commit_transaction().await {
                Ok(()) => return Ok(()),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Inside `session`'s transaction: takes `n` (> 0) sequence numbers from the ledger's
    /// counter and returns the first. The counter write is what serialises the ledger's writers.
    async fn allocate(&self, session: &mut ClientSession, n: usize) -> mongodb::error::Result<i64> {
        self.count();
        let n = n as i64;
        let counter = self
            .ledger
            .find_one_and_update(doc! {"_id": COUNTER_ID}, doc! {"$inc": {"next": n}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        let last = counter
            .as_ref()
            .and_then(|d| d.get_i64("next").ok())
            .ok_or_else(|| {
                mongodb::error::Error::custom("the ledger's sequence counter is unreadable")
            })?;
        Ok(last - n + 1)
    }

    async fn find_ledger(
        &self,
        what: &str,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        let limit = limit.clamp(1, MAX_PAGE) as i64;
        let docs: Vec<Document> = self
            .retry(what, || async {
                self.ledger
                    .find(filter.clone())
                    .sort(sort.clone())
                    .limit(limit)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter().map(parse_ledger).collect()
    }

    /// One attempt of an execution inside `session`'s transaction. `Ok(None)`: a concurrent
    /// executor changed a product under us; the caller retries from the start.
    async fn execute_once(
        &self,
        session: &mut ClientSession,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<Execution>> {
        let mkey = marker_key(transaction);
        let mut keys: Vec<Bson> = lines
            .iter()
            .map(|l| Bson::String(product_key(l.id)))
            .collect();
        keys.push(Bson::String(mkey.clone()));
        // One read for the marker and all products (they live in the same collection).
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut cursor = self
            .warehouse
            .find(doc! {"_id": {"$in": keys}})
            .session(&mut *session)
            .await?;
        let mut current = BTreeMap::new();
        let mut marker = None;
        while let Some(d) = cursor.next(&mut *session).await.transpose()? {
            if d.get_str("_id").is_ok_and(|id| id == mkey) {
                let m: MarkerDoc = bson::from_document(d)?;
                marker = Some(m.outcome);
            } else {
                let p: ProductDoc = bson::from_document(d)?;
                current.insert(p.id as u64, p.view());
            }
        }
        drop(cursor);
        if let Some(outcome) = marker {
            self.ops.fetch_add(1, Ordering::Relaxed);
            session.abort_transaction().await?;
            return Ok(Some(Execution {
                outcome,
                fresh: false,
            }));
        }
        let (decision, outcome) = decide(&current, lines, &self.node, region, takeover, now);
        let mut inserts = Vec::new();
        if let StockDecision::Apply { products, .. } = &decision {
            for p in products {
                assert!(
                    p.saldo >= 0,
                    "core produced negative stock for product {}",
                    p.id
                );
                let doc = bson::to_document(
                    &ProductDoc::from_view(p).map_err(mongodb::error::Error::custom)?,
                )?;
                match current.get(&p.id) {
                    None => inserts.push(doc),
                    Some(old) => {
                        // Optimistic check: only if the stock is still what we read. Catches a
                        // concurrent executor even where the server's snapshot isolation would not.
                        self.ops.fetch_add(1, Ordering::Relaxed);
                        let r = self
                            .warehouse
                            .update_one(
                                doc! {"_id": product_key(p.id), "saldo": old.saldo},
                                doc! {"$set": {"saldo": p.saldo}},
                            )
                            .session(&mut *session)
                            .await?;
                        if r.matched_count != 1 {
                            self.ops.fetch_add(1, Ordering::Relaxed);
                            session.abort_transaction().await?;
                            return Ok(None);
                        }
                    }
                }
            }
        }
        let marker_doc = MarkerDoc {
            key: mkey,
            transaction: transaction.to_string(),
            outcome: outcome.clone(),
        };
        inserts.push(bson::to_document(&marker_doc)?);
        // A duplicate key here (11000) means a concurrent executor committed the marker (or a
        // product) first: the transaction aborts and the caller re-reads and adopts.
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.warehouse
            .insert_many(inserts)
            .session(&mut *session)
            .await?;
        self.commit(session).await?;
        Ok(Some(Execution {
            outcome,
            fresh: true,
        }))
    }

    /// One attempt of [`Store::insert_commands`] inside `session`'s transaction. With `look`
    /// false it assumes every command is new (the common case: 3 round trips); a duplicate
    /// aborts the transaction (11000) and the caller tries again with `look`, which first reads
    /// which transactions the ledger already holds.
    async fn insert_once(
        &self,
        session: &mut ClientSession,
        cmds: &[NewCommand],
        look: bool,
    ) -> mongodb::error::Result<Attempt<Vec<Inserted>>> {
        let mut known = std::collections::BTreeSet::new();
        if look {
            let ids: Vec<Bson> = cmds
                .iter()
                .map(|c| Bson::String(c.transaction.clone()))
                .collect();
            self.count();
            let mut cursor = self
                .ledger
                .find(doc! {"_id": {"$in": ids}})
                .projection(doc! {"_id": 1})
                .session(&mut *session)
                .await?;
            while let Some(d) = cursor.next(&mut *session).await.transpose()? {
                if let Ok(id) = d.get_str("_id") {
                    known.insert(id.to_string());
                }
            }
        }
        // A transaction twice in one delivery: the first copy is the new one.
        let mut result = Vec::with_capacity(cmds.len());
        let mut fresh = Vec::new();
        for c in cmds {
            if known.insert(c.transaction.clone()) {
                result.push(Inserted::New);
                fresh.push(c);
            } else {
                result.push(Inserted::Duplicate);
            }
        }
        if fresh.is_empty() {
            self.count();
            session.abort_transaction().await?;
            return Ok(Attempt::Done(result));
        }
        let first = self.allocate(session, fresh.len()).await?;
        let docs = fresh
            .iter()
            .enumerate()
            .map(|(i, c)| {
                bson::to_document(&LedgerDoc {
                    id: c.transaction.clone(),
                    state: LedgerState::Pending,
                    command: Some(c.command.clone()),
                    received_at_ms: Some(ms(c.received_at)),
                    outcome: None,
                    published: true,
                    recorded_at_ms: ms(c.received_at),
                    seq: first + i as i64,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.count();
        self.ledger.insert_many(docs).session(&mut *session).await?;
        self.commit(session).await?;
        Ok(Attempt::Done(result))
    }

    /// One attempt of [`Store::record_outcome`] inside `session`'s transaction. The common
    /// case (the entry is pending) is 3 round trips: number, update, commit. A number taken by
    /// an attempt that then finds the outcome known is simply never used (gaps are harmless;
    /// only order matters).
    async fn record_once(
        &self,
        session: &mut ClientSession,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Attempt<Recorded>> {
        let seq = self.allocate(session, 1).await?;
        let outcome_bson = bson::to_bson(outcome)?;
        let state = bson::to_bson(&LedgerState::from(outcome.status))?;
        self.count();
        let updated = self
            .ledger
            .update_one(
                doc! {"_id": transaction, "state": "pending"},
                doc! {"$set": {"state": state.clone(), "outcome": outcome_bson.clone(), "published": published, "seq": seq}},
            )
            .session(&mut *session)
            .await?;
        if updated.matched_count == 0 {
            self.count();
            let existing = self
                .ledger
                .find_one(doc! {"_id": transaction})
                .session(&mut *session)
                .await?
                .map(|d| parse_ledger(d).map_err(mongodb::error::Error::custom))
                .transpose()?;
            if let Some(e) = existing {
                let known = e.outcome.ok_or_else(|| {
                    mongodb::error::Error::custom(format!(
                        "{transaction}: neither pending nor decided"
                    ))
                })?;
                self.count();
                session.abort_transaction().await?;
                return Ok(Attempt::Done(if known.agrees_with(outcome) {
                    Recorded::Same
                } else {
                    Recorded::Conflict(known)
                }));
            }
            // The command never arrived here: an entry with the outcome alone.
            self.count();
            self.ledger
                .insert_one(doc! {
                    "_id": transaction, "state": state, "command": Bson::Null,
                    "received_at_ms": Bson::Null, "outcome": outcome_bson,
                    "published": published, "recorded_at_ms": ms(now), "seq": seq,
                })
                .session(&mut *session)
                .await?;
        }
        self.commit(session).await?;
        Ok(Attempt::Done(Recorded::New))
    }
}

/// A peer as stored in `peers_<node>` (times as epoch milliseconds).
#[derive(Debug, Serialize, Deserialize)]
struct PeerDoc {
    node: String,
    region: String,
    url: String,
    ready: bool,
    started_at_ms: i64,
    last_heartbeat_ms: i64,
    #[serde(default)]
    incarnation: i64,
    #[serde(default)]
    beat_at_ms: i64,
    #[serde(default)]
    counters: BTreeMap<String, i64>,
}

impl From<&PeerRecord> for PeerDoc {
    fn from(p: &PeerRecord) -> Self {
        PeerDoc {
            node: p.node.clone(),
            region: p.region.clone(),
            url: p.url.clone(),
            ready: p.ready,
            started_at_ms: ms(p.started_at),
            last_heartbeat_ms: ms(p.last_heartbeat),
            incarnation: i64::try_from(p.incarnation).unwrap_or(i64::MAX),
            beat_at_ms: ms(p.beat_at),
            counters: p
                .counters
                .iter()
                .map(|(k, v)| (k.clone(), i64::try_from(*v).unwrap_or(i64::MAX)))
                .collect(),
        }
    }
}

impl From<PeerDoc> for PeerRecord {
    fn from(p: PeerDoc) -> Self {
        PeerRecord {
            node: p.node,
            region: p.region,
            url: p.url,
            ready: p.ready,
            started_at: from_ms(p.started_at_ms),
            last_heartbeat: from_ms(p.last_heartbeat_ms),
            incarnation: p.incarnation.max(0) as u64,
            beat_at: from_ms(p.beat_at_ms),
            counters: p
                .counters
                .into_iter()
                .map(|(k, v)| (k, v.max(0) as u64))
                .collect(),
        }
    }
}

fn parse_ledger(d: Document) -> Result<LedgerEntry> {
    let doc: LedgerDoc = bson::from_document(d)
        .map_err(|e| StoreError::Failed(format!("unreadable ledger document: {e}")))?;
    doc.into_entry()
}

impl MongoStore {
    /// `quarantine_<node>`, in the ledger's database, with the same durable write concern.
    fn quarantine_collection(&self) -> Collection<Document> {
        let db = self.client.database(&self.ledger.namespace().db);
        db.collection_with_options(
            &format!("quarantine_{}", self.node),
            CollectionOptions::builder()
                .write_concern(durable_write_concern())
                .build(),
        )
    }
}

impl Store for MongoStore {
    async fn quarantine(&self, events: &[Quarantined]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events
            .iter()
            .map(|q| {
                bson::to_document(q)
                    .map_err(|e| StoreError::Failed(format!("encode quarantined event: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let coll = self.quarantine_collection();
        match self
            .retry_raw("quarantine", || {
                coll.insert_many(docs.clone()).ordered(false)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let ErrorKind::InsertMany(im) = e.kind.as_ref()
                    && im.write_concern_error.is_none()
                    && let Some(errors) = &im.write_errors
                    && errors.iter().all(|w| w.code == DUPLICATE_KEY)
                {
                    return Ok(()); // already quarantined: the same event delivered again
                }
                Err(classify("quarantine", e))
            }
        }
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>> {
        let coll = self
            .quarantine_collection()
            .clone_with_type::<Quarantined>();
        let limit = limit.clamp(1, crate::MAX_PAGE) as i64;
        let cursor = self
            .retry("read quarantine", || {
                coll.find(doc! {}).sort(doc! {"atMs": -1}).limit(limit)
            })
            .await?;
        cursor
            .try_collect()
            .await
            .map_err(|e| classify("read quarantine", e))
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn init(&self) -> Result<()> {
        let idx = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        let ledger_indexes = [
            idx(doc! {"seq": 1}, "seq"),
            idx(doc! {"state": 1, "received_at_ms": 1}, "state_received"),
            idx(doc! {"published": 1}, "published"),
            // Cosmos DB sorts only by indexed fields: the pending scan sorts by this one.
            idx(doc! {"received_at_ms": 1}, "received"),
        ];
        for model in ledger_indexes {
            self.retry("create ledger index", || {
                self.ledger.create_index(model.clone())
            })
            .await?;
        }
        // The warehouse and peers are only ever read by `_id` (ranges of it): no extra index.
        // The counter starts above every number already given out (a ledger written before the
        // counter existed numbered entries from the clock; peers' cursors point into that
        // range). `$max` never lowers it, so running this while others write is harmless.
        let last: Option<Document> = self
            .retry("read last seq", || {
                self.ledger
                    .find_one(doc! {"seq": {"$gte": 0}})
                    .sort(doc! {"seq": -1})
            })
            .await?;
        let last_seq = match last {
            Some(d) => to_i64(parse_ledger(d)?.seq, "seq")?,
            None => 0,
        };
        self.retry("init sequence counter", || {
            self.ledger
                .update_one(doc! {"_id": COUNTER_ID}, doc! {"$max": {"next": last_seq}})
                .upsert(true)
        })
        .await?;
        Ok(())
    }

    fn db_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        // Optimistic first (every command new); after a duplicate, look before inserting.
        let look = &std::sync::atomic::AtomicBool::new(false);
        self.transact(
            "insert commands",
            Some(&self.ledger_writes),
            move |mut session| async move {
                let r = self
                    .insert_once(&mut session, cmds, look.load(Ordering::Relaxed))
                    .await;
                if matches!(&r, Err(e) if code(e) == Some(DUPLICATE_KEY)) {
                    look.store(true, Ordering::Relaxed);
                    return (session, Ok(Attempt::Again));
                }
                (session, r)
            },
        )
        .await
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        self.transact(
            "record outcome",
            Some(&self.ledger_writes),
            move |mut session| async move {
                let r = self
                    .record_once(&mut session, transaction, outcome, published, now)
                    .await;
                (session, r)
            },
        )
        .await
    }

    async fn mark_published(&self, transactions: &[String]) -> Result<()> {
        if transactions.is_empty() {
            return Ok(());
        }
        let ids: Vec<Bson> = transactions
            .iter()
            .map(|t| Bson::String(t.clone()))
            .collect();
        self.retry("mark published", || {
            self.ledger.update_many(
                doc! {"_id": {"$in": ids.clone()}},
                doc! {"$set": {"published": true}},
            )
        })
        .await?;
        Ok(())
    }

    async fn pending(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.find_ledger(
            "pending",
            doc! {"state": "pending"},
            doc! {"received_at_ms": 1},
            limit,
        )
        .await
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.find_ledger(
            "unpublished",
            doc! {"published": false},
            doc! {"seq": 1},
            limit,
        )
        .await
    }

    async fn entry(&self, transaction: &str) -> Result<Option<LedgerEntry>> {
        let d = self
            .retry("ledger entry", || {
                self.ledger.find_one(doc! {"_id": transaction})
            })
            .await?;
        d.map(parse_ledger).transpose()
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>> {
        // One snapshot (a read-only transaction), so that the page is a prefix of the commit
        // order: whatever it holds, it holds every entry numbered below it (see `ledger`). A
        // plain find may see a later commit after passing an earlier one between its batches.
        let after = to_i64(after, "cursor")?;
        let limit = limit.clamp(1, MAX_PAGE) as i64;
        self.transact("ledger page", None, move |mut session| async move {
            let r = async {
                self.count();
                let mut cursor = self
                    .ledger
                    .find(doc! {"seq": {"$gt": after}})
                    .sort(doc! {"seq": 1})
                    .limit(limit)
                    .session(&mut session)
                    .await?;
                let mut docs = Vec::new();
                while let Some(d) = cursor.next(&mut session).await.transpose()? {
                    docs.push(d);
                }
                drop(cursor);
                self.commit(&mut session).await?;
                Ok(Attempt::Done(docs))
            }
            .await;
            (session, r)
        })
        .await?
        .into_iter()
        .map(parse_ledger)
        .collect()
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        // `seq` is indexed (Cosmos DB sorts only by indexed fields); the filter leaves out the
        // sequence counter.
        self.find_ledger(
            "ledger recent",
            doc! {"seq": {"$gte": 0}},
            doc! {"seq": -1},
            limit.min(MAX_PAGE),
        )
        .await
    }

    async fn record_peer(&self, peer: &PeerRecord) -> Result<bool> {
        let mut d = bson::to_document(&PeerDoc::from(peer))
            .map_err(|e| StoreError::Failed(format!("encode peer: {e}")))?;
        let id = format!("node:{}", peer.node);
        d.insert("_id", id.clone());
        let (inc, beat) = (to_i64(peer.incarnation, "incarnation")?, ms(peer.beat_at));
        // Matches only an older record; if a newer one is stored, the upsert's insert collides
        // on `_id` (11000): not newer. One atomic write, whichever instance heard it.
        let r = self
            .retry_raw("record peer", || {
                self.peers
                    .replace_one(
                        doc! {"_id": &id, "$or": [
                            {"incarnation": {"$exists": false}},
                            {"incarnation": {"$lt": inc}},
                            {"incarnation": inc, "beat_at_ms": {"$lt": beat}},
                        ]},
                        d.clone(),
                    )
                    .upsert(true)
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(classify("record peer", e)),
        }
    }

    async fn next_incarnation(&self) -> Result<u64> {
        let d = self
            .retry("next incarnation", || {
                self.peers
                    .find_one_and_update(doc! {"_id": "incarnation"}, doc! {"$inc": {"n": 1i64}})
                    .upsert(true)
                    .return_document(ReturnDocument::After)
            })
            .await?;
        d.and_then(|d| d.get_i64("n").ok())
            .map(|n| n.max(0) as u64)
            .ok_or_else(|| StoreError::Failed("unreadable incarnation counter".into()))
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>> {
        let docs: Vec<Document> = self
            .retry("list peers", || async {
                self.peers
                    .find(doc! {"_id": {"$gte": "node:", "$lt": "node;"}})
                    .limit(1000)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter()
            .map(|d| {
                bson::from_document::<PeerDoc>(d)
                    .map(PeerRecord::from)
                    .map_err(|e| StoreError::Failed(format!("unreadable peer: {e}")))
            })
            .collect()
    }

    async fn cursor(&self, url: &str) -> Result<u64> {
        let d = self
            .retry("read cursor", || {
                self.peers.find_one(doc! {"_id": format!("cursor:{url}")})
            })
            .await?;
        Ok(d.and_then(|d| d.get_i64("cursor").ok())
            .map(|c| c.max(0) as u64)
            .unwrap_or(0))
    }

    async fn set_cursor(&self, url: &str, cursor: u64) -> Result<()> {
        let c = to_i64(cursor, "cursor")?;
        self.retry("write cursor", || {
            self.peers
                .update_one(
                    doc! {"_id": format!("cursor:{url}")},
                    doc! {"$set": {"url": url, "cursor": c}},
                )
                .upsert(true)
        })
        .await?;
        Ok(())
    }

    async fn execute(
        &self,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> Result<Execution> {
        // A product changed under us, the same marker committed first (11000), or the server
        // saw the conflict (112 / TransientTransactionError): `transact` starts over, which
        // adopts the winner's marker or re-decides on the new stock.
        self.transact("execute", None, move |mut session| async move {
            let r = self
                .execute_once(&mut session, transaction, lines, region, takeover, now)
                .await
                .map(|done| match done {
                    Some(done) => Attempt::Done(done),
                    None => Attempt::Again,
                });
            (session, r)
        })
        .await
    }

    async fn marker(&self, transaction: &str) -> Result<Option<OutcomeRecord>> {
        let d = self
            .retry("read marker", || {
                self.warehouse
                    .find_one(doc! {"_id": marker_key(transaction)})
            })
            .await?;
        d.map(|d| {
            bson::from_document::<MarkerDoc>(d)
                .map(|m| m.outcome)
                .map_err(|e| StoreError::Failed(format!("unreadable marker: {e}")))
        })
        .transpose()
    }

    async fn products(&self) -> Result<Vec<ProductView>> {
        let docs: Vec<Document> = self
            .retry("list products", || async {
                // `_id` range instead of a type field: served by the `_id` index everywhere.
                self.warehouse
                    .find(doc! {"_id": {"$gte": "product:", "$lt": "product;"}})
                    .limit(MAX_PRODUCTS as i64)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let mut v = docs
            .into_iter()
            .map(|d| {
                bson::from_document::<ProductDoc>(d)
                    .map(|p| p.view())
                    .map_err(|e| StoreError::Failed(format!("unreadable product: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        v.sort_by_key(|p| p.id);
        Ok(v)
    }

    async fn product(&self, id: u64) -> Result<Option<ProductView>> {
        let d = self
            .retry("read product", || {
                self.warehouse.find_one(doc! {"_id": product_key(id)})
            })
            .await?;
        d.map(|d| {
            bson::from_document::<ProductDoc>(d)
                .map(|p| p.view())
                .map_err(|e| StoreError::Failed(format!("unreadable product: {e}")))
        })
        .transpose()
    }
}
