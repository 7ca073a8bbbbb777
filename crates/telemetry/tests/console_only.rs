//! Without a connection string nothing is exported, yet spans still have W3C context, so trace
//! ids still cross hops (and show up in every app's logs alike).

use saldo_telemetry::{Config, current_traceparent, set_parent};
use std::time::{Duration, Instant};

#[test]
fn context_flows_without_export() {
    let telemetry = saldo_telemetry::init_with(Config {
        service: "saldo-console".into(),
        instance: "local".into(),
        filter: "info".into(),
        connection_string: None,
    });
    let root = tracing::info_span!("request");
    let from_root = root
        .in_scope(current_traceparent)
        .expect("a root span starts a trace");
    let parts: Vec<&str> = from_root.split('-').collect();
    assert_eq!(parts.len(), 4, "{from_root}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "01")
    );

    let child = tracing::info_span!("process event");
    set_parent(&child, Some(&from_root));
    let from_child = child.in_scope(current_traceparent).unwrap();
    assert!(
        from_child.starts_with(&format!("00-{}-", parts[1])),
        "{from_child}"
    );
    assert_ne!(from_child, from_root, "the child has its own span id");

    let started = Instant::now();
    drop(telemetry);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "shutdown with nothing to export is bounded"
    );
}
