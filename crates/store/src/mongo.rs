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
//!   operation here retries it with exponential back-off and jitter, a bounded number of times
//!   ([`MAX_ATTEMPTS`]), then reports the database unavailable (HTTP 503, Event Grid retries).
//!   Error 112 (WriteConflict) and the `TransientTransactionError` label are retried the same way.
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
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::{LedgerState, ProductView};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::model::*;
use crate::{
    MAX_PAGE, MAX_PRODUCTS, Quarantined, Result, Store, StoreError, decide, valid_node_name,
};

/// Attempts per operation for retryable server errors (16500, 112, transient transaction errors).
pub const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(2000);

const DUPLICATE_KEY: i32 = 11000;
const WRITE_CONFLICT: i32 = 112;
const TOO_MANY_REQUESTS: i32 = 16500;

/// The collections of one node plus the shared warehouse.
pub struct MongoStore {
    client: Client,
    node: String,
    ledger: Collection<Document>,
    peers: Collection<Document>,
    warehouse: Collection<Document>,
    /// The last feed sequence number this process handed out; `None` until [`Store::init`].
    ///
    /// Sequence numbers are time-based: `max(last + 1, now_ms * 1000)`. The lock is held across
    /// each ledger write, so within one process sequence order equals commit order. Across
    /// processes writing the same ledger (Flex Consumption may run several instances of one
    /// region's app) a smaller number can commit after a larger one; the feed therefore only
    /// serves entries older than [`MongoStore::with_feed_lag`] (longer than any write takes),
    /// so a reader's cursor never passes a number that can still appear.
    seq: Mutex<Option<u64>>,
    /// How old an entry's sequence number must be before the feed serves it.
    feed_lag: Duration,
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

/// The smallest sequence number handed out at `t`: microsecond-like resolution (1000 per
/// millisecond), well inside JavaScript's exact integers until the year 2255.
fn seq_at(t: DateTime<Utc>) -> u64 {
    (t.timestamp_millis().max(0) as u64) * 1000
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
    matches!(code(e), Some(TOO_MANY_REQUESTS) | Some(WRITE_CONFLICT))
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

/// Maps a driver error to the store's two kinds: unavailable (try later, 503) or failed.
fn classify(what: &str, e: mongodb::error::Error) -> StoreError {
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

/// Sleeps before retry `attempt` (1-based): exponential back-off with full jitter, so that
/// nodes throttled together do not retry together.
async fn backoff(attempt: u32) {
    use rand::Rng;
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let wait = rand::rng().random_range(Duration::ZERO..=ceiling);
    tokio::time::sleep(wait).await;
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
            seq: Mutex::new(None),
            feed_lag: Duration::ZERO,
            ops: AtomicU64::new(0),
        })
    }

    /// Serves feed entries only once their sequence number is `lag` old (see the `seq` field).
    /// Zero is exact for a single writer process; with several, use more than the longest a
    /// ledger write can take (server selection 5 s plus bounded retries).
    pub fn with_feed_lag(mut self, lag: Duration) -> Self {
        self.feed_lag = lag;
        self
    }

    /// Runs one database operation with bounded retries of throttling and write conflicts,
    /// counting every attempt as a round trip. Returns the driver's error for inspection.
    async fn retry_raw<T, F, Fut>(&self, what: &str, mut f: F) -> mongodb::error::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.ops.fetch_add(1, Ordering::Relaxed);
            match f().await {
                Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(what, attempt, error = %e, "retrying database operation");
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        self.retry_raw(what, f).await.map_err(|e| classify(what, e))
    }

