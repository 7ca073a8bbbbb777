//! Test harness: the real `saldo-eventgrid` binary on port 0, and real webhook receivers (axum
//! on port 0) whose answers each test scripts.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A base64 key, as Azure's are (SAS tokens are signed with its decoded bytes).
pub const KEY: &str = "dGVzdC1rZXktZm9yLXRoZS1lbXVsYXRvci0xMjM0NTY=";

pub struct Emulator {
    child: saldo_testkit::KillOnDrop,
    pub url: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
}

impl Emulator {
    /// Starts the binary with fresh directories under `dir` and extra `args`.
    pub fn start(dir: &Path, args: &[&str]) -> Emulator {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Self::start_in(dir.to_path_buf(), args)
    }

    fn start_in(dir: PathBuf, args: Vec<String>) -> Emulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_saldo-eventgrid"))
            .args(["--host", "127.0.0.1", "--port", "0", "--key", KEY])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--deadletter-dir")
            .arg(dir.join("deadletter"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start saldo-eventgrid");
        let stdout = child.stdout.take().expect("piped stdout");
        // Guarded from here: a missing listening line kills the process as the test fails.
        let child = saldo_testkit::KillOnDrop(child);
        let url = saldo_testkit::first_line_url(stdout, Duration::from_secs(20));
        Emulator {
            child,
            url,
            dir,
            args,
        }
    }

    /// Kills the process (SIGKILL: no chance to flush anything) and starts it again on the
    /// same directories.
    pub fn restart(mut self) -> Emulator {
        self.child.0.kill().expect("kill");
        self.child.0.wait().expect("wait");
        let (dir, args) = (self.dir.clone(), self.args.clone());
        Self::start_in(dir, args)
    }

    pub fn endpoint(&self) -> String {
        format!("{}/api/events", self.url)
    }
    pub fn deadletter_dir(&self) -> PathBuf {
        self.dir.join("deadletter")
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub at: Instant,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Got {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    pub fn events(&self) -> Vec<Value> {
        match &self.body {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        }
    }
}

/// How a receiver answers the validation handshake.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Handshake {
    /// 200 with `{"validationResponse": code}`.
    Echo,
    /// 200 without a body, then a GET of the validationUrl.
    Manual,
    /// This status and nothing else.
    Status(u16),
}

#[derive(Default)]
struct Inner {
    got: Vec<Got>,
    script: VecDeque<(u16, Duration)>,
    default_status: u16,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    handshake: Arc<Mutex<Handshake>>,
    /// While true, notifications are held (not answered) until it turns false again.
    paused: Arc<tokio::sync::watch::Sender<bool>>,
    pub url: String,
}

async fn handle(State(r): State<Receiver>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    if parts.method == Method::OPTIONS {
        let origin = parts.headers.get("WebHook-Request-Origin").cloned();
        let mut resp = StatusCode::OK.into_response();
        if let Some(o) = origin {
            resp.headers_mut().insert("WebHook-Allowed-Origin", o);
        }
        return resp;
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if parts
        .headers
        .get("aeg-event-type")
        .is_some_and(|v| v == "SubscriptionValidation")
    {
        let data = body[0]["data"].clone();
        let mode = *r.handshake.lock().unwrap();
        return match mode {
            Handshake::Echo => {
                axum::Json(json!({"validationResponse": data["validationCode"]})).into_response()
            }
            Handshake::Manual => {
                let url = data["validationUrl"].as_str().unwrap().to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    reqwest::get(url)
                        .await
                        .expect("GET validationUrl")
                        .error_for_status()
                        .expect("validationUrl accepted");
                });
                StatusCode::OK.into_response()
            }
            Handshake::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        };
    }
    let mut gate = r.paused.subscribe();
    let _ = gate.wait_for(|p| !*p).await;
    let (status, delay) = {
        let mut inner = r.inner.lock().unwrap();
        inner.got.push(Got {
            at: Instant::now(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body,
        });
        let d = inner.default_status;
        inner.script.pop_front().unwrap_or((d, Duration::ZERO))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    StatusCode::from_u16(status).unwrap().into_response()
}

impl Receiver {
    /// A webhook answering `default_status` to every notification (after any scripted answers).
    pub async fn start(default_status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/eventgrid", listener.local_addr().unwrap());
        let r = Receiver {
            inner: Arc::new(Mutex::new(Inner {
                default_status,
                ..Default::default()
            })),
            handshake: Arc::new(Mutex::new(Handshake::Echo)),
            paused: Arc::new(tokio::sync::watch::channel(false).0),
            url,
        };
        let app = Router::new().fallback(handle).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn set_handshake(&self, h: Handshake) {
        *self.handshake.lock().unwrap() = h;
    }
    /// The next notifications are answered with these statuses (after these delays).
    pub fn script(&self, answers: &[(u16, Duration)]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }
    /// Holds every notification from now on (a stopped or hung subscriber) until [`resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
    pub fn set_default(&self, status: u16) {
        self.inner.lock().unwrap().default_status = status;
    }
    pub fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().got.clone()
    }
    pub fn event_count(&self) -> usize {
        self.got().iter().map(|g| g.events().len()).sum()
    }
}

/// Polls `cond` until it holds; panics with `what` after `secs` seconds
/// ([`saldo_testkit::until`]).
pub async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    saldo_testkit::until(Duration::from_secs(secs), what, async || {
        cond().then_some(())
    })
    .await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn event(id: &str, event_type: &str, subject: &str) -> Value {
    json!({"id": id, "eventType": event_type, "subject": subject, "eventTime": "2026-11-23T21:00:00Z", "data": {"n": id}, "dataVersion": "1.0"})
}

/// Publishes `body` with the topic key; returns the status and the body.
pub async fn publish(emu: &Emulator, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}?api-version=2018-01-01", emu.endpoint()))
        .header("aeg-sas-key", KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

pub fn webhook(url: &str) -> Value {
    json!({"endpointType": "WebHook", "properties": {"endpointUrl": url}})
}

pub fn dead_letter(container: &str) -> Value {
    json!({"endpointType": "StorageBlob", "properties": {"resourceId": "/subscriptions/0/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/local", "blobContainerName": container}})
}

/// `PUT /subscriptions/{name}`; returns the status and the body.
pub async fn put_subscription(emu: &Emulator, name: &str, properties: Value) -> (u16, Value) {
    let r = client()
        .put(format!("{}/subscriptions/{name}", emu.url))
        .header("aeg-sas-key", KEY)
        .json(&json!({ "properties": properties }))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

pub async fn get_json(emu: &Emulator, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", emu.url))
        .header("aeg-sas-key", KEY)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

pub async fn metrics(emu: &Emulator, sub: &str) -> Value {
    let (s, v) = get_json(emu, &format!("/subscriptions/{sub}/metrics")).await;
    assert_eq!(s, 200, "metrics of {sub}: {v}");
    v
}

/// Waits until a subscription's counter reaches `n`.
pub async fn wait_metric(emu: &Emulator, sub: &str, counter: &str, n: u64, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = metrics(emu, sub).await;
        if m[counter].as_u64().unwrap_or(0) >= n {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {sub}.{counter} >= {n}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every dead-letter blob under `root`, with its path.
pub fn dead_letters(root: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                out.push((p, v));
            }
        }
    }
    out
}
