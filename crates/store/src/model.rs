//! What the store keeps, independent of the database that keeps it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saldo_core::events::{Outcome, ProductLine, Quantity};
use saldo_core::views::{LedgerEntryView, LedgerState};
use serde::{Deserialize, Serialize};

/// The command part of a `recordUpdated` event, as a ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub products: Vec<ProductLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A command to put into a ledger if the transaction is not there yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    pub transaction: String,
    pub command: Command,
    /// When this node recorded it, on this node's clock: the base of its takeover deadline.
    pub received_at: DateTime<Utc>,
}

/// The outcome of a transaction: what the warehouse's applied-marker says, and what every
/// ledger eventually records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub status: Outcome,
    /// The node that executed it (whose warehouse transaction committed the marker).
    pub node: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub quantities: Vec<Quantity>,
    pub at: DateTime<Utc>,
    /// The executor was not first in the ranking when it executed (it took over).
    #[serde(default)]
    pub takeover: bool,
}

impl OutcomeRecord {
    /// What a node serves about the marker of `transaction` (`GET /api/outcomes/{id}`).
    pub fn view(&self, transaction: &str) -> saldo_core::views::OutcomeView {
        saldo_core::views::OutcomeView {
            transaction: transaction.to_string(),
            status: self.status,
            executed_by: self.node.clone(),
            executed_region: self.region.clone(),
            executed_at: self.at,
            reason: self.reason.clone(),
            quantities: self.quantities.clone(),
            takeover: self.takeover,
        }
    }

    /// Two records of one transaction agree when status and executor agree. (Quantities and
    /// times follow from the single marker; the executor is what could differ if the
    /// exactly-once machinery were broken.)
    pub fn agrees_with(&self, other: &OutcomeRecord) -> bool {
        self.status == other.status && self.node == other.node
    }
}

/// One transaction in one node's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub transaction: String,
    /// Absent when this node learnt only the outcome (from a peer's event or catch-up).
    pub command: Option<Command>,
    pub received_at: Option<DateTime<Utc>>,
    pub outcome: Option<OutcomeRecord>,
    /// Outbox flag: false while this node owes the fleet a `transactionCompleted` for it.
    pub published: bool,
    pub recorded_at: DateTime<Utc>,
    /// Position in this ledger's catch-up feed; bumped on every change peers care about.
    pub seq: u64,
}

impl LedgerEntry {
    pub fn state(&self) -> LedgerState {
        match &self.outcome {
            None => LedgerState::Pending,
            Some(o) => o.status.into(),
        }
    }

    pub fn view(&self, recorded_by: &str) -> LedgerEntryView {
        let o = self.outcome.as_ref();
        LedgerEntryView {
            transaction: self.transaction.clone(),
            recorded_by: recorded_by.to_string(),
            state: self.state(),
            products: self.command.as_ref().map(|c| c.products.clone()),
            recorded_at: self.recorded_at,
            executed_by: o.map(|o| o.node.clone()),
            executed_region: o.map(|o| o.region.clone()),
            executed_at: o.map(|o| o.at),
            reason: o.and_then(|o| o.reason.clone()),
            quantities: o.map(|o| o.quantities.clone()).unwrap_or_default(),
            takeover: o.is_some_and(|o| o.takeover),
            seq: self.seq,
            traceparent: self.command.as_ref().and_then(|c| c.traceparent.clone()),
        }
    }
}

/// A peer as this node last heard of it (from a heartbeat event or by asking its status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub node: String,
    pub region: String,
    pub url: String,
    pub ready: bool,
    pub started_at: DateTime<Utc>,
    /// When it was heard, on the clock of the instance that heard it (shown, never compared:
    /// another instance of this region may read it).
    pub last_heartbeat: DateTime<Utc>,
    /// The newest heartbeat's place in the peer's history: its incarnation, then its timestamp
    /// (on the peer's own clock, only ever compared with the same incarnation's).
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub beat_at: DateTime<Utc>,
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

impl PeerRecord {
    /// Orders heartbeats of one peer: a later process first, then a later beat of it.
    pub fn stamp(&self) -> (u64, DateTime<Utc>) {
        (self.incarnation, self.beat_at)
    }
}

/// What inserting a command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The transaction was already in the ledger (a redelivery, or an outcome heard first).
    Duplicate,
}

/// One outcome to record ([`Store::record_outcomes`](crate::Store::record_outcomes)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeToRecord {
    pub transaction: String,
    pub outcome: OutcomeRecord,
    /// False when this node owes the fleet its completion (the outbox).
    pub published: bool,
}

/// What recording an outcome found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The ledger learnt the outcome now.
    New,
    /// The ledger already had the same outcome.
    Same,
    /// The ledger already had a *different* outcome: it keeps it. This must never happen; the
    /// caller logs it loudly and counts it.
    Conflict(OutcomeRecord),
}

/// What an execution attempt against the warehouse found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub outcome: OutcomeRecord,
    /// True when this call committed the marker (and the stock change); false when a marker was
    /// already there (someone executed it before) and its outcome is adopted.
    pub fresh: bool,
}
