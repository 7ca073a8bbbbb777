//! Property tests of the emulator's two inputs from outside, driven through its real router
//! in-process (`saldo_eventgrid::app` over a real `Topic` with its WAL on disk): publishing
//! (`POST /api/events`, any body, content type, key and query) and the management API
//! (`PUT`/`DELETE /subscriptions/{name}`, any name and body). Every answer is a success or a
//! 4xx with a reason, never a 5xx, a panic or a hang; a published batch answered 200 was
//! accepted whole (the `accepted` counter moves by its size) and a refused one not at all; a
//! subscription answered 2xx exists afterwards, and a refused PUT changed no subscription.
//! Cases: `PROPTEST_CASES` (default 256 per property).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use proptest::prelude::*;
use saldo_eventgrid::{Config, Topic};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "dGVzdC1rZXktZm9yLXRoZS1lbXVsYXRvci0xMjM0NTY=";

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

struct World {
    rt: tokio::runtime::Runtime,
    topic: Arc<Topic>,
    app: Router,
    /// A webhook that passes the validation handshake and answers 200 to every delivery.
    receiver: String,
    _dir: tempfile::TempDir,
}

impl World {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            time_scale: 1000.0,
            ..Config::new(KEY, dir.path().join("data"), dir.path().join("dl"))
        };
        let (topic, receiver) = rt.block_on(async {
            let topic = Topic::open(config).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            let hook = Router::new().fallback(|body: axum::body::Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v[0]["data"]["validationCode"].as_str() {
                    Some(code) => axum::Json(json!({"validationResponse": code})).into_response(),
                    None => StatusCode::OK.into_response(),
                }
            });
            tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
            (topic, url)
        });
        let app = saldo_eventgrid::app(topic.clone());
        World {
            rt,
            topic,
            app,
            receiver,
            _dir: dir,
        }
    }

    fn send(&self, req: Request<Body>) -> Result<(StatusCode, Value), TestCaseError> {
        self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(30), self.app.clone().oneshot(req))
                .await
                .map_err(|_| TestCaseError::fail("the emulator hung"))?
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        })
    }

    fn accepted(&self) -> u64 {
        self.topic.metrics()["accepted"].as_u64().unwrap()
    }

    fn names(&self) -> BTreeSet<String> {
        let (status, v) = self
            .send(
                Request::get("/subscriptions")
                    .header("aeg-sas-key", KEY)
                    .body(Body::empty())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        let list = v["value"]
            .as_array()
            .or(v.as_array())
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect()
    }
}

fn reason(status: StatusCode, body: &Value) -> Result<(), TestCaseError> {
    prop_assert!(status.is_client_error(), "{status}: {body}");
    prop_assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a {status} without a reason: {body}"
    );
    Ok(())
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
        Just(json!("2026-11-23T21:00:00Z")),
        Just(json!("WebHook")),
    ];
    leaf.prop_recursive(2, 10, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    ("[a-zA-Z0-9-]{1,20}", "[a-zA-Z]{1,12}", "[a-z][a-z/]{0,19}", any_json()).prop_map(|(id, ty, subject, data)| {
        json!({"id": id, "eventType": ty, "subject": subject, "eventTime": "2026-11-23T21:00:00Z",
               "data": data, "dataVersion": "1.0"})
    })
}

/// A batch: valid, one event with a field replaced or removed, or anything at all.
fn batch() -> impl Strategy<Value = (Vec<u8>, Option<usize>)> {
    let field = prop::sample::select(vec![
        "id",
        "eventType",
        "subject",
        "eventTime",
        "data",
        "dataVersion",
        "metadataVersion",
        "topic",
    ]);
    prop_oneof![
        5 => prop::collection::vec(event(), 1..5).prop_map(|b| (serde_json::to_vec(&b).unwrap(), Some(b.len()))),
        3 => (prop::collection::vec(event(), 1..4), any::<prop::sample::Index>(), field, prop::option::of(any_json()))
            .prop_map(|(mut b, i, f, with)| {
                let at = i.index(b.len());
                let e = &mut b[at];
                match with {
                    Some(v) => e[f] = v,
                    None => drop(e.as_object_mut().unwrap().remove(f)),
                }
                (serde_json::to_vec(&b).unwrap(), None)
            }),
        1 => any_json().prop_map(|v| (serde_json::to_vec(&v).unwrap(), None)),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| (b, None)),
    ]
}

