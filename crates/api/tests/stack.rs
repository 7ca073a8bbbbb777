//! The API against a real worker: `saldo-worker` and `saldo-eventgrid` binaries (from the target
//! folder), SecantusDB, and the API in-process. Seeds Orange, buys, watches the transaction
//! complete, then fails to buy more than is left.
//!
//! It needs other packages' binaries: run
//! `cargo build -p saldo-worker -p saldo-eventgrid` first (`./dev test` builds every binary).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{read, serve};
use saldo_api::{AppState, Settings};
use saldo_core::events::{EventGridEvent, ProductLine, RecordUpdated};
use saldo_publish::{Auth, Publisher};
use serde_json::{Value, json};

const KEY: &str = "c2FsZG8tYXBpLXN0YWNrLXRlc3Qta2V5LWZvci10aGUtdG9waWM=";

use saldo_testkit::KillOnDrop as Proc;

fn exe(name: &str) -> PathBuf {
    saldo_testkit::workspace_binary(name)
}

/// Starts `cmd` and returns it with the URL of its `listening on URL` line.
fn start(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let url = saldo_testkit::listening_url(stdout, "process", Duration::from_secs(30));
    (proc, url)
}

async fn poll_until(what: &str, f: impl AsyncFnMut() -> Option<Value>) -> Value {
    saldo_testkit::until(Duration::from_secs(60), what, f).await
}

#[tokio::test]
async fn buy_through_a_real_worker() {
    let dir = tempfile::tempdir().unwrap();
    let db = tokio::task::spawn_blocking(saldo_store::test_util::spawn_secantus)
        .await
        .unwrap();
    let mut emu = Command::new(exe("saldo-eventgrid"));
    emu.args(["--host", "127.0.0.1", "--port", "0", "--key", KEY])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--deadletter-dir")
        .arg(dir.path().join("dl"))
        .env("RUST_LOG", "warn");
    let (_emu, emu_url) = start(emu);
    let endpoint = format!("{emu_url}/api/events");
    let mut worker = Command::new(exe("saldo-worker"));
    worker
        .args(["--port", "0"])
        .env("SALDO_NODE", "w1")
        .env("SALDO_REGION", "westeurope")
        .env("SALDO_MONGODB_URI", db.uri())
        .env("SALDO_DATABASE", "stack")
        .env("SALDO_TOPIC_ENDPOINT", &endpoint)
        .env("SALDO_TOPIC_KEY", KEY)
        .env("SALDO_STANDALONE_TIMERS", "1")
        .env("SALDO_TAKEOVER_MS", "1000")
        .env("RUST_LOG", "warn");
    let (_worker, worker_url) = start(worker);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = http
        .put(format!("{emu_url}/subscriptions/worker-w1"))
        .header("aeg-sas-key", KEY)
        .json(
            &json!({"properties": {"destination": {"endpointType": "WebHook",
            "properties": {"endpointUrl": format!("{worker_url}/api/eventgrid")}}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "subscribe: {}",
        resp.text().await.unwrap()
    );

    // Seed Orange = 5 as the warehouse would.
    let publisher = Publisher::new(endpoint.clone(), Auth::Key(KEY.into()));
    let seed = EventGridEvent {
        id: "seed-1".into(),
        event_type: "recordUpdated".into(),
        subject: "warehouse/products/seed".into(),
        event_time: chrono::Utc::now(),
        data: RecordUpdated {
            transaction: None,
            products: vec![ProductLine {
                id: 1,
                ean: 1111,
                name: "Orange".into(),
                saldo: Some(5),
                change: None,
            }],
            traceparent: None,
            tracestate: None,
        },
        data_version: "1.0".into(),
        metadata_version: None,
        topic: None,
    };
    publisher.publish(&[seed]).await.unwrap();

    let settings = Settings {
        nodes: vec![worker_url.clone()],
        fleet_key: None,
        mongodb_uri: db.uri(),
        database: "stack".into(),
        node_timeout_ms: 2000,
        node_cooldown_ms: 1000,
        db_timeout_ms: 2000,
        reconcile: Default::default(),
    };
    let state = AppState::new(&settings, publisher).await.unwrap();
    let (api, _served) = serve(saldo_api::app(state)).await;
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{api}{path}");
        async move { read(http.get(url).send().await.unwrap()).await }
    };
    poll_until("the seed", async || {
        let (s, v) = get("/api/products/1".into()).await;
        (s.as_u16() == 200 && v["saldo"] == 5).then_some(v)
    })
    .await;

    let buy = |key: &'static str, quantity: i64| {
        http.post(format!("{api}/api/orders"))
            .header("idempotency-key", key)
            .json(&json!({"lines": [{"id": 1, "quantity": quantity}]}))
            .send()
    };
    let (status, body) = read(buy("stack-1", 2).await.unwrap()).await;
    assert_eq!(status.as_u16(), 202, "{body}");
    let tx = body["transaction"].as_str().unwrap().to_string();
    let done = poll_until("completion", async || {
        let (_, v) = get(format!("/api/transactions/{tx}")).await;
        (v["status"] != "pending").then_some(v)
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (done["executedBy"].as_str(), done["executedRegion"].as_str()),
        (Some("w1"), Some("westeurope"))
    );
    assert_eq!(done["quantities"], json!([{"id": 1, "saldo": 3}]));
    assert_eq!(done["nodes"][0]["state"], "completed");
    assert_eq!(get("/api/products/1".into()).await.1["saldo"], 3);
    // The poll's view, from the warehouse's marker through one node, says the same.
    let (status, cheap) = get(format!("/api/transactions/{tx}?nodes=false")).await;
    assert_eq!(status.as_u16(), 200, "{cheap}");
    for field in [
        "status",
        "executedBy",
        "executedRegion",
        "executedAt",
        "takeover",
        "quantities",
        "lines",
        "acceptedAt",
        "published",
    ] {
        assert_eq!(cheap[field], done[field], "{field}: {cheap} vs {done}");
    }
    assert_eq!(cheap["nodes"], json!([]), "nobody was asked: {cheap}");
    for bad in ["maybe", "", "FALSE"] {
        let (status, e) = get(format!("/api/transactions/{tx}?nodes={bad}")).await;
        assert_eq!(status.as_u16(), 400, "nodes={bad}: {e}");
    }
    let (status, e) = get("/api/transactions/never-accepted-1?nodes=false".into()).await;
    assert_eq!(status.as_u16(), 404, "{e}");

    let (_, body) = read(buy("stack-2", 4).await.unwrap()).await;
    let tx = body["transaction"].as_str().unwrap().to_string();
    let done = poll_until("rejection", async || {
        let (_, v) = get(format!("/api/transactions/{tx}")).await;
        (v["status"] != "pending").then_some(v)
    })
    .await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert!(done["reason"].is_string(), "{done}");
    let (_, cheap) = get(format!("/api/transactions/{tx}?nodes=false")).await;
    assert_eq!(
        (&cheap["status"], &cheap["reason"], &cheap["executedBy"]),
        (&done["status"], &done["reason"], &done["executedBy"]),
        "{cheap}"
    );
    assert_eq!(get("/api/products/1".into()).await.1["saldo"], 3);

    let (status, fleet) = get("/api/nodes".into()).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        (
            fleet["nodes"][0]["up"].as_bool(),
            fleet["nodes"][0]["region"].as_str()
        ),
        (Some(true), Some("westeurope"))
    );
    eprintln!("fleet: {fleet}");
}
