//! The log's lines as they are on disk: one JSON record per line, short keys kept through
//! serde renames.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One subscription an event still has to reach. (The keys on disk are short, as the log holds
/// one per event and subscription; the serde renames keep them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub sub: String,
    /// Attempts made so far.
    #[serde(default, rename = "n")]
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub due: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PubItem {
    pub seq: u64,
    /// Publish time, ms since the epoch.
    #[serde(rename = "pt")]
    pub publish_ms: i64,
    #[serde(rename = "subs")]
    pub targets: Vec<Target>,
    #[serde(rename = "ev")]
    pub event: Box<RawValue>,
}

/// What a log line records (`t` on disk).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// Accepted events and the subscriptions each must reach.
    #[default]
    #[serde(rename = "pub")]
    Publish,
    /// A failed attempt: the new attempt count and when the next one is due.
    #[serde(rename = "try")]
    Attempt,
    /// Delivered, dead-lettered or dropped for one subscription.
    #[serde(rename = "done")]
    Done,
    /// A subscription was deleted; its pending events go with it.
    #[serde(rename = "unsub")]
    Unsubscribe,
}

/// A log line. A flat struct rather than a tagged enum: serde's tagged enums cannot carry a
/// `RawValue` (the event is kept as the exact JSON text it was accepted as).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "t")]
    pub kind: RecordKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<PubItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
    /// For an attempt: the attempts made so far.
    #[serde(default, rename = "n")]
    pub attempts: u32,
    /// For an attempt: when the next one is due (ms since the epoch).
    #[serde(default)]
    pub due: i64,
}

impl Record {
    pub fn publish(items: Vec<PubItem>) -> Self {
        Self {
            kind: RecordKind::Publish,
            items,
            ..Default::default()
        }
    }
    pub fn attempt(sub: &str, seqs: Vec<u64>, attempts: u32, due: i64) -> Self {
        Self {
            kind: RecordKind::Attempt,
            sub: Some(sub.into()),
            seqs,
            attempts,
            due,
            ..Default::default()
        }
    }
    pub fn done(sub: &str, seqs: Vec<u64>) -> Self {
        Self {
            kind: RecordKind::Done,
            sub: Some(sub.into()),
            seqs,
            ..Default::default()
        }
    }
    pub fn unsubscribe(sub: &str) -> Self {
        Self {
            kind: RecordKind::Unsubscribe,
            sub: Some(sub.into()),
            ..Default::default()
        }
    }
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("records serialise");
        v.push(b'\n');
        v
    }
}
