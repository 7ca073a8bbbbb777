//! With `RUST_LOG=warn` the console is quiet, but spans still carry trace context and are still
//! exported: an operator turning logs down must not break a purchase's trace.

use saldo_telemetry::testing::{FakeIngestion, of_type, tag};
use saldo_telemetry::{Config, current_traceparent, set_parent};
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[test]
fn spans_survive_a_quiet_log_level() {
    let ingestion = FakeIngestion::start();
    let telemetry = saldo_telemetry::init_with(Config {
        service: "saldo-quiet".into(),
        instance: "northeurope".into(),
        filter: "warn".into(),
        connection_string: Some(ingestion.connection_string()),
    });
    let span = tracing::info_span!(
        "process event",
        otel.kind = "consumer",
        transaction = "tx-1"
    );
    set_parent(&span, Some(&format!("00-{TRACE_ID}-00f067aa0ba902b7-01")));
    let inside = span.in_scope(|| {
        tracing::info!("below the level: neither console nor export");
        tracing::warn!("above the level");
        current_traceparent()
    });
    assert!(
        inside
            .expect("context despite warn")
            .starts_with(&format!("00-{TRACE_ID}-"))
    );
    drop(span);
    drop(telemetry);

    let all = ingestion.wait_for(Duration::from_secs(30), |all| {
        !of_type(all, "Request").is_empty()
    });
    let requests = of_type(&all, "Request");
    assert_eq!(requests.len(), 1, "{all:?}");
    assert_eq!(tag(requests[0], "ai.operation.id"), Some(TRACE_ID));
    assert_eq!(
        tag(requests[0], "ai.cloud.roleInstance"),
        Some("northeurope")
    );
    let messages: Vec<_> = of_type(&all, "Message")
        .iter()
        .map(|m| m["data"]["baseData"]["message"].clone())
        .collect();
    assert_eq!(messages, vec![serde_json::json!("above the level")]);
}
