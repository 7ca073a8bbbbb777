//! Property tests of the worker's webhook, driven through its real axum router in-process with a
//! MemStore: for any delivery body (any bytes, any JSON, and deliveries mixing valid events of
//! each type with broken ones), the answer is a 2xx or a 4xx with a reason, never a 5xx, a panic
//! or a hang; a 4xx wrote nothing, and a 2xx wrote exactly the delivery's valid events (their
//! transactions in the ledger, their heartbeats' nodes among the peers) and nothing else. This
//! holds whether a mixed delivery is refused whole or its bad events are quarantined.
//! Cases: `PROPTEST_CASES` (default 256 per property).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use saldo_core::events::{SaldoEvent, parse_event};
use saldo_store::{MemDb, Store};
use saldo_worker::testing::{NoPeers, NullBus};
use saldo_worker::{Config, ManualClock, Node};
use serde_json::{Value, json};
use tower::ServiceExt;

const NODE: &str = "westeurope";
const VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

fn cases() -> u32 {
    saldo_testkit::proptest_cases(256)
}

fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-2.0e6..2.0e6f64).prop_map(|f| json!(f)),
        ".{0,10}".prop_map(Value::from),
        Just(json!("recordUpdated")),
        Just(json!("1.0")),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9-]{1,12}", "\\PC{1,8}"]
}

/// A valid event of one of the three types, on a small id space so redeliveries happen.
fn valid_event() -> impl Strategy<Value = Value> {
    let env = |id: String, ty: &str, data: Value| {
        json!({"id": id, "eventType": ty, "subject": "s", "eventTime": "2026-01-01T00:00:00Z",
               "dataVersion": "1.0", "data": data})
    };
    prop_oneof![
        (id(), prop::collection::btree_map(0u64..8, (-5i64..=5, any::<bool>()), 1..4)).prop_map(
            move |(id, lines)| {
                let products: Vec<Value> = lines
                    .into_iter()
                    .map(|(p, (q, set))| {
                        if set {
                            json!({"id": p, "ean": p, "name": "P", "saldo": q.abs()})
                        } else {
                            json!({"id": p, "ean": p, "name": "P", "change": if q == 0 { 1 } else { q }})
                        }
                    })
                    .collect();
                env(id, "recordUpdated", json!({"products": products}))
            }
        ),
        (id(), id(), any::<bool>()).prop_map(move |(eid, tx, ok)| env(
            eid,
            "transactionCompleted",
            json!({"transaction": tx, "status": if ok { "completed" } else { "rejected" },
                   "reason": "r", "timestamp": "2026-01-01T00:00:01Z", "node": "northeurope",
                   "region": "northeurope", "products": []})
        )),
        (id(), "[a-z]{1,8}").prop_map(move |(eid, node)| env(
            eid,
            "nodeHeartbeat",
            json!({"node": node, "region": "r", "url": format!("http://127.0.0.1:1/{node}"),
                   "ready": true, "startedAt": "2026-01-01T00:00:00Z",
                   "timestamp": "2026-01-01T00:00:00Z"})
        )),
    ]
}

/// One item of a delivery: valid, valid with one field replaced, or anything at all.
fn item() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => valid_event(),
        3 => (valid_event(), prop::sample::select(vec!["id", "eventType", "dataVersion", "data", "eventTime", "subject"]), small_json())
            .prop_map(|(mut e, field, with)| { e[field] = with; e }),
        2 => (valid_event(), prop::sample::select(vec!["products", "transaction", "status", "node"]), small_json())
            .prop_map(|(mut e, field, with)| { e["data"][field] = with; e }),
        1 => small_json(),
        1 => "[a-z0-9]{0,8}".prop_map(|code| json!({"id": "v", "eventType": VALIDATION, "subject": "",
            "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1", "data": {"validationCode": code}})),
    ]
}