    /// Hands out the next `n` sequence numbers; call with the seq lock held.
    fn take_seq(slot: &mut Option<u64>, n: usize) -> Result<u64> {
        let last =
            slot.ok_or_else(|| StoreError::Unavailable("ledger not initialised yet".into()))?;
        let first = (last + 1).max(seq_at(Utc::now()));
        *slot = Some(first + n as u64 - 1);
        Ok(first)
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
        // Commit; an unknown commit result is retried as the driver documents (bounded).
        let mut tries = 0;
        loop {
            tries += 1;
            self.ops.fetch_add(1, Ordering::Relaxed);
            match session.commit_transaction().await {
                Ok(()) => {
                    return Ok(Some(Execution {
                        outcome,
                        fresh: true,
                    }));
                }
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
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
        let last: Option<Document> = self
            .retry("read last seq", || {
                self.ledger.find_one(doc! {}).sort(doc! {"seq": -1})
            })
            .await?;
        let last_seq = match last {
            Some(d) => parse_ledger(d)?.seq,
            None => 0,
        };
        let mut seq = self.seq.lock().await;
        // Never go backwards if init runs again while this process keeps writing.
        *seq = Some(seq.unwrap_or(0).max(last_seq));
        Ok(())
    }

    fn db_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut seq_guard = self.seq.lock().await;
        let first = Self::take_seq(&mut seq_guard, cmds.len())?;
        let docs = cmds
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
                    seq: (first + i as u64) as i64,
                })
                .map_err(|e| StoreError::Failed(format!("encode ledger entry: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut result = vec![Inserted::New; cmds.len()];
        // Unordered: one duplicate (a redelivery) must not stop the others.
        match self
            .retry_raw("insert commands", || {
                self.ledger.insert_many(docs.clone()).ordered(false)
            })
            .await
        {
            Ok(_) => Ok(result),
            Err(e) => {
                if let ErrorKind::InsertMany(im) = e.kind.as_ref()
                    && im.write_concern_error.is_none()
                    && let Some(errors) = &im.write_errors
                    && errors
                        .iter()
                        .all(|w| w.code == DUPLICATE_KEY && w.index < result.len())
                {
                    // Every other document was written durably; the duplicates were already there.
                    for w in errors {
                        result[w.index] = Inserted::Duplicate;
                    }
                    return Ok(result);
                }
                Err(classify("insert commands", e))
            }
        }
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let outcome_bson = bson::to_bson(outcome)
            .map_err(|e| StoreError::Failed(format!("encode outcome: {e}")))?;
        let state = bson::to_bson(&LedgerState::from(outcome.status)).expect("enum encodes");
        {
            let mut seq_guard = self.seq.lock().await;
            let seq = Self::take_seq(&mut seq_guard, 1)? as i64;
            // Matches only an entry that has no outcome yet (or none at all: upsert). If the entry
            // already has an outcome the upsert's insert collides on `_id`: 11000.
            let r = self
                .retry_raw("record outcome", || {
                    self.ledger
                        .update_one(
                            doc! {"_id": transaction, "state": "pending"},
                            doc! {
                                "$set": {"state": state.clone(), "outcome": outcome_bson.clone(), "published": published, "seq": seq},
                                "$setOnInsert": {"command": Bson::Null, "received_at_ms": Bson::Null, "recorded_at_ms": ms(now)},
                            },
                        )
                        .upsert(true)
                })
                .await;
            match r {
                Ok(_) => return Ok(Recorded::New),
                Err(e) if code(&e) == Some(DUPLICATE_KEY) => {}
                Err(e) => return Err(classify("record outcome", e)),
            }
        }
        let known = self
            .entry(transaction)
            .await?
            .and_then(|e| e.outcome)
            .ok_or_else(|| {
                StoreError::Failed(format!(
                    "{transaction}: duplicate key but no outcome recorded"
                ))
            })?;
        if known.agrees_with(outcome) {
            Ok(Recorded::Same)
        } else {
            Ok(Recorded::Conflict(known))
        }
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
        let lag = chrono::Duration::from_std(self.feed_lag).unwrap_or(chrono::Duration::zero());
        // Everything numbered up to the horizon has committed (or failed) by now.
        let horizon = if self.feed_lag.is_zero() {
            i64::MAX
        } else {
            seq_at(Utc::now() - lag) as i64
        };
        self.find_ledger(
            "ledger page",
            doc! {"seq": {"$gt": to_i64(after, "cursor")?, "$lte": horizon}},
            doc! {"seq": 1},
            limit,
        )
        .await
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        // `seq` is indexed (Cosmos DB sorts only by indexed fields).
        self.find_ledger(
            "ledger recent",
            doc! {},
            doc! {"seq": -1},
            limit.min(MAX_PAGE),
        )
        .await
    }

    async fn upsert_peer(&self, peer: &PeerRecord) -> Result<()> {
        let mut d = bson::to_document(&PeerDoc::from(peer))
            .map_err(|e| StoreError::Failed(format!("encode peer: {e}")))?;
        d.insert("_id", format!("node:{}", peer.node));
        self.retry("upsert peer", || {
            self.peers
                .replace_one(doc! {"_id": format!("node:{}", peer.node)}, d.clone())
                .upsert(true)
        })
        .await?;
        Ok(())
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut session = self
                .client
                .start_session()
                .await
                .map_err(|e| classify("start session", e))?;
            // Transactions take their write concern here, never per operation (the driver drops
            // the collections' own inside a transaction): majority, journaled, at commit.
            session
                .start_transaction()
                .write_concern(durable_write_concern())
                .await
                .map_err(|e| classify("start transaction", e))?;
            match self
                .execute_once(&mut session, transaction, lines, region, takeover, now)
                .await
            {
                Ok(Some(done)) => return Ok(done),
                // A product changed under us: someone else's transaction won; read again.
                Ok(None) => {}
                // Someone committed the same marker first (11000), or the server saw the
                // conflict (112 / TransientTransactionError): start over, which adopts the
                // winner's marker or re-decides on the new stock.
                Err(e) if code(&e) == Some(DUPLICATE_KEY) || retryable(&e) => {
                    tracing::debug!(transaction, attempt, error = %e, "execution lost a race; retrying");
                }
                Err(e) => return Err(classify("execute", e)),
            }
            if attempt >= MAX_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "execute {transaction}: still conflicting after {MAX_ATTEMPTS} attempts"
                )));
            }
            backoff(attempt).await;
        }
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