#[test]
fn any_publication_is_accepted_whole_or_refused_with_nothing_accepted() {
    let w = World::start();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &(
                batch(),
                prop_oneof![6 => Just(Some(KEY.to_string())), 1 => Just(None), 1 => "[a-zA-Z0-9=]{0,12}".prop_map(Some)],
                prop_oneof![6 => Just("?api-version=2018-01-01"), 1 => Just(""), 1 => Just("?api-version=")],
                prop_oneof![6 => Just("application/json"), 1 => Just("text/plain"), 1 => Just("application/cloudevents-batch+json")],
            ),
            |((body, valid_len), key, query, content_type)| {
                let before = w.accepted();
                let mut req = Request::post(format!("/api/events{query}")).header("content-type", content_type);
                if let Some(k) = &key {
                    req = req.header("aeg-sas-key", k.as_str());
                }
                let (status, answer) = w.send(req.body(Body::from(body.clone())).unwrap())?;
                let after = w.accepted();
                let shown = String::from_utf8_lossy(&body);
                let clean = key.as_deref() == Some(KEY) && query.len() > 13 && content_type == "application/json";
                match (clean, valid_len) {
                    (true, Some(n)) => {
                        prop_assert_eq!(status, StatusCode::OK, "{}: {}", shown, answer);
                        prop_assert_eq!(after - before, n as u64);
                    }
                    _ if status == StatusCode::OK => {
                        let n = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.as_array().map(Vec::len));
                        prop_assert_eq!(Some((after - before) as usize), n, "{}", shown);
                    }
                    _ => {
                        reason(status, &answer)?;
                        prop_assert_eq!(after, before, "a {} accepted events: {}", status, shown);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn any_management_call_creates_what_it_answers_or_nothing() {
    let w = World::start();
    let receiver = w.receiver.clone();
    let name = prop_oneof![
        6 => "[a-z][a-z0-9-]{2,5}",
        1 => "[a-z]{0,2}",
        1 => "[a-z_.~ ]{3,8}",
        1 => Just("x".repeat(65)),
    ];
    let endpoint = prop_oneof![
        6 => Just(receiver),
        1 => Just("http://127.0.0.1:1/refused".to_string()),
        1 => "[a-z:/.]{0,12}",
    ];
    let body = (endpoint, any_json(), prop::sample::select(vec!["", "filter", "retryPolicy", "destination", "eventDeliverySchema", "deadLetterDestination"]), any::<bool>())
        .prop_map(|(url, with, field, break_it)| {
            let mut props = json!({
                "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": url}},
                "filter": {"includedEventTypes": ["recordUpdated"], "subjectBeginsWith": "warehouse/"},
                "retryPolicy": {"maxDeliveryAttempts": 5, "eventTimeToLiveInMinutes": 30},
            });
            if break_it && !field.is_empty() {
                props[field] = with;
            }
            serde_json::to_vec(&json!({"properties": props})).unwrap()
        });
    let call = prop_oneof![
        8 => (name.clone(), body).prop_map(|(n, b)| ("PUT", n, b)),
        1 => (name.clone(), prop::collection::vec(any::<u8>(), 0..30)).prop_map(|(n, b)| ("PUT", n, b)),
        1 => name.prop_map(|n| ("DELETE", n, vec![])),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&call, |(method, name, body)| {
            let before = w.names();
            let uri = format!("/subscriptions/{}", urlencoding::encode(&name));
            let req = Request::builder()
                .method(method)
                .uri(uri.as_str())
                .header("aeg-sas-key", KEY)
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let (status, answer) = w.send(req)?;
            let after = w.names();
            let shown = String::from_utf8_lossy(&body);
            match (method, status.is_success()) {
                ("PUT", true) => {
                    prop_assert!(
                        after.contains(&name),
                        "{} answered {} but is not listed",
                        name,
                        status
                    );
                    let mut want = before.clone();
                    want.insert(name.clone());
                    prop_assert_eq!(after, want);
                }
                ("DELETE", true) => {
                    let mut want = before.clone();
                    want.remove(&name);
                    prop_assert_eq!(after, want);
                }
                _ => {
                    reason(status, &answer).map_err(|e| {
                        TestCaseError::fail(format!("{e} for {method} {name:?} {shown}"))
                    })?;
                    prop_assert_eq!(after, before, "a {} changed the subscriptions", status);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        !w.names().is_empty(),
        "no PUT ever succeeded: the success branch went untested"
    );
}
