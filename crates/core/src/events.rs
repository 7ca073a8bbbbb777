//! The events that cross Event Grid, in the Event Grid schema of the design plan.
//!
//! Three event types travel on the one topic:
//! - [`RECORD_UPDATED`]: a command from the API ("apply these stock changes"). The event id is the
//!   transaction id: Event Grid keeps the id on every redelivery, so it is the deduplication key.
//! - [`TRANSACTION_COMPLETED`]: the executing node's report of the outcome.
//! - [`NODE_HEARTBEAT`]: a node announcing itself (liveness, URL, counters).
//!
//! W3C trace context travels inside `data` as `traceparent` (and optional `tracestate`), because
//! the Event Grid schema has no place for extension attributes at the top level.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const RECORD_UPDATED: &str = "recordUpdated";
pub const TRANSACTION_COMPLETED: &str = "transactionCompleted";
pub const NODE_HEARTBEAT: &str = "nodeHeartbeat";
/// The only data version Saldo writes and accepts for its own events.
pub const DATA_VERSION: &str = "1.0";

/// Upper bound on the lines of one transaction (TigerBeetle style: every collection is bounded).
pub const MAX_LINES: usize = 100;
/// Upper bound on any quantity or change; anything larger is an absurd input, not a purchase.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Upper bound on identifiers and names, in bytes.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 200;
/// Upper bound on product ids and EANs: 2^53, the largest integer a JSON number keeps exactly in
/// JavaScript (the SPA) and one that fits MongoDB's signed 64-bit integers. EAN-13 codes fit.
pub const MAX_PRODUCT_NUMBER: u64 = 1 << 53;

/// One event in the Event Grid schema. `data` stays generic so the envelope can be parsed before
/// the payload is understood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct EventGridEvent<T = Value> {
    pub id: String,
    pub event_type: String,
    pub subject: String,
    pub event_time: DateTime<Utc>,
    pub data: T,
    #[serde(default)]
    pub data_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// One product line of a `recordUpdated` command: either a new absolute quantity (`saldo`, the
/// plan's UPDATE) or a signed change (a purchase is a negative change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ProductLine {
    pub id: u64,
    pub ean: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saldo: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<i64>,
}

/// The operation a [`ProductLine`] asks for, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Set(i64),
    Change(i64),
}

impl ProductLine {
    pub fn operation(&self) -> Operation {
        match (self.saldo, self.change) {
            (Some(s), _) => Operation::Set(s),
            (None, Some(c)) => Operation::Change(c),
            (None, None) => unreachable!("validated lines have exactly one of saldo and change"),
        }
    }
}

/// Payload of `recordUpdated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RecordUpdated {
    /// Optional; when present it must equal the event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    pub products: Vec<ProductLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Completed,
    Rejected,
}

/// A product's quantity after a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Quantity {
    pub id: u64,
    pub saldo: i64,
}

/// Payload of `transactionCompleted`: the plan's fields (`transaction`, `status`, `timestamp`)
/// plus who executed it and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct TransactionCompleted {
    pub transaction: String,
    pub status: Outcome,
    pub timestamp: DateTime<Utc>,
    pub node: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Resulting quantities of the products the transaction touched (empty when rejected).
    #[serde(default)]
    pub products: Vec<Quantity>,
    /// True when the executor was not first in line (it took over from a silent node).
    #[serde(default)]
    pub takeover: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// Payload of `nodeHeartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct Heartbeat {
    pub node: String,
    pub region: String,
    /// Base URL at which peers reach this node's functions (catch-up, reads).
    pub url: String,
    pub ready: bool,
    pub started_at: DateTime<Utc>,
    pub timestamp: DateTime<Utc>,
    /// The sender process's incarnation, allocated in its region's database at start-up and
    /// increasing with every start: heartbeats are ordered by (incarnation, timestamp), so a
    /// restarted peer whose clock went back is still heard, and `timestamp` is only ever
    /// compared with timestamps of the same process. 0 from senders that predate it.
    #[serde(default)]
    pub incarnation: u64,
    /// Counters by name (received, duplicates, executed, ...).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

