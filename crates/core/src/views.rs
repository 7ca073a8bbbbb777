//! JSON shapes that nodes serve over HTTP and the API (and peers) read back.
//!
//! They live in the core so that producer (worker) and consumers (API, peers, `saldo bench`,
//! tests) cannot drift apart.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{Outcome, ProductLine, Quantity};

/// A product as the warehouse holds it (`GET /api/products[/{id}]` on a worker and on the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    pub id: u64,
    pub ean: u64,
    pub name: String,
    pub saldo: i64,
}

/// Where a transaction stands in one node's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LedgerState {
    Pending,
    Completed,
    Rejected,
}

impl From<Outcome> for LedgerState {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Completed => LedgerState::Completed,
            Outcome::Rejected => LedgerState::Rejected,
        }
    }
}

/// One transaction as one node's ledger knows it (`GET /api/ledger/{id}` on a worker, and the
/// items of the catch-up feed `GET /api/ledger?after=..`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntryView {
    pub transaction: String,
    /// The node whose ledger this is.
    pub recorded_by: String,
    pub state: LedgerState,
    /// The command, if this node received it (a node may know only the outcome, from a peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Vec<ProductLine>>,
    /// When this node first recorded the transaction (command or outcome).
    pub recorded_at: DateTime<Utc>,
    /// Executing node and region, once the outcome is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_region: Option<String>,
    /// When the executor applied it, on the executor's clock (from the outcome it recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub quantities: Vec<Quantity>,
    /// True when the executor was not the first-ranked node (it took over).
    #[serde(default)]
    pub takeover: bool,
    /// Position in this node's catch-up feed.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A transaction's outcome as the shared warehouse's applied-marker holds it (`GET
/// /api/outcomes/{id}` on a worker). The marker commits together with the stock change, so it
/// is the outcome from the moment it exists, before any ledger has recorded it; no marker means
/// nobody has executed the transaction (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeView {
    pub transaction: String,
    pub status: Outcome,
    pub executed_by: String,
    pub executed_region: String,
    /// When the executor applied it, on the executor's clock.
    pub executed_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub quantities: Vec<Quantity>,
    /// True when the executor was not the first-ranked node (it took over).
    #[serde(default)]
    pub takeover: bool,
}

/// A page of the catch-up feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntryView>,
    /// Pass as `after` to get the next page; equal to the request's `after` when there is nothing new.
    pub next: u64,
}

/// What a node says about itself and its peers (`GET /api/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusView {
    pub node: String,
    pub region: String,
    pub url: String,
    pub ready: bool,
    pub started_at: DateTime<Utc>,
    pub counters: BTreeMap<String, u64>,
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub node: String,
    pub region: String,
    pub url: String,
    pub last_heartbeat: DateTime<Utc>,
    pub live: bool,
}
