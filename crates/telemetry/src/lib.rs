//! Logging set-up shared by every Saldo binary.
//!
//! Log levels come from `RUST_LOG` (default `info`). Output is human-readable on the console.

/// Installs the global tracing subscriber. `service` is the app (cloud role), `instance` the node
/// (role instance). Call once, first thing in `main`.
pub fn init(service: &str, instance: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
    tracing::debug!(service, instance, "telemetry initialised");
}
