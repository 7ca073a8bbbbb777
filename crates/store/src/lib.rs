//! Saldo's persistence adapter.
//!
//! One database holds, for each node `<node>`:
//! - `ledger_<node>`: one document per transaction this node knows (command, state, outcome,
//!   outbox flag, feed sequence). Written only by that node.
//! - `peers_<node>`: the membership as that node heard it, and its catch-up cursors per peer URL.
//!
//! and, shared by all nodes:
//! - `warehouse`: ONE unsharded collection holding both the products (`_id: "product:<id>"`) and
//!   the applied-markers (`_id: "tx:<transaction>"`). They share a collection because Cosmos DB
//!   (MongoDB API) allows multi-document transactions only inside one unsharded collection, and
//!   the stock change and the marker must commit together: that is what makes execution
//!   exactly-once even when two nodes execute the same transaction at the same moment.
//!
//! [`Store`] is the interface the worker uses; [`MongoStore`] talks to MongoDB (SecantusDB
//! locally, Cosmos DB in Azure); [`MemStore`] keeps everything in memory for unit tests and the
//! deterministic simulation.

use std::future::Future;

use chrono::{DateTime, Utc};
use saldo_core::events::ProductLine;
use saldo_core::views::ProductView;

pub mod error;
pub mod mem;
pub mod model;
pub mod mongo;
pub mod origin;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use error::{Detail, Result, StoreError};
pub use mem::{Applied, Fault, MemDb, MemStore, Mutation};
pub use model::*;
pub use mongo::MongoStore;

/// Upper bound on any page or batch read from a ledger.
pub const MAX_PAGE: usize = 500;
/// Upper bound on the products a warehouse listing returns.
pub const MAX_PRODUCTS: usize = 10_000;