/// A delivery body: mostly arrays of items, sometimes any JSON, sometimes not JSON at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(item(), 0..6).prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => small_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// What the delivery holds that a node must record: command and outcome transactions, and the
/// nodes heard by heartbeat; and whether it carries a validation handshake.
fn expected(body: &[u8]) -> (BTreeSet<String>, BTreeSet<String>, bool) {
    let (mut txs, mut peers, mut handshake) = (BTreeSet::new(), BTreeSet::new(), false);
    if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) {
        for raw in &items {
            handshake |= raw.get("eventType").and_then(Value::as_str) == Some(VALIDATION);
            match parse_event(raw) {
                Ok(SaldoEvent::RecordUpdated(e)) => {
                    txs.insert(e.id);
                }
                Ok(SaldoEvent::TransactionCompleted(e)) => {
                    txs.insert(e.data.transaction);
                }
                Ok(SaldoEvent::Heartbeat(e)) if e.data.node != NODE => {
                    peers.insert(e.data.node);
                }
                _ => {}
            }
        }
    }
    (txs, peers, handshake)
}

/// One node's configuration and clock, the same for every property.
fn node_config() -> (Config, ManualClock) {
    let cfg = Config {
        node: NODE.into(),
        region: NODE.into(),
        public_url: "http://127.0.0.1:1".into(),
        peers: vec![],
        takeover: chrono::Duration::seconds(10),
        liveness: chrono::Duration::seconds(15),
        peers_cache: chrono::Duration::zero(),
        catch_up_every: 5,
    };
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap());
    (cfg, clock)
}

async fn deliver(body: Vec<u8>) -> Result<(), TestCaseError> {
    let db = MemDb::new();
    let store = db.store(NODE);
    let (cfg, clock) = node_config();
    let node = Arc::new(Node::new(cfg, store.clone(), clock, NullBus, NoPeers));
    node.start()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (want_txs, want_peers, handshake) = expected(&body);
    let req = Request::post("/api/eventgrid")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        saldo_worker::http::app(node.clone()).oneshot(req),
    )
    .await
    .map_err(|_| TestCaseError::fail("the webhook hung"))?
    .unwrap();
    let status = resp.status();
    let text = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    let written: BTreeSet<String> = db.ledger(NODE).into_keys().collect();
    let peers: BTreeSet<String> = store
        .peers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.node)
        .collect();
    let shown = String::from_utf8_lossy(&body);
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "{status} for {shown}: {text}"
    );
    if status.is_client_error() {
        prop_assert!(text.contains("message"), "a 4xx without a reason: {text}");
        prop_assert!(
            written.is_empty(),
            "a {status} wrote {written:?} for {shown}"
        );
        prop_assert!(
            peers.is_empty(),
            "a {status} wrote peers {peers:?} for {shown}"
        );
    } else if handshake {
        prop_assert!(
            written.is_empty() && peers.is_empty(),
            "a handshake wrote something"
        );
    } else {
        prop_assert_eq!(&written, &want_txs, "ledger after {} for {}", status, shown);
        prop_assert_eq!(&peers, &want_peers, "peers after {} for {}", status, shown);
    }
    Ok(())
}

/// The reads peers and the API make (`/api/ledger?after=&limit=`, `?recent=`, `/api/ledger/{id}`,
/// `/api/products/{id}`): any query or path is answered 2xx or 4xx with a body, never 5xx.
async fn read(path: String) -> Result<(), TestCaseError> {
    let db = MemDb::new();
    let (cfg, clock) = node_config();
    let node = Arc::new(Node::new(cfg, db.store(NODE), clock, NullBus, NoPeers));
    node.start()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let Ok(req) = Request::get(path.as_str()).body(Body::empty()) else {
        return Ok(()); // not a URI at all: no client could send it
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        saldo_worker::http::app(node).oneshot(req),
    )
    .await
    .map_err(|_| TestCaseError::fail("a read hung"))?
    .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "{status} for {path}"
    );
    prop_assert!(!body.is_empty(), "{status} with an empty body for {path}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_read_is_answered_without_a_server_error(
        path in prop_oneof![
            "/api/ledger\\?(after|limit|recent|x)=[-0-9a-z%.]{0,22}(&(after|limit|recent)=[-0-9]{0,21})?",
            "/api/ledger/[a-zA-Z0-9%._~-]{1,12}",
            "/api/products(/[-+0-9a-z%.]{1,22})?",
        ]
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(read(path))?;
    }

    #[test]
    fn any_delivery_is_recorded_exactly_or_refused_with_nothing_written(body in body()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(deliver(body))?;
    }
}
