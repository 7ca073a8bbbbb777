//! Throughput of the real `saldo-eventgrid` binary with three webhook subscribers.
//!
//! `cargo bench -p saldo-eventgrid` prints accepted events/s (publishing, fsync'd before each
//! 200) and delivered events/s (all three subscribers have every event), for one-event requests
//! (how Saldo's API publishes) and for 50-event requests, each with batching off and on.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

const KEY: &str = "YmVuY2gta2V5LWZvci10aGUtZW11bGF0b3ItMDAwMDA=";
/// Concurrent publishers (issue 13: >= 5,000 single-event requests/s with 16 of them).
const PUBLISHERS: usize = 16;

async fn receiver() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    async fn handle(
        State(c): State<Arc<AtomicU64>>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let v: Vec<serde::de::IgnoredAny> = serde_json::from_slice(&body).unwrap_or_default();
        if headers
            .get("aeg-event-type")
            .is_some_and(|v| v == "SubscriptionValidation")
        {
            let v: Value = serde_json::from_slice(&body).unwrap();
            return axum::Json(json!({"validationResponse": v[0]["data"]["validationCode"]}))
                .into_response();
        }
        c.fetch_add(v.len() as u64, Ordering::Relaxed);
        StatusCode::OK.into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/eventgrid", listener.local_addr().unwrap());
    let app = Router::new().fallback(handle).with_state(count.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

/// CPU time (user + system) the process has used so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

async fn scenario(total: u64, per_request: u64, max_batch: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_saldo-eventgrid"))
        .args(["--host", "127.0.0.1", "--port", "0", "--key", KEY])
        // The capacity is measured, so Azure's publish rate limit (5,000 events/s) is off.
        .args([
            "--max-events-per-second",
            "0",
            "--max-bytes-per-second",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--deadletter-dir")
        .arg(dir.path().join("dl"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start saldo-eventgrid");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let _child = saldo_testkit::KillOnDrop(child);
    let url = saldo_testkit::first_line_url(stdout, std::time::Duration::from_secs(20));
    let http = reqwest::Client::new();
    let mut counters = Vec::new();
    for i in 0..3 {
        let (rx, count) = receiver().await;
        let props = json!({"properties": {"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": rx, "maxEventsPerBatch": max_batch}}}});
        let r = http
            .put(format!("{url}/subscriptions/region-{i}"))
            .header("aeg-sas-key", KEY)
            .json(&props)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        counters.push(count);
    }
    let endpoint = format!("{url}/api/events?api-version=2018-01-01");
    let requests = total / per_request;
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let (http, endpoint, next) = (http.clone(), endpoint.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests {
                    break;
                }
                let events: Vec<Value> = (0..per_request)
                    .map(|i| json!({"id": format!("{r}-{i}"), "eventType": "recordUpdated", "subject": "warehouse/products/1", "eventTime": "2026-11-23T21:00:00Z", "dataVersion": "1.0", "data": {"products": [{"id": 1, "ean": 1111, "name": "Orange", "change": -1}]}}))
                    .collect();
                let resp = http.post(&endpoint).header("aeg-sas-key", KEY).json(&events).send().await.unwrap();
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < total) {
        assert!(
            Instant::now() < deadline,
            "deliveries did not finish within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = start.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    let m: Value = http
        .get(format!("{url}/metrics"))
        .header("aeg-sas-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fsyncs = m["walFsyncs"].as_u64().unwrap();
    println!(
        "{total} events, {per_request}/request, {PUBLISHERS} publishers, maxEventsPerBatch {max_batch:>3}: accepted {:>8.0} events/s ({:>6.0} requests/s), {:.3} fsyncs per accepted event, delivered {:>8.0} events/s to 3 subscribers",
        total as f64 / published.as_secs_f64(),
        requests as f64 / published.as_secs_f64(),
        fsyncs as f64 / total as f64,
        (3 * total) as f64 / delivered.as_secs_f64(),
    );
    // What the machine's load cannot distort: the emulator's own CPU time per request, with
    // every delivery to the 3 subscribers included, and the request rate one idle core gives.
    println!(
        "    emulator CPU {:.1} us per request incl. its deliveries => about {:.0} requests/s per idle core (machine load avg {})",
        cpu * 1e6 / requests as f64,
        requests as f64 / cpu.max(1e-9),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?"),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing special: either way run.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        scenario(20_000, 1, 1).await;
        scenario(20_000, 50, 1).await;
        scenario(20_000, 50, 50).await;
    });
}
