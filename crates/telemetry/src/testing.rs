//! A local Application Insights ingestion endpoint for tests (feature `test-util`).
//!
//! ```no_run
//! # fn main() {
//! use saldo_telemetry::testing::FakeIngestion;
//! let ingestion = FakeIngestion::start();
//! // Give every app APPLICATIONINSIGHTS_CONNECTION_STRING=<ingestion.connection_string()> ...
//! let requests = ingestion.wait_for(std::time::Duration::from_secs(30), |all| {
//!     all.iter().any(|e| e["name"] == "Microsoft.ApplicationInsights.Request")
//! });
//! # }
//! ```
//!
//! It accepts what the exporter sends: `POST /v2/track` (and `/v2.1/track`, what the official
//! SDKs use), gzip-compressed or plain, a JSON array of envelopes or one envelope per line, and
//! answers like the real endpoint (`200` with `itemsReceived`/`itemsAccepted`). It runs on its own
//! thread with its own Tokio runtime, so it keeps answering while the test's own thread or runtime
//! is blocked (for instance while a `Telemetry` guard flushes on drop).

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on stored envelopes (a test that produces more has a runaway loop).
pub const MAX_ENVELOPES: usize = 100_000;
/// Upper bound on one decompressed upload.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The receiver. Stops when dropped.
pub struct FakeIngestion {
    url: String,
    envelopes: Arc<Mutex<Vec<Value>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeIngestion {
    /// Binds `127.0.0.1:0` and starts serving; panics if it cannot (a test set-up failure).
    pub fn start() -> Self {
        let envelopes = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let store = envelopes.clone();
        let thread = std::thread::Builder::new()
            .name("fake-ingestion".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake ingestion runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("fake ingestion binds a port");
                    addr_tx
                        .send(listener.local_addr().expect("local addr"))
                        .expect("addr sent");
                    let track = move |headers: HeaderMap, body: Bytes| {
                        let store = store.clone();
                        async move { track(&store, &headers, &body) }
                    };
                    let app = Router::new()
                        .route("/v2/track", post(track.clone()))
                        .route("/v2.1/track", post(track));
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .expect("fake ingestion serves");
                });
            })
            .expect("fake ingestion thread");
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake ingestion started");
        FakeIngestion {
            url: format!("http://{addr}/"),
            envelopes,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection string whose ingestion endpoint is this receiver.
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={}",
            self.url
        )
    }

    /// Every envelope received so far, in arrival order.
    pub fn envelopes(&self) -> Vec<Value> {
        self.envelopes.lock().expect("envelopes lock").clone()
    }

    /// Polls until `done(all envelopes)` holds and returns them; panics after `timeout`,
    /// listing what did arrive (never returns quietly: the caller's assertions would then run
    /// on a partial set and fail, or pass, for the wrong reason).
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.envelopes();
            if done(&all) {
                return all;
            }
            if Instant::now() >= deadline {
                let kinds: Vec<&str> = all.iter().filter_map(|e| e["name"].as_str()).collect();
                panic!(
                    "timed out after {timeout:?} waiting for the expected envelopes; got {}: {kinds:?}",
                    all.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeIngestion {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn track(store: &Mutex<Vec<Value>>, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
    match parse(headers, body) {
        Ok(items) => {
            let n = items.len();
            let mut all = store.lock().expect("envelopes lock");
            if all.len() + n > MAX_ENVELOPES {
                return (StatusCode::PAYLOAD_TOO_LARGE, "too many envelopes".into());
            }
            all.extend(items);
            let answer = json!({"itemsReceived": n, "itemsAccepted": n, "errors": []});
            (StatusCode::OK, answer.to_string())
        }
        Err(e) => (StatusCode::BAD_REQUEST, e),
    }
}

/// Gzip (by `Content-Encoding` or by its magic bytes) or plain; a JSON array, one object, or
/// newline-delimited objects.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, String> {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
        || body.starts_with(&[0x1f, 0x8b]);
    let text = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip: {e}"))?;
        if out.len() > MAX_BODY_BYTES {
            return Err("body too large".into());
        }
        out
    } else {
        body.to_vec()
    };
    let text = std::str::from_utf8(&text).map_err(|e| format!("not UTF-8: {e}"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(v @ Value::Object(_)) => Ok(vec![v]),
        Ok(other) => Err(format!("expected envelopes, got {other}")),
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("bad JSON line: {e}")))
            .collect(),
    }
}

/// Envelopes of one telemetry type: `"Request"`, `"RemoteDependency"`, `"Message"`,
/// `"Exception"`, `"Metric"`, `"Event"`.
pub fn of_type<'a>(envelopes: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let name = format!("Microsoft.ApplicationInsights.{kind}");
    envelopes
        .iter()
        .filter(|e| e["name"] == name.as_str())
        .collect()
}

/// A tag (`ai.operation.id`, `ai.cloud.role`, ...) of an envelope.
pub fn tag<'a>(envelope: &'a Value, key: &str) -> Option<&'a str> {
    envelope["tags"][key].as_str()
}

/// A custom property (`transaction`, `node`, ...) of an envelope's data.
pub fn property<'a>(envelope: &'a Value, key: &str) -> Option<&'a str> {
    envelope["data"]["baseData"]["properties"][key].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_gzip_arrays_and_plain_lines() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"[{"name":"a"},{"name":"b"}]"#).unwrap();
        let body = gz.finish().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", "gzip".parse().unwrap());
        assert_eq!(parse(&headers, &body).unwrap().len(), 2);
        let lines = b"{\"name\":\"a\"}\n{\"name\":\"b\"}\n{\"name\":\"c\"}\n";
        assert_eq!(parse(&HeaderMap::new(), lines).unwrap().len(), 3);
        assert!(parse(&HeaderMap::new(), b"42").is_err());
        assert!(parse(&headers, b"\x1f\x8bnot gzip").is_err());
    }

    #[test]
    fn receives_uploads_over_http() {
        let ingestion = FakeIngestion::start();
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(format!("{}v2.1/track", ingestion.url()))
            .body(r#"[{"name":"Microsoft.ApplicationInsights.Message"}]"#)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().unwrap();
        assert_eq!(body["itemsAccepted"], 1);
        let resp = client
            .post(format!("{}v2/track", ingestion.url()))
            .body("{")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(of_type(&ingestion.envelopes(), "Message").len(), 1);
    }
}
