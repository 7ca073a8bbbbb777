//! Property tests of everything the API reads from outside — the bodies of `POST /api/orders`
//! and `PUT /api/products/{id}`, the headers `Idempotency-Key` and `x-ms-client-principal`, path
//! ids and query strings — driven through the real router in-process (`saldo_api::app`) against
//! a real SecantusDB, a fake worker node and a fake topic (see `common`). For any input the
//! answer is either the success an independent oracle predicts, having written exactly one
//! record and published exactly the command asked for, or a 4xx with a reason that wrote and
//! published nothing; never a 5xx, a panic or a hang. Cases: `PROPTEST_CASES` (default 256).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use common::*;
use proptest::prelude::*;
use saldo_api::AppState;
use saldo_api::commands::transaction_id;
use saldo_api::idempotency::IdempotencyStore;
use saldo_core::events::{MAX_LINES, MAX_PRODUCT_NUMBER, MAX_QUANTITY};
use saldo_publish::{Auth, Publisher};
use saldo_store::test_util::{Secantus, spawn_secantus};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Runner-driven properties have no source file to persist failures next to: the failing input
/// is printed instead.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn cases() -> u32 {
    saldo_testkit::proptest_cases(256)
}

/// One API over real neighbours, shared by every case of a property.
struct World {
    rt: tokio::runtime::Runtime,
    app: Router,
    topic: FakeTopic,
    records: IdempotencyStore,
    _node: FakeNode,
    _db: Secantus,
}

impl World {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = spawn_secantus();
        let (app, topic, records, node) = rt.block_on(async {
            let node = FakeNode::start("n0", Mode::Healthy).await;
            let topic = FakeTopic::start().await;
            let settings = settings(&[&node], db.uri());
            let publisher = Publisher::new(topic.endpoint.clone(), Auth::Key(TOPIC_KEY.into()));
            let state = AppState::new(&settings, publisher).await.unwrap();
            let records =
                IdempotencyStore::connect(&db.uri(), &settings.database, Duration::from_secs(5))
                    .await
                    .unwrap();
            (saldo_api::app(state), topic, records, node)
        });
        World {
            rt,
            app,
            topic,
            records,
            _node: node,
            _db: db,
        }
    }

    /// Sends one request; (status, body text, events published by it).
    fn send(&self, req: Request<Body>) -> Result<(StatusCode, Value, Vec<Value>), TestCaseError> {
        let before = self.topic.published().len();
        let (status, body) = self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(30), self.app.clone().oneshot(req))
                .await
                .map_err(|_| TestCaseError::fail("the API hung"))?
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            Ok::<_, TestCaseError>((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        })?;
        Ok((status, body, self.topic.published()[before..].to_vec()))
    }

    fn record_exists(&self, tx: &str) -> bool {
        self.rt.block_on(self.records.get(tx)).unwrap().is_some()
    }
}

/// A fresh key per case (so every accepted case is a first attempt), or a broken one.
static CASE: AtomicU64 = AtomicU64::new(0);

/// Keys: absent, empty, or made unique per case by a counter in front of the generated part
/// (`Raw`) or padded with it to a length around the bound (`Long`).
#[derive(Debug, Clone)]
enum Key {
    Absent,
    Empty,
    Fresh,
    Raw(Vec<u8>),
    Long(usize),
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        1 => Just(Key::Absent),
        1 => Just(Key::Empty),
        6 => Just(Key::Fresh),
        5 => prop::collection::vec(prop_oneof![8 => 33u8..127, 1 => Just(b' '), 1 => Just(0x80u8), 1 => Just(b'\t')], 0..8).prop_map(Key::Raw),
        1 => (195usize..205).prop_map(Key::Long),
    ]
}

#[derive(Debug, Clone)]
enum Who {
    Nobody,
    Roles(Vec<&'static str>),
    Raw(String),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => Just(Who::Nobody),
        3 => prop::collection::vec(prop::sample::select(vec!["anonymous", "authenticated", "warehouse", "WAREHOUSE", "admin"]), 0..3).prop_map(Who::Roles),
        1 => "[A-Za-z0-9+/=%! ]{0,16}".prop_map(Who::Raw),
        1 => Just(Who::Raw(String::new())),
    ]
}