// Everything above arrives from the wire: a JSON object each, never a positional array (see
// `json`).
crate::objects_only!(
    ProductLine,
    RecordUpdated,
    Quantity,
    TransactionCompleted,
    Heartbeat
);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for EventGridEvent<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventGridEvent::<T>::deserialize(crate::json::MapOnly(d))
    }
}

impl<T: Serialize> Serialize for EventGridEvent<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventGridEvent::<T>::serialize(self, s)
    }
}

/// Why an event can never be processed. Every variant maps to HTTP 400: Event Grid must not retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported dataVersion {0:?} for {1} (expected \"1.0\")")]
    UnsupportedVersion(String, String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A Saldo event whose envelope and payload are both valid.
#[derive(Debug, Clone, PartialEq)]
pub enum SaldoEvent {
    RecordUpdated(EventGridEvent<RecordUpdated>),
    TransactionCompleted(EventGridEvent<TransactionCompleted>),
    Heartbeat(EventGridEvent<Heartbeat>),
}

fn check_id(field: &str, id: &str) -> Result<(), InvalidEvent> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("must be 1..={MAX_ID_LEN} bytes")));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(
    event: &EventGridEvent<Value>,
) -> Result<EventGridEvent<T>, InvalidEvent> {
    let data = serde_json::from_value(event.data.clone())
        .map_err(|e| InvalidEvent::Malformed(format!("{} data: {e}", event.event_type)))?;
    Ok(EventGridEvent {
        id: event.id.clone(),
        event_type: event.event_type.clone(),
        subject: event.subject.clone(),
        event_time: event.event_time,
        data,
        data_version: event.data_version.clone(),
        metadata_version: event.metadata_version.clone(),
        topic: event.topic.clone(),
    })
}

