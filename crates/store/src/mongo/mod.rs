//! The MongoDB store: SecantusDB locally, Azure Cosmos DB for MongoDB (RU) in Azure.
//!
//! Cosmos DB limits and how this module respects them:
//! - Multi-document transactions only inside ONE unsharded collection (5 s limit): the warehouse
//!   keeps products and applied-markers in the single `warehouse` collection, and a batch of
//!   executions is one short transaction in it (read, decide, write, commit; no waiting inside;
//!   at most [`MAX_EXECUTIONS_PER_TRANSACTION`] executions).
//! - Unique indexes only on empty collections: the only uniqueness Saldo relies on is `_id`
//!   (the transaction id in a ledger, `tx:<id>` for markers), which every collection has from
//!   birth. The other indexes are plain and are created by [`Store::init`](crate::Store::init) at start-up, before
//!   any data is written; creating an existing index is a no-op.
//! - Error 16500 (TooManyRequests, the RU budget is spent) is not retried by the driver: every
//!   operation here retries it with exponential back-off and full jitter (`backon`), a bounded
//!   number of times ([`MAX_ATTEMPTS`]), then reports the database unavailable (HTTP 503, Event
//!   Grid retries). Error 112 (WriteConflict) and the `TransientTransactionError` label are
//!   retried the same way and, once the retries are spent, reported as
//!   [`StoreError::Contended`]: the database is up, the document is hot. A transaction's retries
//!   sleep 5 to 7 s in all before giving up, no less than the 5 s after which the database ends a
//!   transaction whose writer stopped half-way ([`TRANSACTION_LIFETIME`]). No lock is held while
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
//! Every round trip is counted ([`Store::db_ops`](crate::Store::db_ops)), by its origin in the
//! worker and its kind ([`Store::db_ops_by_origin`](crate::Store::db_ops_by_origin)): Cosmos DB bills each one in request units
//! and SecantusDB manages a few hundred writes a second, so the ledger's writes are group-committed:
//! every command and outcome an instance has to write while another of its ledger transactions
//! runs waits for it and then goes into the next one, three round trips however many entries
//! (`ledger_batch`). Executions are group-committed too (`execute`): one warehouse transaction
//! of 3 + (products touched) round trips for all of an instance's executions waiting at once.
//!
//! One module per job: `documents` (the BSON documents and their mapping to the model),
//! `retry` (classifying driver errors, bounded retries with back-off), `transaction` (the
//! multi-document transaction loop, numbering from the counter), `group` (group commit:
//! an instance's concurrent writes of one kind share a transaction), `ledger_batch` (the
//! ledger's writes), `execute` (executions against the warehouse), and `store` (the `Store`
//! operations).

use std::time::Duration;

use mongodb::bson::Document;
use mongodb::options::{Acknowledgment, ClientOptions, CollectionOptions, WriteConcern};
use mongodb::{Client, Collection};

use crate::origin::{Kind, OpCounters};
use crate::{Result, StoreError, valid_node_name};

mod documents;
mod execute;
mod group;
mod ledger_batch;
mod retry;
mod store;
mod transaction;

pub use execute::MAX_EXECUTIONS_PER_TRANSACTION;
pub use retry::{MAX_ATTEMPTS, MAX_TRANSACTION_ATTEMPTS, TRANSACTION_LIFETIME};

use retry::classify;

/// The default bound on one store operation, retries included (`SALDO_DB_TIMEOUT_MS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `_id` of the feed's sequence counter in `ledger_<node>`. Transaction ids are strings, so an
/// integer `_id` can never be a transaction's.
const COUNTER_ID: i32 = 0;

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
    /// This process's numbered ledger writes, group-committed: all of them write the counter
    /// document, so two of ours at once could only conflict with each other (112) and back off.
    /// Instead whoever finds no transaction running writes everything queued in one
    /// (`ledger_batch`). Other instances of the region still race with us; the counter's
    /// conflict orders them, as above.
    group: ledger_batch::LedgerGroup,
    /// This process's executions against the warehouse, group-committed the same way: they
    /// all write the few products everybody buys (`execute`).
    executions: execute::ExecGroup,
    peers: Collection<Document>,
    warehouse: Collection<Document>,
    /// Bound on one operation, its retries included.
    timeout: Duration,
    /// Round trips by origin and kind, documents written by origin.
    ops: OpCounters,
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

impl MongoStore {
    /// Connects (lazily: the first operation reaches the server) to `uri`, database `database`,
    /// for node `node`.
    pub async fn connect(uri: &str, database: &str, node: &str) -> Result<Self> {
        if !valid_node_name(node) {
            return Err(StoreError::Failed(
                format!("invalid node name {node:?}: use letters, digits, - and _").into(),
            ));
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
            group: ledger_batch::ledger_group(),
            executions: execute::exec_group(),
            ops: OpCounters::default(),
        })
    }

    /// Bounds every operation, its retries and back-off included: past it the operation is
    /// abandoned and reported unavailable (its effect, if any, is idempotent to redo).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Counts one round trip of `kind` (for the origin of the work running now).
    fn count(&self, kind: Kind) {
        self.ops.count(kind);
    }

    /// Counts `n` documents written (one write round trip may write many).
    fn count_docs(&self, n: usize) {
        self.ops.docs(n);
    }

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