impl Who {
    fn header(&self) -> Option<String> {
        match self {
            Who::Nobody => None,
            Who::Roles(r) => Some(principal(r)),
            Who::Raw(s) => Some(s.clone()),
        }
    }
    /// Independent of `principal.rs`: can the header be read, and does it hold role warehouse?
    fn readable(&self) -> bool {
        match self {
            Who::Nobody | Who::Roles(_) => true,
            Who::Raw(s) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(s.trim().trim_end_matches('='))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .is_some_and(|v| v.is_object())
            }
        }
    }
    fn warehouse(&self) -> bool {
        matches!(self, Who::Roles(r) if r.iter().any(|r| r.eq_ignore_ascii_case("warehouse")))
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1.0)),
        Just(json!(2.5)),
        Just(json!(MAX_PRODUCT_NUMBER + 1)),
        "[a-z]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 10, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("lines".to_string()),
                    Just("id".to_string()),
                    Just("quantity".to_string()),
                    Just("saldo".to_string()),
                    "[a-z]{1,5}".prop_map(|s| s)
                ],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Order bodies: well-formed orders on and around every bound, orders with one field replaced,
/// any JSON, and bytes.
fn order_body() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![6 => 1u64..=3, 1 => 4u64..=9, 1 => Just(MAX_PRODUCT_NUMBER), 1 => Just(MAX_PRODUCT_NUMBER + 1)];
    let quantity = prop_oneof![6 => 1i64..=5, 1 => Just(0i64), 1 => Just(1000), 1 => Just(1001), 1 => Just(-1)];
    let line = (id, quantity).prop_map(|(id, q)| json!({"id": id, "quantity": q}));
    let order = prop_oneof![
        8 => prop::collection::vec(line, 0..5),
        1 => (1usize..3).prop_map(|extra| (0..(MAX_LINES + extra - 1) as u64).map(|i| json!({"id": i, "quantity": 1})).collect()),
    ]
    .prop_map(|lines| json!({"lines": lines}));
    // Orders a shopper would send: distinct catalogue products, quantities in range.
    let clean = prop::collection::btree_map(1u64..=3, 1i64..=1000, 1..=3).prop_map(|m| {
        let lines: Vec<Value> = m
            .into_iter()
            .map(|(id, q)| json!({"id": id, "quantity": q}))
            .collect();
        serde_json::to_vec(&json!({"lines": lines})).unwrap()
    });
    prop_oneof![
        6 => clean,
        6 => order.clone().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => (order, prop::sample::select(vec!["/lines", "/lines/0", "/lines/0/id", "/lines/0/quantity", "/extra"]), any_json()).prop_map(|(mut o, at, with)| {
            match at {
                "/extra" => o["extra"] = with,
                _ => if let Some(slot) = o.pointer_mut(at) { *slot = with },
            }
            serde_json::to_vec(&o).unwrap()
        }),
        // A clean order with its objects written as positional arrays (`[[[1, 2]]]`).
        1 => (prop::collection::btree_map(1u64..=3, 1i64..=5, 1..=3), any::<bool>()).prop_map(|(m, outer)| {
            let lines: Vec<Value> = m.into_iter().map(|(id, q)| json!([id, q])).collect();
            let body = if outer { json!([lines]) } else { json!({"lines": lines}) };
            serde_json::to_vec(&body).unwrap()
        }),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
}

/// The oracle for an order body, written apart from `commands.rs`: the lines it must publish
/// (id, change), or None when it must be refused.
fn order_oracle(body: &[u8]) -> Option<Vec<(u64, i64)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let lines = obj.get("lines")?.as_array()?;
    if lines.is_empty() || lines.len() > MAX_LINES {
        return None;
    }
    let mut out = vec![];
    let mut seen = BTreeSet::new();
    for l in lines {
        let l = l.as_object()?;
        if l.len() != 2 {
            return None;
        }
        let whole = |v: &Value| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i128);
        let id = whole(l.get("id")?)?;
        let q = whole(l.get("quantity")?)?;
        if !(0..=MAX_PRODUCT_NUMBER as i128).contains(&id) || !(1..=1000).contains(&q) {
            return None;
        }
        // Only products 1..=3 are in the fake node's catalogue, and each at most once.
        if !(1..=3).contains(&id) || !seen.insert(id) {
            return None;
        }
        out.push((id as u64, -(q as i64)));
    }
    Some(out)
}

