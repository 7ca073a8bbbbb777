//! A malformed connection string disables the export (with an error on the console) but never
//! stops the app or its trace context.

use saldo_telemetry::{Config, current_traceparent};

#[test]
fn malformed_connection_string_only_disables_export() {
    let telemetry = saldo_telemetry::init_with(Config {
        service: "saldo-bad".into(),
        instance: "local".into(),
        filter: "not a [valid filter".into(),
        connection_string: Some("this is not a connection string".into()),
    });
    let span = tracing::info_span!("request");
    assert!(span.in_scope(current_traceparent).is_some());
    drop(telemetry);
}
