//! The documents as stored (ledger entries, products, markers, peers) and their mapping to
//! the store's model; times are epoch milliseconds.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use mongodb::bson::{self, Document};
use saldo_core::views::{LedgerState, ProductView};
use serde::{Deserialize, Serialize};

use crate::model::*;
use crate::{Detail, Result, StoreError};

/// The ledger document (`ledger_<node>`); timestamps are epoch milliseconds so they sort and
/// index the same on every MongoDB flavour.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LedgerDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) state: LedgerState,
    pub(super) command: Option<Command>,
    pub(super) received_at_ms: Option<i64>,
    pub(super) outcome: Option<OutcomeRecord>,
    pub(super) published: bool,
    pub(super) recorded_at_ms: i64,
    pub(super) seq: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ProductDoc {
    #[serde(rename = "_id")]
    pub(super) key: String,
    pub(super) id: i64,
    pub(super) ean: i64,
    pub(super) name: String,
    pub(super) saldo: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MarkerDoc {
    #[serde(rename = "_id")]
    pub(super) key: String,
    pub(super) transaction: String,
    pub(super) outcome: OutcomeRecord,
}

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}
/// A stored timestamp back as a time; one out of chrono's range (only a corrupt document has
/// one) is refused, never read as 1970.
pub(super) fn from_ms(v: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v).single().ok_or_else(|| {
        StoreError::Failed(format!("stored timestamp {v} ms is out of range").into())
    })
}
pub(super) fn product_key(id: u64) -> String {
    format!("product:{id}")
}
pub(super) fn marker_key(tx: &str) -> String {
    format!("tx:{tx}")
}
pub(super) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|e| {
        StoreError::Failed(Detail::caused_by(
            format!("{what} {v} does not fit the database"),
            e,
        ))
    })
}

impl LedgerDoc {
    pub(super) fn into_entry(self) -> Result<LedgerEntry> {
        Ok(LedgerEntry {
            transaction: self.id,
            command: self.command,
            received_at: self.received_at_ms.map(from_ms).transpose()?,
            outcome: self.outcome,
            published: self.published,
            recorded_at: from_ms(self.recorded_at_ms)?,
            seq: u64::try_from(self.seq).map_err(|e| {
                StoreError::Failed(Detail::caused_by(format!("negative seq {}", self.seq), e))
            })?,
        })
    }
}

impl ProductDoc {
    pub(super) fn from_view(p: &ProductView) -> Result<Self> {
        Ok(ProductDoc {
            key: product_key(p.id),
            id: to_i64(p.id, "product id")?,
            ean: to_i64(p.ean, "ean")?,
            name: p.name.clone(),
            saldo: p.saldo,
        })
    }
    pub(super) fn view(&self) -> ProductView {
        ProductView {
            id: self.id as u64,
            ean: self.ean as u64,
            name: self.name.clone(),
            saldo: self.saldo,
        }
    }
}

/// A peer as stored in `peers_<node>` (times as epoch milliseconds).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeerDoc {
    pub(super) node: String,
    pub(super) region: String,
    pub(super) url: String,
    pub(super) ready: bool,
    pub(super) started_at_ms: i64,
    pub(super) last_heartbeat_ms: i64,
    #[serde(default)]
    pub(super) incarnation: i64,
    #[serde(default)]
    pub(super) beat_at_ms: i64,
    #[serde(default)]
    pub(super) counters: BTreeMap<String, i64>,
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

impl TryFrom<PeerDoc> for PeerRecord {
    type Error = StoreError;
    fn try_from(p: PeerDoc) -> Result<Self> {
        Ok(PeerRecord {
            node: p.node,
            region: p.region,
            url: p.url,
            ready: p.ready,
            started_at: from_ms(p.started_at_ms)?,
            last_heartbeat: from_ms(p.last_heartbeat_ms)?,
            incarnation: p.incarnation.max(0) as u64,
            beat_at: from_ms(p.beat_at_ms)?,
            counters: p
                .counters
                .into_iter()
                .map(|(k, v)| (k, v.max(0) as u64))
                .collect(),
        })
    }
}

pub(super) fn parse_ledger(d: Document) -> Result<LedgerEntry> {
    let doc: LedgerDoc = bson::from_document(d).map_err(|e| {
        StoreError::Failed(Detail::caused_by(
            format!("unreadable ledger document: {e}"),
            e,
        ))
    })?;
    doc.into_entry()
}
