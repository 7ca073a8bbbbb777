//! An order published through the real Event Grid emulator reaches a subscribed webhook.
//!
//! Uses the `saldo-eventgrid` binary from the target folder when it has been built (the same
//! process boundary as `saldo up`), else the emulator's library served in-process (same code).

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use saldo_api::AppState;
use saldo_api::commands::transaction_id;
use saldo_publish::{Auth, Publisher};
use serde_json::{Value, json};

/// Base64, as Azure topic keys are.
const KEY: &str = "c2FsZG8tYXBpLXRlc3Qta2V5LWZvci10aGUtZW11bGF0b3I=";

enum Emulator {
    Process(#[allow(dead_code)] saldo_testkit::KillOnDrop),
    InProcess(saldo_eventgrid::Running),
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // (A process is killed by its own guard.)
        if let Emulator::InProcess(r) = self {
            r.server.abort();
        }
    }
}

/// Starts the emulator; returns it and its base URL.
async fn start_emulator(dir: &std::path::Path) -> (Emulator, String) {
    let Some(exe) = saldo_testkit::built_binary("saldo-eventgrid") else {
        eprintln!("saldo-eventgrid not built: serving the emulator in-process");
        let config = saldo_eventgrid::Config::new(KEY, dir.join("data"), dir.join("deadletter"));
        let running = saldo_eventgrid::spawn(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let url = running.url();
        return (Emulator::InProcess(running), url);
    };
    let mut child = Command::new(&exe)
        .args(["--host", "127.0.0.1", "--port", "0", "--key", KEY])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--deadletter-dir")
        .arg(dir.join("deadletter"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start saldo-eventgrid");
    let stdout = child.stdout.take().unwrap();
    let emulator = Emulator::Process(saldo_testkit::KillOnDrop(child));
    let url = saldo_testkit::first_line_url(stdout, Duration::from_secs(30));
    (emulator, url)
}

#[tokio::test]
async fn an_order_reaches_a_subscriber_through_the_real_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let (_emulator, emu) = start_emulator(dir.path()).await;

    // The webhook: answers the validation handshake, records notifications.
    let received: Arc<Mutex<Vec<Value>>> = Default::default();
    let sink = received.clone();
    let hook = Router::new().route(
        "/hook",
        post(
            move |headers: HeaderMap, Json(batch): Json<Vec<Value>>| async move {
                if headers
                    .get("aeg-event-type")
                    .is_some_and(|v| v == "SubscriptionValidation")
                {
                    let code = batch[0]["data"]["validationCode"].clone();
                    return (StatusCode::OK, Json(json!({"validationResponse": code})));
                }
                sink.lock().unwrap().extend(batch);
                (StatusCode::OK, Json(json!({})))
            },
        ),
    );
    let (hook_url, _hook) = serve(hook).await;
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{emu}/subscriptions/api-test"))
        .header("aeg-sas-key", KEY)
        .json(
            &json!({"properties": {"destination": {"endpointType": "WebHook",
            "properties": {"endpointUrl": format!("{hook_url}/hook")}}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "subscription: {} {}",
        resp.status(),
        resp.text().await.unwrap()
    );

    let db = tokio::task::spawn_blocking(saldo_store::test_util::spawn_secantus)
        .await
        .unwrap();
    let node = FakeNode::start("n0", Mode::Healthy).await;
    let publisher = Publisher::new(format!("{emu}/api/events"), Auth::Key(KEY.into()));
    let state = AppState::new(&settings(&[&node], db.uri()), publisher)
        .await
        .unwrap();
    let (api, _api) = serve(saldo_api::app(state)).await;

    let order = |key: &'static str| {
        http.post(format!("{api}/api/orders"))
            .header("idempotency-key", key)
            .json(&json!({"lines": [{"id": 1, "quantity": 3}]}))
            .send()
    };
    let resp = order("through-the-emulator").await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
    let tx = transaction_id("through-the-emulator");

    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no delivery within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let event = received.lock().unwrap()[0].clone();
    assert_eq!(event["id"], tx.as_str());
    assert_eq!(event["eventType"], "recordUpdated");
    assert_eq!(event["data"]["products"][0]["change"], -3);
    assert_eq!(event["data"]["products"][0]["name"], "Orange");
    // The emulator fills in the topic, as Azure does; the command still passes the workers' rules.
    assert!(event["topic"].is_string(), "{event}");
    saldo_core::events::parse_event(&event).unwrap();

    // A retried request is answered from the record and not published again.
    assert_eq!(
        order("through-the-emulator")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    let metrics: Value = http
        .get(format!("{emu}/subscriptions/api-test/metrics"))
        .header("aeg-sas-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!("emulator metrics: {metrics}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "the retry was delivered again"
    );
}