impl RecordUpdated {
    /// Checks every rule a command must satisfy before it may touch a ledger.
    pub fn validate(&self, event_id: &str) -> Result<(), InvalidEvent> {
        if let Some(t) = &self.transaction
            && t != event_id
        {
            return Err(invalid("data.transaction", "must equal the event id"));
        }
        if self.products.is_empty() {
            return Err(invalid("data.products", "must name at least one product"));
        }
        if self.products.len() > MAX_LINES {
            return Err(invalid(
                "data.products",
                format!("at most {MAX_LINES} lines"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, line) in self.products.iter().enumerate() {
            let f = |name: &str| format!("data.products[{i}].{name}");
            if !seen.insert(line.id) {
                return Err(invalid(
                    f("id"),
                    format!("product {} appears twice", line.id),
                ));
            }
            if line.id > MAX_PRODUCT_NUMBER {
                return Err(invalid(
                    f("id"),
                    format!("must be at most {MAX_PRODUCT_NUMBER}"),
                ));
            }
            if line.ean > MAX_PRODUCT_NUMBER {
                return Err(invalid(
                    f("ean"),
                    format!("must be at most {MAX_PRODUCT_NUMBER}"),
                ));
            }
            if line.name.trim().is_empty() || line.name.len() > MAX_NAME_LEN {
                return Err(invalid(
                    f("name"),
                    format!("must be 1..={MAX_NAME_LEN} bytes"),
                ));
            }
            match (line.saldo, line.change) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(f("saldo"), "give exactly one of saldo and change"));
                }
                (Some(s), None) if !(0..=MAX_QUANTITY).contains(&s) => {
                    return Err(invalid(f("saldo"), format!("must be 0..={MAX_QUANTITY}")));
                }
                (None, Some(c)) if c == 0 || c.abs() > MAX_QUANTITY => {
                    return Err(invalid(
                        f("change"),
                        format!("must be non-zero and at most {MAX_QUANTITY} in size"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Parses and validates one event from a delivery. Errors are permanent (HTTP 400).
pub fn parse_event(raw: &Value) -> Result<SaldoEvent, InvalidEvent> {
    let event: EventGridEvent<Value> = serde_json::from_value(raw.clone())
        .map_err(|e| InvalidEvent::Malformed(format!("envelope: {e}")))?;
    check_id("id", &event.id)?;
    if event.data_version != DATA_VERSION {
        return Err(InvalidEvent::UnsupportedVersion(
            event.data_version.clone(),
            event.event_type.clone(),
        ));
    }
    if let Some(m) = &event.metadata_version
        && m != "1"
    {
        return Err(invalid("metadataVersion", "must be \"1\""));
    }
    match event.event_type.as_str() {
        RECORD_UPDATED => {
            let e: EventGridEvent<RecordUpdated> = typed(&event)?;
            e.data.validate(&e.id)?;
            Ok(SaldoEvent::RecordUpdated(e))
        }
        TRANSACTION_COMPLETED => {
            let e: EventGridEvent<TransactionCompleted> = typed(&event)?;
            check_id("data.transaction", &e.data.transaction)?;
            check_id("data.node", &e.data.node)?;
            if e.data.status == Outcome::Rejected && e.data.reason.is_none() {
                return Err(invalid("data.reason", "a rejection carries its reason"));
            }
            Ok(SaldoEvent::TransactionCompleted(e))
        }
        NODE_HEARTBEAT => {
            let e: EventGridEvent<Heartbeat> = typed(&event)?;
            check_id("data.node", &e.data.node)?;
            Ok(SaldoEvent::Heartbeat(e))
        }
        other => Err(InvalidEvent::UnknownType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan_example() -> Value {
        // The design plan's own example, with Saldo's data version.
        json!({
            "id": "1807",
            "eventType": "recordUpdated",
            "subject": "warehouse/products/orange",
            "eventTime": "2017-08-10T21:03:07+00:00",
            "data": {"products": [{"id": 1, "ean": 1111, "name": "Orange", "saldo": 5}]},
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.EventGrid/topics/z"
        })
    }

    #[test]
    fn the_plans_example_parses() {
        let SaldoEvent::RecordUpdated(e) = parse_event(&plan_example()).unwrap() else {
            panic!("wrong type")
        };
        assert_eq!(e.id, "1807");
        assert_eq!(e.data.products[0].operation(), Operation::Set(5));
    }

    #[test]
    fn bad_commands_are_rejected_with_a_reason() {
        let cases = [
            (json!({"products": []}), "at least one"),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A", "saldo": -1}]}),
                "0..=",
            ),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A", "change": 0}]}),
                "non-zero",
            ),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A", "change": 10_000_000}]}),
                "at most",
            ),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A"}]}),
                "exactly one",
            ),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A", "saldo": 1, "change": 1}]}),
                "exactly one",
            ),
            (
                json!({"products": [{"id": 1, "ean": 1, "name": "A", "change": -1}, {"id": 1, "ean": 1, "name": "A", "change": -1}]}),
                "twice",
            ),
            (
                json!({"transaction": "other", "products": [{"id": 1, "ean": 1, "name": "A", "change": -1}]}),
                "event id",
            ),
            (json!({"products": "nope"}), "data"),
            // The same command with its objects written as positional arrays.
            (json!([null, [[1, 1, "A", 5]]]), "invalid type"),
            (json!({"products": [[1, 1, "A", 5]]}), "invalid type"),
            (
                json!({"products": [{"id": 18_014_398_509_481_984u64, "ean": 1, "name": "A", "change": -1}]}),
                "id",
            ),
        ];
        for (data, needle) in cases {
            let mut raw = plan_example();
            raw["data"] = data.clone();
            let err = parse_event(&raw).unwrap_err().to_string();
            assert!(err.contains(needle), "{data}: {err}");
        }
    }

    #[test]
    fn envelope_errors() {
        let mut raw = plan_example();
        raw["dataVersion"] = json!("2.0");
        assert!(matches!(
            parse_event(&raw),
            Err(InvalidEvent::UnsupportedVersion(..))
        ));
        let mut raw = plan_example();
        raw["eventType"] = json!("somethingElse");
        assert!(matches!(
            parse_event(&raw),
            Err(InvalidEvent::UnknownType(_))
        ));
        let mut raw = plan_example();
        raw.as_object_mut().unwrap().remove("subject");
        assert!(matches!(parse_event(&raw), Err(InvalidEvent::Malformed(_))));
        let raw = plan_example();
        let fields: Vec<Value> = [
            "id",
            "eventType",
            "subject",
            "eventTime",
            "data",
            "dataVersion",
        ]
        .iter()
        .map(|f| raw[f].clone())
        .collect();
        let err = parse_event(&Value::Array(fields)).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
    }
}
