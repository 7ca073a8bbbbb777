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
//!
//! Events that parse but cannot be true are bad too ([`Admission`]): a heartbeat or completion
//! from a node that is not in the fleet (`SALDO_FLEET`), and an event stamped further ahead of
//! this node's clock than any real clock drifts (`SALDO_MAX_AHEAD_MS`, an hour by default). The
//! latter is a sanity bound, not a decision: no ordering or liveness verdict ever compares a
//! timestamp with this clock; but a heartbeat stamped a year ahead would outrank every later
//! heartbeat of its sender's incarnation, so it is refused at the door.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
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

/// What this node admits of events that parse (see the module's comment).
#[derive(Debug, Clone)]
pub struct Admission {
    /// The fleet's node names (`SALDO_FLEET`); `None` admits any node (a node configured without
    /// the list, which says so at start-up).
    pub fleet: Option<BTreeSet<String>>,
    /// How far ahead of this node's clock an event's stamps may be.
    pub max_ahead: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            fleet: None,
            max_ahead: Duration::hours(1),
        }
    }
}

impl Admission {
    /// Why `e` cannot be true, if it cannot.
    pub fn refuse(&self, e: &SaldoEvent, now: DateTime<Utc>) -> Option<String> {
        let (sender, stamps): (Option<&str>, Vec<(&str, DateTime<Utc>)>) = match e {
            SaldoEvent::RecordUpdated(e) => (None, vec![("eventTime", e.event_time)]),
            SaldoEvent::TransactionCompleted(e) => (
                Some(&e.data.node),
                vec![
                    ("eventTime", e.event_time),
                    ("data.timestamp", e.data.timestamp),
                ],
            ),
            SaldoEvent::Heartbeat(e) => (
                Some(&e.data.node),
                vec![
                    ("eventTime", e.event_time),
                    ("data.timestamp", e.data.timestamp),
                    ("data.startedAt", e.data.started_at),
                ],
            ),
        };
        if let (Some(node), Some(fleet)) = (sender, &self.fleet)
            && !fleet.contains(node)
        {
            return Some(format!(
                "unknown node {node:?}: not in this fleet (SALDO_FLEET: {})",
                fleet.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        let limit = now + self.max_ahead;
        stamps.into_iter().find(|(_, t)| *t > limit).map(|(field, t)| {
            format!(
                "{field} {} is more than {} s ahead of this node's clock ({}): no clock drifts that far",
                t.to_rfc3339(),
                self.max_ahead.num_seconds(),
                now.to_rfc3339()
            )
        })
    }
}

/// Sorts `items` (a delivery's events, already known to be a bounded, non-empty array).
pub fn sort(items: &[Value], now: DateTime<Utc>, admission: &Admission) -> Intake {
    let mut intake = Intake::default();
    for raw in items {
        let event_type = raw.get("eventType").and_then(Value::as_str);
        if event_type == Some(SUBSCRIPTION_DELETED) {
            continue;
        }
        match events::parse_event(raw) {
            Ok(e) => match admission.refuse(&e, now) {
                None => intake.taken.push(e),
                Some(why) => intake.bad.push(quarantined(raw, why, now)),
            },
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
        let intake = sort(&items, now, &Admission::default());
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

    fn heartbeat(node: &str, at: &str) -> Value {
        json!({
            "id": format!("hb-{node}-{at}"), "eventType": "nodeHeartbeat", "subject": format!("saldo/nodes/{node}"),
            "eventTime": at, "dataVersion": "1.0",
            "data": {"node": node, "region": node, "url": "http://127.0.0.9:1", "ready": true,
                     "startedAt": "2026-01-01T00:00:00Z", "timestamp": at, "incarnation": 1}
        })
    }

    fn completion(node: &str, at: &str) -> Value {
        json!({
            "id": format!("done-{node}"), "eventType": "transactionCompleted", "subject": "saldo/transactions/t1",
            "eventTime": at, "dataVersion": "1.0",
            "data": {"transaction": "t1", "status": "completed", "timestamp": at, "node": node, "region": node}
        })
    }

    #[test]
    fn a_node_outside_the_fleet_and_a_stamp_from_the_future_are_refused_by_name() {
        let now: DateTime<Utc> = "2026-01-01T00:00:10Z".parse().unwrap();
        let admission = Admission {
            fleet: Some(["a".to_string(), "b".to_string()].into()),
            max_ahead: Duration::minutes(5),
        };
        let items = vec![
            heartbeat("b", "2026-01-01T00:00:09Z"),
            heartbeat("mallory", "2026-01-01T00:00:09Z"),
            completion("mallory", "2026-01-01T00:00:09Z"),
            completion("a", "2026-01-01T00:00:09Z"),
            // Four minutes ahead: within the bound (clocks do drift), taken.
            heartbeat("a", "2026-01-01T00:04:10Z"),
            // A year ahead: refused.
            heartbeat("b", "2027-01-01T00:00:00Z"),
            command("c", "1.0"),
        ];
        let intake = sort(&items, now, &admission);
        assert_eq!(intake.taken.len(), 4, "{:?}", intake.summary());
        assert_eq!(intake.bad.len(), 3);
        assert!(
            intake.bad[0].reason.starts_with("unknown node \"mallory\""),
            "{}",
            intake.bad[0].reason
        );
        assert_eq!(
            intake.bad[1].event_type.as_deref(),
            Some("transactionCompleted")
        );
        assert!(intake.bad[1].reason.contains("mallory"));
        assert!(
            intake.bad[2].reason.contains("ahead of this node's clock"),
            "{}",
            intake.bad[2].reason
        );

        // Without a fleet list any node is admitted; the clock bound still holds.
        let open = sort(
            &items,
            now,
            &Admission {
                fleet: None,
                ..admission
            },
        );
        assert_eq!(open.taken.len(), 6);
        assert_eq!(open.bad.len(), 1);
    }
}