/// Everything a worker node needs from the database. One value is bound to one node (its
/// ledger and peers collections) and the shared warehouse.
///
/// Methods return `Send` futures so that handlers can run on a multi-threaded runtime.
pub trait Store: Send + Sync + 'static {
    /// The node whose ledger this is.
    fn node(&self) -> &str;

    /// Creates indexes (before any data is written: Cosmos DB creates unique indexes only on
    /// empty collections) and loads the ledger's feed sequence. Idempotent.
    fn init(&self) -> impl Future<Output = Result<()>> + Send;

    /// Database round trips made so far (each attempt of each operation counts).
    fn db_ops(&self) -> u64;

    /// The same round trips by origin and kind (`dbOps.<origin>.<kind>`), and documents
    /// written by origin (`dbDocs.<origin>`), as [`origin::OpCounters::snapshot`] gives them.
    /// Empty for a store that does not break them down.
    fn db_ops_by_origin(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }

    // --- this node's ledger ---

    /// Inserts each command unless its transaction is already in the ledger, in one batch.
    /// Returns, per command, whether it was new. Durable (majority, journaled) when it returns.
    fn insert_commands(
        &self,
        cmds: &[NewCommand],
    ) -> impl Future<Output = Result<Vec<Inserted>>> + Send;

    /// Records a transaction's outcome (creating the entry if the command never arrived here).
    /// Never overwrites a different known outcome.
    fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Recorded>> + Send;

    /// Records several outcomes as [`Store::record_outcome`] would one after another, returning
    /// what each found, in order. The MongoDB store writes them in one transaction (one bump of
    /// the ledger's counter for all: the peers' outcomes of one delivery cost one transaction,
    /// not one each); the default records them one by one.
    fn record_outcomes(
        &self,
        items: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Recorded>>> + Send {
        async move {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push(
                    self.record_outcome(&i.transaction, &i.outcome, i.published, now)
                        .await?,
                );
            }
            Ok(out)
        }
    }

    /// Inserts `cmds` and then records `outcomes`, as [`Store::insert_commands`] and
    /// [`Store::record_outcomes`] would one after the other, in ONE ledger write where the store
    /// can (the MongoDB store: one transaction, one bump of the counter). An owner that executed
    /// a command before recording it passes both the command and its outcome: the entry is then
    /// written once, decided. The default makes the two calls.
    fn write_entries(
        &self,
        cmds: &[NewCommand],
        outcomes: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(Vec<Inserted>, Vec<Recorded>)>> + Send {
        async move {
            let inserted = if cmds.is_empty() {
                Vec::new()
            } else {
                self.insert_commands(cmds).await?
            };
            let recorded = if outcomes.is_empty() {
                Vec::new()
            } else {
                self.record_outcomes(outcomes, now).await?
            };
            Ok((inserted, recorded))
        }
    }

    /// Clears the outbox flag of these transactions (their completion has been published).
    fn mark_published(&self, transactions: &[String]) -> impl Future<Output = Result<()>> + Send;

    /// Transactions without an outcome, the earliest received first, at most `limit`.
    fn pending(&self, limit: usize) -> impl Future<Output = Result<Vec<LedgerEntry>>> + Send;

    /// Transactions whose completion this node still owes the fleet, at most `limit`.
    fn unpublished(&self, limit: usize) -> impl Future<Output = Result<Vec<LedgerEntry>>> + Send;

    fn entry(&self, transaction: &str) -> impl Future<Output = Result<Option<LedgerEntry>>> + Send;

    /// The ledger entries of these transactions that exist, in no particular order. The
    /// default reads them one by one; the MongoDB store reads them in one query.
    fn entries(
        &self,
        transactions: &[String],
    ) -> impl Future<Output = Result<Vec<LedgerEntry>>> + Send {
        async move {
            let mut out = Vec::new();
            for tx in transactions {
                out.extend(self.entry(tx).await?);
            }
            Ok(out)
        }
    }

    /// The catch-up feed: entries changed after `after` (a sequence number), in order, at most `limit`.
    fn page(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>>> + Send;

    /// The newest `limit` entries of this ledger, newest first (the fleet page's timeline).
    fn recent(&self, limit: usize) -> impl Future<Output = Result<Vec<LedgerEntry>>> + Send;

    // --- this node's view of its peers ---

    /// Stores what was heard of a peer if it is newer than what is stored ([`PeerRecord::stamp`]:
    /// incarnation, then the peer's timestamp), atomically, so that every instance of this
    /// region sees one history. Returns whether it was newer (a late or redelivered heartbeat is
    /// not). Only a stored heartbeat counts as heard.
    fn record_peer(&self, peer: &PeerRecord) -> impl Future<Output = Result<bool>> + Send;
    /// Allocates this node's next incarnation (1, 2, ...): every process of this region takes
    /// one at start-up and sends it in its heartbeats.
    fn next_incarnation(&self) -> impl Future<Output = Result<u64>> + Send;
    fn peers(&self) -> impl Future<Output = Result<Vec<PeerRecord>>> + Send;
    /// The last feed position read from the peer at `url` (0 if never).
    fn cursor(&self, url: &str) -> impl Future<Output = Result<u64>> + Send;
    fn set_cursor(&self, url: &str, cursor: u64) -> impl Future<Output = Result<()>> + Send;

    // --- the shared warehouse ---

    /// Executes a transaction exactly once: in one atomic warehouse transaction, reads the
    /// marker and the products, decides with [`saldo_core::stock::apply`], writes the products
    /// and the marker. If a marker exists (before or by a concurrent executor), adopts it.
    fn execute(
        &self,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Execution>> + Send;

    fn marker(
        &self,
        transaction: &str,
    ) -> impl Future<Output = Result<Option<OutcomeRecord>>> + Send;
    /// All products, ordered by id.
    fn products(&self) -> impl Future<Output = Result<Vec<ProductView>>> + Send;
    fn product(&self, id: u64) -> impl Future<Output = Result<Option<ProductView>>> + Send;

    // --- this node's quarantine (events it could not take, kept with the reason) ---

    /// Stores bad events durably (majority, journaled) in `quarantine_<node>`; one already there
    /// (same id: the same raw event delivered again) is left as it is.
    fn quarantine(&self, events: &[Quarantined]) -> impl Future<Output = Result<()>> + Send;
    /// The newest `limit` (at most [`MAX_PAGE`]) quarantined events, newest first.
    fn quarantined(&self, limit: usize) -> impl Future<Output = Result<Vec<Quarantined>>> + Send;
}

/// An event a node quarantined: the raw event as delivered, why, and when (this node's clock,
/// for people only: nothing compares it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    /// Derived from the raw event, so a redelivery of the same event is one entry.
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub data_version: Option<String>,
    pub reason: String,
    /// The event's JSON exactly as delivered (a string: any key is safe in it).
    pub raw: String,
    /// Milliseconds since the epoch on this node's clock.
    pub at_ms: i64,
}

/// Node names become collection names: keep them to what every MongoDB flavour accepts.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 60
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The outcome a fresh execution decides, shared by both stores so they cannot differ.
pub(crate) fn decide(
    current: &std::collections::BTreeMap<u64, ProductView>,
    lines: &[ProductLine],
    node: &str,
    region: &str,
    takeover: bool,
    now: DateTime<Utc>,
) -> (saldo_core::stock::StockDecision, OutcomeRecord) {
    use saldo_core::events::Outcome;
    use saldo_core::stock::{StockDecision, apply};
    let decision = apply(current, lines);
    let (status, reason) = match &decision {
        StockDecision::Apply { .. } => (Outcome::Completed, None),
        StockDecision::Reject { reason } => (Outcome::Rejected, Some(reason.clone())),
    };
    let outcome = OutcomeRecord {
        status,
        node: node.to_string(),
        region: region.to_string(),
        reason,
        quantities: decision.quantities(),
        at: now,
        takeover,
    };
    (decision, outcome)
}
