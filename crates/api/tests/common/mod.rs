//! Test doubles for the API's neighbours: fake worker nodes (serving the `views.rs` shapes, and
//! able to play a stopped, hung or failing region), a fake topic that records what is published,
//! and the API itself served in-process on a port-0 listener against a real SecantusDB.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use saldo_api::{AppState, Settings};
use saldo_core::views::{LedgerEntryView, NodeStatusView, PeerView, ProductView};
use saldo_publish::{Auth, Publisher};
use saldo_store::test_util::{Secantus, spawn_secantus};
use serde_json::Value;

pub const FLEET_KEY: &str = "test-fleet-key";
pub const TOPIC_KEY: &str = "test-topic-key";

/// Aborts a spawned server when dropped, so each test cleans up after itself.
pub struct Served(tokio::task::JoinHandle<()>);
impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn serve(router: Router) -> (String, Served) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, Served(task))
}

pub fn catalogue() -> Vec<ProductView> {
    vec![
        ProductView {
            id: 1,
            ean: 6_410_000_000_011,
            name: "Orange".into(),
            saldo: 5,
        },
        ProductView {
            id: 2,
            ean: 6_410_000_000_028,
            name: "Apple".into(),
            saldo: 12,
        },
        ProductView {
            id: 3,
            ean: 6_410_000_000_035,
            name: "Banana".into(),
            saldo: 0,
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// What Azure answers for a stopped Function App.
    Stopped,
    /// Accepts the connection and never answers.
    Hang,
    Fail,
}

pub struct NodeInner {
    pub name: String,
    pub mode: Mutex<Mode>,
    pub products: Mutex<Vec<ProductView>>,
    pub ledger: Mutex<HashMap<String, LedgerEntryView>>,
    pub peers: Mutex<Vec<PeerView>>,
    /// Requests that reached the node's functions (not counting the stopped/hung ones).
    pub served: AtomicUsize,
}

pub struct FakeNode {
    pub url: String,
    pub inner: Arc<NodeInner>,
    _served: Served,
}

impl FakeNode {
    pub async fn start(name: &str, mode: Mode) -> Self {
        let inner = Arc::new(NodeInner {
            name: name.into(),
            mode: Mutex::new(mode),
            products: Mutex::new(catalogue()),
            ledger: Mutex::new(HashMap::new()),
            peers: Mutex::new(vec![]),
            served: AtomicUsize::new(0),
        });
        let keyed = Router::new()
            .route("/api/products", get(products))
            .route("/api/products/{id}", get(product))
            .route("/api/ledger/{id}", get(ledger))
            .layer(axum::middleware::from_fn(require_key));
        let router = Router::new()
            .route("/api/status", get(status))
            .merge(keyed)
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                mode_gate,
            ))
            .with_state(inner.clone());
        let (url, served) = serve(router).await;
        FakeNode {
            url,
            inner,
            _served: served,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = mode;
    }

    pub fn served(&self) -> usize {
        self.inner.served.load(Ordering::SeqCst)
    }

    pub fn record(&self, entry: LedgerEntryView) {
        self.inner
            .ledger
            .lock()
            .unwrap()
            .insert(entry.transaction.clone(), entry);
    }
}

async fn mode_gate(State(n): State<Arc<NodeInner>>, req: Request, next: Next) -> Response {
    let mode = *n.mode.lock().unwrap();
    match mode {
        Mode::Healthy => {
            n.served.fetch_add(1, Ordering::SeqCst);
            next.run(req).await
        }
        Mode::Stopped => (StatusCode::FORBIDDEN, "This web app is stopped.").into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
    }
}

async fn require_key(headers: HeaderMap, req: Request, next: Next) -> Response {
    if headers.get("x-functions-key").and_then(|v| v.to_str().ok()) != Some(FLEET_KEY) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(req).await
}

async fn products(State(n): State<Arc<NodeInner>>) -> Json<Vec<ProductView>> {
    Json(n.products.lock().unwrap().clone())
}

async fn product(State(n): State<Arc<NodeInner>>, Path(id): Path<u64>) -> Response {
    match n.products.lock().unwrap().iter().find(|p| p.id == id) {
        Some(p) => Json(p.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn ledger(State(n): State<Arc<NodeInner>>, Path(id): Path<String>) -> Response {
    match n.ledger.lock().unwrap().get(&id) {
        Some(e) => Json(e.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn status(State(n): State<Arc<NodeInner>>) -> Json<NodeStatusView> {
    Json(NodeStatusView {
        node: n.name.clone(),
        region: format!("{}-region", n.name),
        url: String::new(),
        ready: true,
        started_at: Utc::now(),
        counters: BTreeMap::from([("received".to_string(), 7)]),
        peers: n.peers.lock().unwrap().clone(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMode {
    Accept,
    Down,
    Reject,
}

pub struct FakeTopic {
    pub endpoint: String,
    pub events: Arc<Mutex<Vec<Value>>>,
    pub mode: Arc<Mutex<TopicMode>>,
    _served: Served,
}

impl FakeTopic {
    pub async fn start() -> Self {
        let events: Arc<Mutex<Vec<Value>>> = Default::default();
        let mode = Arc::new(Mutex::new(TopicMode::Accept));
        let (ev, md) = (events.clone(), mode.clone());
        let router = Router::new().route(
            "/api/events",
            post(
                move |headers: HeaderMap, Json(batch): Json<Vec<Value>>| async move {
                    if headers.get("aeg-sas-key").and_then(|v| v.to_str().ok()) != Some(TOPIC_KEY) {
                        return StatusCode::UNAUTHORIZED;
                    }
                    match *md.lock().unwrap() {
                        TopicMode::Down => return StatusCode::SERVICE_UNAVAILABLE,
                        TopicMode::Reject => return StatusCode::BAD_REQUEST,
                        TopicMode::Accept => {}
                    }
                    ev.lock().unwrap().extend(batch);
                    StatusCode::OK
                },
            ),
        );
        let (url, served) = serve(router).await;
        FakeTopic {
            endpoint: format!("{url}/api/events"),
            events,
            mode,
            _served: served,
        }
    }

    pub fn published(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: TopicMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

pub fn settings(nodes: &[&FakeNode], mongodb_uri: String) -> Settings {
    Settings {
        nodes: nodes.iter().map(|n| n.url.clone()).collect(),
        fleet_key: Some(FLEET_KEY.into()),
        mongodb_uri,
        database: "saldo_api_test".into(),
        // Short, so a hung node costs little; no test asserts on timing.
        node_timeout_ms: 500,
        node_cooldown_ms: 10_000,
        db_timeout_ms: 1_500,
        reconcile: Default::default(),
    }
}

/// The API served in-process, with everything it talks to.
pub struct Harness {
    pub api: String,
    pub nodes: Vec<FakeNode>,
    pub topic: FakeTopic,
    pub db: Secantus,
    pub http: reqwest::Client,
    _served: Served,
}

impl Harness {
    /// Nodes named n0, n1, ... in the given modes.
    pub async fn start(modes: &[Mode]) -> Self {
        let db = tokio::task::spawn_blocking(spawn_secantus).await.unwrap();
        let mut nodes = Vec::new();
        for (i, m) in modes.iter().enumerate() {
            nodes.push(FakeNode::start(&format!("n{i}"), *m).await);
        }
        let topic = FakeTopic::start().await;
        let settings = settings(&nodes.iter().collect::<Vec<_>>(), db.uri());
        let publisher = Publisher::new(topic.endpoint.clone(), Auth::Key(TOPIC_KEY.into()));
        let state = AppState::new(&settings, publisher).await.unwrap();
        let (api, served) = serve(saldo_api::app(state)).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Harness {
            api,
            nodes,
            topic,
            db,
            http,
            _served: served,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        read(resp).await
    }

    pub async fn order(&self, key: Option<&str>, body: &str) -> (StatusCode, HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url("/api/orders"))
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.body(body.to_string()).send().await.unwrap();
        let headers = resp.headers().clone();
        let (s, v) = read(resp).await;
        (s, headers, v)
    }
}

pub async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Asserts the API's error shape and returns its code.
pub fn error_code(body: &Value) -> String {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    code.to_string()
}

pub fn principal(roles: &[&str]) -> String {
    saldo_api::principal::encode(&serde_json::json!({
        "identityProvider": "github", "userId": "u-1", "userDetails": "tester", "userRoles": roles
    }))
}