fn with_key(
    req: axum::http::request::Builder,
    key: &Key,
) -> (axum::http::request::Builder, Option<String>) {
    let unique = format!(
        "p{}-{}-",
        std::process::id(),
        CASE.fetch_add(1, Ordering::SeqCst)
    );
    let bytes = match key {
        Key::Absent => return (req, None),
        Key::Empty => vec![],
        Key::Fresh => unique.into_bytes(),
        Key::Raw(raw) => [unique.as_bytes(), raw].concat(),
        Key::Long(n) => format!("{unique:k<n$}").into_bytes(),
    };
    match HeaderValue::from_bytes(&bytes) {
        Ok(v) => {
            let k = String::from_utf8(bytes).ok();
            (req.header("idempotency-key", v), k)
        }
        Err(_) => (req, None),
    }
}

fn key_valid(k: &str) -> bool {
    !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic())
}

fn published_lines(events: &[Value]) -> Vec<(u64, Value)> {
    events[0]["data"]["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p.get("change").or(p.get("saldo")).cloned().unwrap(),
            )
        })
        .collect()
}

fn check_refusal(
    w: &World,
    status: StatusCode,
    body: &Value,
    published: &[Value],
    key: Option<&str>,
) -> Result<(), TestCaseError> {
    prop_assert!(status.is_client_error(), "{status}: {body}");
    prop_assert!(
        body["error"]["code"].is_string()
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
        "a refusal without a reason: {body}"
    );
    prop_assert!(published.is_empty(), "a {status} published {published:?}");
    if let Some(k) = key {
        prop_assert!(
            !w.record_exists(&transaction_id(k)),
            "a {status} left a record for {k:?}"
        );
    }
    Ok(())
}

#[test]
fn any_order_is_accepted_exactly_or_refused_with_nothing_written() {
    let w = World::start();
    let accepted = AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&(key(), who(), order_body()), |(key, who, body)| {
            let req = Request::post("/api/orders").header("content-type", "application/json");
            let (mut req, k) = with_key(req, &key);
            if let Some(p) = who.header() {
                match HeaderValue::from_str(&p) {
                    Ok(v) => req = req.header("x-ms-client-principal", v),
                    Err(_) => return Ok(()),
                }
            }
            let (status, answer, published) =
                w.send(req.body(Body::from(body.clone())).unwrap())?;
            let should = match (&k, who.readable(), order_oracle(&body)) {
                (Some(k), true, Some(lines)) if key_valid(k) => Some(lines),
                _ => None,
            };
            let shown = String::from_utf8_lossy(&body);
            match should {
                Some(lines) => {
                    let k = k.unwrap();
                    prop_assert_eq!(
                        status,
                        StatusCode::ACCEPTED,
                        "{} {:?}: {}",
                        shown,
                        who,
                        answer
                    );
                    let tx = transaction_id(&k);
                    prop_assert_eq!(answer["transaction"].as_str(), Some(tx.as_str()));
                    prop_assert_eq!(published.len(), 1, "one command per order");
                    prop_assert_eq!(published[0]["id"].as_str(), Some(tx.as_str()));
                    let want: Vec<(u64, Value)> =
                        lines.iter().map(|(i, c)| (*i, json!(c))).collect();
                    prop_assert_eq!(published_lines(&published), want);
                    prop_assert!(w.record_exists(&tx));
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                None => check_refusal(&w, status, &answer, &published, k.as_deref())?,
            }
            Ok(())
        })
        .unwrap();
    // A property whose success branch is never taken proves nothing about successes.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= u64::from(cases()) / 20,
        "only {accepted} accepted"
    );
    eprintln!("{accepted} of {} cases accepted", cases());
}

