//! Telemetry never blocks the work: with an ingestion endpoint that accepts connections and never
//! answers, dropping the guard (what every binary does on its way out) returns within the flush
//! bound, not after the exporter's own HTTP timeouts (~35 s).
//!
//! One test per file: the global subscriber can be installed only once per process.

use std::io::Read;
use std::time::{Duration, Instant};

use saldo_telemetry::{Config, Counters, FLUSH_TIMEOUT};

#[test]
fn shutdown_with_a_hung_endpoint_is_bounded() {
    // Accepts, reads, never answers: a hung Application Insights ingestion endpoint.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = conn.read(&mut buf);
            held.push(conn);
        }
    });
    let telemetry = saldo_telemetry::init_with(Config {
        service: "saldo-test".into(),
        instance: "westeurope".into(),
        filter: "info".into(),
        connection_string: Some(format!(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://{addr}/"
        )),
    });
    let counters = Counters::new("saldo.test", &["received"], &[("node", "westeurope")]);
    counters.incr("received");
    tracing::info_span!("work").in_scope(|| tracing::warn!("something to export"));

    let started = Instant::now();
    drop(telemetry);
    let took = started.elapsed();
    // Each exporter (traces, logs, metrics) is bounded by FLUSH_TIMEOUT; the margin is for a
    // loaded machine, far below the ~35 s an unbounded export would wait.
    assert!(
        took < FLUSH_TIMEOUT * 3 + Duration::from_secs(5),
        "shutdown took {took:?} with a hung endpoint"
    );
}
