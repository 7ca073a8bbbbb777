//! End to end through the real exporter: spans, logs, errors and counters of one process land in a
//! local ingestion endpoint as Application Insights envelopes, all under the trace id of the
//! `traceparent` the first request came with.
//!
//! One test per file: the global subscriber can be installed only once per process, and each
//! file under `tests/` is its own test binary.

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::get;
use saldo_telemetry::testing::{FakeIngestion, of_type, property, tag};
use saldo_telemetry::{Config, Counters, current_traceparent, http, set_parent};
use serde_json::Value;
use std::time::Duration;
use tracing::Instrument;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const EVENT_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const EVENT_SPAN: &str = "b7ad6b7169203331";

/// Downstream route: answers with the `traceparent` it received.
async fn echo(headers: HeaderMap) -> String {
    tracing::info!("echo called");
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Upstream route: logs, calls `echo` through `http::send`, logs an error, returns what it saw.
async fn item(
    Path(id): Path<String>,
    axum::extract::State(base): axum::extract::State<String>,
) -> String {
    let own = current_traceparent().unwrap_or_default();
    http::record_transaction(&id);
    tracing::info!(transaction = %id, "handling purchase");
    let downstream = http::send(reqwest::Client::new().get(format!("{base}/api/echo")))
        .await
        .expect("echo answers")
        .text()
        .await
        .expect("echo body");
    let injected = http::inject(reqwest::Client::new().get(format!("{base}/api/echo")))
        .send()
        .await
        .expect("echo answers")
        .text()
        .await
        .expect("echo body");
    tracing::error!(transaction = %id, error = "warehouse unavailable", "execution failed");
    format!("{own}\n{downstream}\n{injected}")
}

#[test]
fn exports_one_trace_to_application_insights() {
    let ingestion = FakeIngestion::start();
    let telemetry = saldo_telemetry::init_with(Config {
        service: "saldo-test".into(),
        instance: "westeurope".into(),
        filter: "info".into(),
        connection_string: Some(ingestion.connection_string()),
    });
    let counters = Counters::new(
        "saldo.test",
        &["received", "executed"],
        &[("node", "westeurope")],
    );
    counters.incr("received");
    counters.add("received", 2);
    tracing::warn!(node = "westeurope", "started outside any span");
    // Counters kept by the caller, exported by name.
    saldo_telemetry::export_counters("saldo.kept", &[("region", "westeurope")], || {
        [("takenOver".to_string(), 7u64)].into_iter().collect()
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answer = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/api/items/{id}", get(item))
            .route("/api/echo", get(echo))
            .with_state(base.clone())
            .layer(axum::middleware::from_fn(http::trace_requests));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        // What the worker does with an event: a span per event, child of `data.traceparent`.
        let span = tracing::info_span!(
            "process event",
            otel.kind = "consumer",
            transaction = "tx-event",
            node = "westeurope"
        );
        set_parent(&span, Some(&format!("00-{EVENT_TRACE_ID}-{EVENT_SPAN}-01")));
        let seen = async { current_traceparent() }.instrument(span).await;
        assert!(seen.unwrap().starts_with(&format!("00-{EVENT_TRACE_ID}-")));

        // A malformed value is ignored: the span starts its own trace.
        let span = tracing::info_span!("process bad event");
        set_parent(&span, Some("00-not-a-traceparent"));
        let seen = async { current_traceparent() }
            .instrument(span)
            .await
            .unwrap();
        assert!(
            !seen.contains(EVENT_TRACE_ID) && !seen.contains(TRACE_ID),
            "{seen}"
        );

        reqwest::Client::new()
            .get(format!("{base}/api/items/tx-42"))
            .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
            .header("x-azure-functions-invocationid", "inv-1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    // Outside any span there is no context to pass on.
    assert_eq!(current_traceparent(), None);

    // The handler ran inside the caller's trace, and both ways of calling out passed it on.
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 3, "{answer}");
    for l in &lines {
        assert!(l.starts_with(&format!("00-{TRACE_ID}-")), "{answer}");
        assert!(
            !l.contains(CALLER_SPAN),
            "a child span id, not the caller's: {answer}"
        );
    }

    drop(rt);
    drop(telemetry); // flushes (bounded)
    let all = ingestion.wait_for(Duration::from_secs(30), |all| {
        !of_type(all, "Metric").is_empty() && of_type(all, "Request").len() >= 4
    });
    let dump = || serde_json::to_string_pretty(&all).unwrap();

    for e in &all {
        assert_eq!(tag(e, "ai.cloud.role"), Some("saldo-test"), "{e}");
        assert_eq!(tag(e, "ai.cloud.roleInstance"), Some("westeurope"), "{e}");
    }
    let in_trace = |kind: &str| -> Vec<&Value> {
        of_type(&all, kind)
            .into_iter()
            .filter(|e| tag(e, "ai.operation.id") == Some(TRACE_ID))
            .collect()
    };

    // Requests: the upstream one (child of the caller), and the echo calls made from it.
    let requests = in_trace("Request");
    let upstream = requests
        .iter()
        .find(|r| r["data"]["baseData"]["name"] == "GET /api/items/{id}")
        .unwrap_or_else(|| panic!("no upstream request in\n{}", dump()));
    assert_eq!(tag(upstream, "ai.operation.parentId"), Some(CALLER_SPAN));
    assert_eq!(
        tag(upstream, "ai.operation.name"),
        Some("GET /api/items/{id}")
    );
    assert_eq!(property(upstream, "faas.invocation_id"), Some("inv-1"));
    assert_eq!(property(upstream, "transaction"), Some("tx-42"));
    assert_eq!(upstream["data"]["baseData"]["responseCode"], "200");
    // The error logged while handling marks the request failed.
    assert_eq!(upstream["data"]["baseData"]["success"], false);
    let upstream_id = upstream["data"]["baseData"]["id"].as_str().unwrap();
    let echoes: Vec<_> = requests
        .iter()
        .filter(|r| r["data"]["baseData"]["name"] == "GET /api/echo")
        .collect();
    assert_eq!(echoes.len(), 2, "{}", dump());

    // The dependency made by `http::send`, child of the upstream request, parent of one echo.
    let deps = in_trace("RemoteDependency");
    let dep = deps
        .iter()
        .find(|d| d["data"]["baseData"]["type"] == "HTTP")
        .unwrap_or_else(|| panic!("no HTTP dependency in\n{}", dump()));
    assert_eq!(tag(dep, "ai.operation.parentId"), Some(upstream_id));
    assert_eq!(dep["data"]["baseData"]["resultCode"], "200");
    let dep_id = dep["data"]["baseData"]["id"].as_str().unwrap();
    assert!(
        echoes
            .iter()
            .any(|r| tag(r, "ai.operation.parentId") == Some(dep_id)),
        "{}",
        dump()
    );
    // The echo reached by `http::inject` is a direct child of the upstream request.
    assert!(
        echoes
            .iter()
            .any(|r| tag(r, "ai.operation.parentId") == Some(upstream_id)),
        "{}",
        dump()
    );

    // Logs inside spans are traces, with their fields as properties.
    let messages = in_trace("Message");
    let handling = messages
        .iter()
        .find(|m| m["data"]["baseData"]["message"] == "handling purchase")
        .unwrap_or_else(|| panic!("no message in\n{}", dump()));
    assert_eq!(property(handling, "transaction"), Some("tx-42"));
    assert_eq!(
        handling["data"]["baseData"]["severityLevel"], 1,
        "Information"
    );

    // The error is an exception.
    let exceptions = in_trace("Exception");
    assert_eq!(exceptions.len(), 1, "{}", dump());
    let ex = &exceptions[0]["data"]["baseData"];
    assert_eq!(
        ex["exceptions"][0]["message"],
        "execution failed: warehouse unavailable"
    );
    assert_eq!(ex["exceptions"][0]["typeName"], "export");
    assert_eq!(ex["properties"]["transaction"], "tx-42");

    // The event span (a consumer span: a request) continued the event's trace, with its fields.
    let event = of_type(&all, "Request")
        .into_iter()
        .find(|d| tag(d, "ai.operation.id") == Some(EVENT_TRACE_ID))
        .unwrap_or_else(|| panic!("no event span in\n{}", dump()));
    assert_eq!(tag(event, "ai.operation.parentId"), Some(EVENT_SPAN));
    assert_eq!(property(event, "transaction"), Some("tx-event"));

    // Counters are custom metrics.
    let metrics = of_type(&all, "Metric");
    let received = metrics
        .iter()
        .find(|m| m["data"]["baseData"]["metrics"][0]["name"] == "saldo.test.received")
        .unwrap_or_else(|| panic!("no counter metric in\n{}", dump()));
    assert_eq!(received["data"]["baseData"]["metrics"][0]["value"], 3.0);
    assert_eq!(
        received["data"]["baseData"]["properties"]["node"],
        "westeurope"
    );
}