#[test]
fn any_stock_update_is_accepted_exactly_or_refused_with_nothing_written() {
    let w = World::start();
    let path_id = prop_oneof![
        6 => (1u64..=3).prop_map(|i| i.to_string()),
        2 => (0u64..9).prop_map(|i| i.to_string()),
        1 => Just((MAX_PRODUCT_NUMBER + 1).to_string()),
        1 => "[-+a-z0-9.%]{0,6}",
    ];
    let saldo = prop_oneof![
        5 => (0i64..100).prop_map(|s| json!({"saldo": s})),
        1 => Just(json!({"saldo": MAX_QUANTITY})),
        1 => Just(json!({"saldo": MAX_QUANTITY + 1})),
        1 => Just(json!({"saldo": -1})),
        1 => Just(json!({"saldo": 3.0})),
        // The same update as a positional array, which serde would read as the struct.
        1 => (0i64..100).prop_map(|s| json!([s])),
        1 => any_json(),
    ]
    .prop_map(|v| serde_json::to_vec(&v).unwrap());
    let accepted = AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &(
                path_id,
                key(),
                prop_oneof![2 => Just(Who::Roles(vec!["authenticated", "warehouse"])), 3 => who()],
                saldo,
            ),
            |(id, key, who, body)| {
                let uri = format!("/api/products/{id}");
                let Ok(req) = Request::put(uri.as_str())
                    .header("content-type", "application/json")
                    .body(())
                else {
                    return Ok(());
                };
                let req =
                    Request::put(req.uri().clone()).header("content-type", "application/json");
                let (mut req, k) = with_key(req, &key);
                if let Some(p) = who.header() {
                    match HeaderValue::from_str(&p) {
                        Ok(v) => req = req.header("x-ms-client-principal", v),
                        Err(_) => return Ok(()),
                    }
                }
                let (status, answer, published) =
                    w.send(req.body(Body::from(body.clone())).unwrap())?;
                let saldo = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                    let o = v.as_object()?;
                    let s = o.get("saldo")?.as_f64().filter(|f| f.fract() == 0.0)?;
                    (o.len() == 1 && (0.0..=MAX_QUANTITY as f64).contains(&s)).then_some(s as i64)
                });
                let product = id
                    .parse::<u64>()
                    .ok()
                    .filter(|i| (1..=3).contains(i) && !id.starts_with('+'));
                let key_ok = match &key {
                    Key::Absent => true,
                    _ => k.as_deref().is_some_and(key_valid),
                };
                let should = who.readable()
                    && who.warehouse()
                    && key_ok
                    && product.is_some()
                    && saldo.is_some();
                if should {
                    prop_assert_eq!(
                        status,
                        StatusCode::ACCEPTED,
                        "{} {:?} {:?}: {}",
                        id,
                        who,
                        key,
                        answer
                    );
                    prop_assert_eq!(published.len(), 1);
                    prop_assert_eq!(
                        published_lines(&published),
                        vec![(product.unwrap(), json!(saldo.unwrap()))]
                    );
                    let tx = answer["transaction"].as_str().unwrap();
                    prop_assert!(w.record_exists(tx));
                    accepted.fetch_add(1, Ordering::SeqCst);
                } else {
                    // A refusal for `+1` (Rust reads it as 1) would be fine, and so is accepting it.
                    if status == StatusCode::ACCEPTED && id.starts_with('+') {
                        return Ok(());
                    }
                    let k = if key_ok { k } else { None };
                    check_refusal(&w, status, &answer, &published, k.as_deref())?;
                }
                Ok(())
            },
        )
        .unwrap();
    // A property whose success branch is never taken proves nothing about successes.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= u64::from(cases()) / 20,
        "only {accepted} accepted"
    );
    eprintln!("{accepted} of {} cases accepted", cases());
}

#[test]
fn any_transaction_lookup_is_answered_without_a_server_error() {
    let w = World::start();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &prop_oneof!["\\PC{0,10}", "[a-z]{120,135}", "[ÿé]{60,70}", ".{0,6}"],
            |id| {
                let path = format!("/api/transactions/{}", urlencoding::encode(&id));
                let (status, answer, published) =
                    w.send(Request::get(path.as_str()).body(Body::empty()).unwrap())?;
                let chars = id.chars().count();
                let ok = (1..=128).contains(&chars) && !id.chars().any(char::is_control);
                let want = if ok {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::BAD_REQUEST
                };
                // An empty id is a different route (`/api/transactions/`), not found either way.
                if id.is_empty() {
                    prop_assert!(status.is_client_error(), "{status}");
                } else {
                    prop_assert_eq!(status, want, "{:?}: {}", id, answer);
                }
                prop_assert!(answer["error"]["message"].is_string(), "{answer}");
                prop_assert!(published.is_empty());
                Ok(())
            },
        )
        .unwrap();
}
