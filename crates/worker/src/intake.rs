//! Sorting a delivery's events into those this node takes and those it quarantines, so that one
//! bad event never takes good ones with it. Pure: no I/O, the time is an argument.
//!
//! Event Grid answers a delivery as a whole: a 400 dead-letters every event in it, a 5xx retries
//! every one. So a delivery mixing valid commands with a bad event is answered 200 once the valid
//! ones are in the ledger *and* the bad one is durably in this node's `quarantine_<node>`
//! collection with the raw event, the reason and when (`saldo quarantine` lists them). A delivery
//! holding nothing this node can take is answered 400, as every delivery that can never succeed
//! is: Event Grid dead-letters it (and it is quarantined too, when the database is reachable).
//!
//! What counts as bad, decided for rolling deploys (old and new nodes, and a new API, at once):
//! - A known type with the data version this node speaks (`1.0`) is taken. A compatible change
//!   keeps `1.0` and only adds optional fields, which older nodes ignore.
//! - An unknown event type, or a known type with another data version (an incompatible change
//!   from a newer producer), is quarantined, never dropped: the raw event is kept. Nothing is
//!   lost because the fleet converges anyway: a command one node quarantined is recorded by
//!   the nodes that understand it and reaches this node by catch-up, with its outcome, once it
//!   is upgraded; a command *every* node quarantined stays unsettled in the API's record, and
//!   the API's reconciler delivers it again every few seconds until an upgraded node takes it.
//!   Hence the deploy order: workers first, then the API (the producer of new versions).
//! - A malformed event (bad envelope, bad id, invalid data) is quarantined with the reason.
//! - Event Grid's own `SubscriptionDeletedEvent` is neither taken nor bad: it is skipped.

use chrono::{DateTime, Utc};
use saldo_core::events::{self, SaldoEvent};
use saldo_store::Quarantined;
use serde_json::Value;

use crate::node::SUBSCRIPTION_DELETED;

/// How much of a reason is kept (a serde error can quote a lot of input).
const MAX_REASON: usize = 500;

/// A delivery's events, sorted.
#[derive(Debug, Default)]
pub struct Intake {
    pub taken: Vec<SaldoEvent>,
    pub bad: Vec<Quarantined>,
}

impl Intake {
    /// One line naming the bad events and why (for a 400's body and the logs).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .bad
            .iter()
            .take(5)
            .map(|q| {
                format!(
                    "event id {:?}: {}",
                    q.event_id.as_deref().unwrap_or("?"),
                    q.reason
                )
            })
            .collect();
        let more = self.bad.len().saturating_sub(parts.len());
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        format!(
            "{} bad event(s): {}{tail}",
            self.bad.len(),
            parts.join("; ")
        )
    }
}

/// Sorts `items` (a delivery's events, already known to be a bounded, non-empty array).
pub fn sort(items: &[Value], now: DateTime<Utc>) -> Intake {
    let mut intake = Intake::default();
    for raw in items {
        let event_type = raw.get("eventType").and_then(Value::as_str);
        if event_type == Some(SUBSCRIPTION_DELETED) {
            continue;
        }
        match events::parse_event(raw) {
            Ok(e) => intake.taken.push(e),
            Err(e) => intake.bad.push(quarantined(raw, e.to_string(), now)),
        }
    }
    intake
}

/// The quarantine entry for one raw event; its id is derived from the event's bytes, so the
/// same event delivered again is the same entry.
pub fn quarantined(raw: &Value, reason: String, now: DateTime<Utc>) -> Quarantined {
    let text = raw.to_string();
    let field = |k: &str| {
        raw.get(k)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(events::MAX_ID_LEN).collect::<String>())
    };
    Quarantined {
        id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes()).to_string(),
        event_id: field("id"),
        event_type: field("eventType"),
        data_version: field("dataVersion"),
        reason: reason.chars().take(MAX_REASON).collect(),
        raw: text,
        at_ms: now.timestamp_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command(id: &str, version: &str) -> Value {
        json!({
            "id": id, "eventType": "recordUpdated", "subject": "shop/orders",
            "eventTime": "2026-01-01T00:00:00Z", "dataVersion": version,
            "data": {"transaction": id, "products": [{"id": 1, "ean": 1111, "name": "Orange", "change": -1}]}
        })
    }

    #[test]
    fn good_events_are_taken_and_each_bad_one_is_quarantined_with_its_reason() {
        let now = Utc::now();
        let items = vec![
            command("a", "1.0"),
            command("newer", "2.0"),
            json!({"id": "x", "eventType": "nodeDraining", "subject": "s", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1.0", "data": {}}),
            json!({"not": "an event"}),
            json!({"id": "gone", "eventType": SUBSCRIPTION_DELETED, "subject": "s", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1", "data": {}}),
            command("b", "1.0"),
        ];
        let intake = sort(&items, now);
        assert_eq!(intake.taken.len(), 2, "both valid commands are taken");
        assert_eq!(intake.bad.len(), 3, "the deletion notice is skipped");
        let newer = &intake.bad[0];
        assert_eq!(newer.event_id.as_deref(), Some("newer"));
        assert_eq!(newer.data_version.as_deref(), Some("2.0"));
        assert!(newer.reason.contains("2.0"), "{}", newer.reason);
        assert_eq!(
            serde_json::from_str::<Value>(&newer.raw).unwrap(),
            items[1],
            "the raw event is kept as delivered"
        );
        assert!(intake.bad[1].reason.contains("nodeDraining"));
        assert_eq!(intake.bad[2].event_id, None);
        assert_eq!(
            quarantined(&items[1], "r".into(), now).id,
            newer.id,
            "the same event is the same entry"
        );
        assert!(intake.summary().starts_with("3 bad event(s)"));
    }
}
