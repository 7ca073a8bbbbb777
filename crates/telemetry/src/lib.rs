//! Logging and tracing set-up shared by every Saldo binary.
//!
//! - Log levels come from `RUST_LOG` (default `info`); output is compact and human-readable on
//!   stderr.
//! - Every `tracing` span also becomes an OpenTelemetry span, so each span has a W3C trace id and
//!   span id whether or not anything is exported. That is what lets trace context cross every hop
//!   (HTTP headers, `data.traceparent` of Event Grid events; see `TRACING.md`).
//! - With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, spans, their events and counters are
//!   exported to Application Insights through `opentelemetry-application-insights`:
//!   server spans (`otel.kind = "server"`) become requests, all other spans dependencies, events
//!   inside spans traces (messages), `ERROR` events and events with `exception.*` fields
//!   exceptions, and [`Counters`] metrics. The connection string's `IngestionEndpoint` decides
//!   where envelopes go, so a local receiver can stand in for Azure (see `testing`).
//!
//! Conventions for the other crates:
//! - a span that concerns one transaction carries `transaction`, `node` and `region` fields
//!   (they become custom properties in Application Insights);
//! - a span that receives work from elsewhere is made a child of the sender's context with
//!   [`set_parent`] *before* it is entered;
//! - `tracing::error!` is for failures an operator must see (it becomes an exception).

mod console;
mod counters;
mod exceptions;
pub mod http;
#[cfg(feature = "test-util")]
pub mod testing;

pub use counters::{Counters, export_counters};

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::collections::HashMap;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// The environment variable Azure sets on every app connected to Application Insights.
pub const CONNECTION_STRING_ENV: &str = "APPLICATIONINSIGHTS_CONNECTION_STRING";

/// How long dropping [`Telemetry`] waits for the last export. The exporter retries for up to
/// ~35 s when the endpoint is unreachable; shutting a process down must not wait that long, so
/// telemetry still unsent after this bound is lost (and a line on stderr says so).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-request timeout of the exporter's HTTP client: one stuck upload must not block the export
/// thread for ever.
const EXPORT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`init_with`] sets up. [`init`] fills it from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The app: `service.name`, shown as the cloud role (`ai.cloud.role`), e.g. `saldo-worker`.
    pub service: String,
    /// The node: `service.instance.id`, shown as the role instance (`ai.cloud.roleInstance`).
    pub instance: String,
    /// An `EnvFilter` directive such as `info,saldo_worker=debug`.
    pub filter: String,
    /// The Application Insights connection string; `None` exports nothing.
    pub connection_string: Option<String>,
}

impl Config {
    /// `RUST_LOG` (default `info`) and `APPLICATIONINSIGHTS_CONNECTION_STRING` (an empty value
    /// counts as unset, as an app setting cleared in the portal is empty rather than absent).
    pub fn from_env(service: &str, instance: &str) -> Self {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Config {
            service: service.to_string(),
            instance: instance.to_string(),
            filter: non_empty("RUST_LOG").unwrap_or_else(|| "info".to_string()),
            connection_string: non_empty(CONNECTION_STRING_ENV),
        }
    }
}

/// Keeps telemetry alive; flushes exporters when dropped. Hold it for the life of `main`.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
    logs: Option<SdkLoggerProvider>,
}

impl Telemetry {
    /// Exports everything recorded so far (bounded by [`FLUSH_TIMEOUT`]), keeping telemetry on.
    /// Useful before a planned pause; normal shutdown just drops the guard.
    pub fn flush(&self) {
        let tracer = self.tracer.clone();
        let meter = self.meter.clone();
        let logs = self.logs.clone();
        run_bounded("flush", move || {
            let mut errors = Vec::new();
            if let Err(e) = tracer.force_flush() {
                errors.push(format!("traces: {e}"));
            }
            if let Some(l) = logs
                && let Err(e) = l.force_flush()
            {
                errors.push(format!("logs: {e}"));
            }
            if let Some(m) = meter
                && let Err(e) = m.force_flush()
            {
                errors.push(format!("metrics: {e}"));
            }
            errors
        });
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let tracer = self.tracer.clone();
        let meter = self.meter.take();
        let logs = self.logs.take();
        run_bounded("shutdown", move || {
            let mut errors = Vec::new();
            if let Err(e) = tracer.shutdown_with_timeout(FLUSH_TIMEOUT) {
                errors.push(format!("traces: {e}"));
            }
            if let Some(l) = logs
                && let Err(e) = l.shutdown_with_timeout(FLUSH_TIMEOUT)
            {
                errors.push(format!("logs: {e}"));
            }
            if let Some(m) = meter
                && let Err(e) = m.shutdown_with_timeout(FLUSH_TIMEOUT)
            {
                errors.push(format!("metrics: {e}"));
            }
            errors
        });
    }
}

/// Runs `work` on its own thread and waits at most [`FLUSH_TIMEOUT`] for it. A thread, because
/// the SDK's flush blocks (it must not block an async runtime's only worker for ever) and because
/// waiting with a timeout on a channel is the only way to bound a call that has none.
/// Failures go to stderr: the subscriber may already be gone, and they must not be swallowed.
fn run_bounded(what: &'static str, work: impl FnOnce() -> Vec<String> + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("telemetry-{what}"))
        .spawn(move || {
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        eprintln!("telemetry {what}: cannot start a thread: {e}");
        return;
    }
    match rx.recv_timeout(FLUSH_TIMEOUT + Duration::from_secs(1)) {
        Ok(errors) => {
            for e in errors {
                eprintln!("telemetry {what} failed: {e}");
            }
        }
        Err(_) => {
            eprintln!("telemetry {what}: gave up after {FLUSH_TIMEOUT:?}; unsent telemetry is lost")
        }
    }
}

/// Installs the global tracing subscriber. `service` is the app (cloud role, e.g. `saldo-worker`),
/// `instance` the node (role instance, e.g. `westeurope`). Call once, first thing in `main`.
/// Settings come from the environment, see [`Config::from_env`].
pub fn init(service: &str, instance: &str) -> Telemetry {
    init_with(Config::from_env(service, instance))
}

/// [`init`] with explicit settings (tests use it to point the export at a local receiver).
///
/// A second call in the same process keeps the first subscriber (there is only one global) and
/// says so on stderr; the returned guard still works for what it set up.
pub fn init_with(config: Config) -> Telemetry {
    // W3C TraceContext only: `traceparent`/`tracestate` are what Azure services and browsers send.
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![Box::new(
        TraceContextPropagator::new(),
    )]));

    let resource = Resource::builder_empty()
        .with_service_name(config.service.clone())
        .with_attribute(KeyValue::new(
            "service.instance.id",
            config.instance.clone(),
        ))
        .build();

    let (exporter, export_error) = match &config.connection_string {
        None => (None, None),
        Some(cs) => match exporter_client().and_then(|client| {
            opentelemetry_application_insights::Exporter::new_from_connection_string(cs, client)
                .map_err(|e| format!("invalid {CONNECTION_STRING_ENV}: {e}"))
        }) {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(e)),
        },
    };

    // AlwaysOn rather than the default ParentBased sampler: a browser or an upstream service may
    // send `traceparent` with the sampled flag off, and a purchase's trace must not vanish because
    // of that. Application Insights applies its own sampling at ingestion if configured.
    let mut tracer_builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.clone());
    if let Some(e) = &exporter {
        // The batch processor runs on its own thread; OTEL_BSP_SCHEDULE_DELAY (ms, default 5000)
        // sets how often it exports.
        tracer_builder = tracer_builder.with_batch_exporter(e.clone());
    }
    let tracer_provider = tracer_builder.build();
    global::set_tracer_provider(tracer_provider.clone());

    // Events outside any span (start-up, background loops) have no span to ride on: they go out
    // as OpenTelemetry log records instead (see `exceptions::OutsideSpans`).
    let logger_provider = exporter.as_ref().map(|e| {
        SdkLoggerProvider::builder()
            .with_batch_exporter(e.clone())
            .with_resource(resource.clone())
            .build()
    });
    let meter_provider = exporter.map(|e| {
        // OTEL_METRIC_EXPORT_INTERVAL (ms, default 60000) sets how often counters are exported.
        let m = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(e).build())
            .with_resource(resource)
            .build();
        global::set_meter_provider(m.clone());
        m
    });

    let console_filter = EnvFilter::try_new(&config.filter);
    let filter_error = console_filter.as_ref().err().map(|e| e.to_string());
    let console_filter = console_filter.unwrap_or_else(|_| EnvFilter::new("info"));
    // The OpenTelemetry side sees what the console sees, plus every span at INFO or above even
    // when `RUST_LOG` is quieter: spans carry the trace context from hop to hop, and a purchase's
    // trace must not break because an operator turned the console down to `warn`.
    let otel_filter = EnvFilter::try_new(&config.filter)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .or(filter_fn(|m| {
            m.is_span() && *m.level() <= tracing::Level::INFO
        }));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer("saldo"))
        // `level` becomes the trace's severity in Application Insights.
        .with_level(true)
        // Exceptions are made by `exceptions::ExceptionLayer` from every ERROR event; turning
        // the layer's own (narrower) mapping off keeps them from being reported twice.
        .with_error_events_to_exceptions(false)
        .and_then(exceptions::ExceptionLayer)
        .and_then(logger_provider.as_ref().map(|p| {
            exceptions::OutsideSpans(
                opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p),
            )
        }))
        .with_filter(otel_filter);
    let console = fmt::layer()
        .compact()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .fmt_fields(console::ConsoleFields)
        .with_writer(std::io::stderr)
        .with_filter(console_filter);
    let installed = tracing_subscriber::registry()
        .with(console)
        .with(otel)
        .try_init();

    if let Err(e) = installed {
        eprintln!("telemetry: a global subscriber is already installed, keeping it: {e}");
    }
    if let Some(e) = filter_error {
        tracing::warn!(filter = %config.filter, error = %e, "invalid RUST_LOG, using info");
    }
    match (&config.connection_string, export_error) {
        (Some(_), Some(e)) => tracing::error!(error = %e, "Application Insights export disabled"),
        (Some(_), None) => tracing::info!(
            service = %config.service, instance = %config.instance,
            "telemetry: exporting to Application Insights"
        ),
        (None, _) => tracing::debug!(
            service = %config.service, instance = %config.instance,
            "telemetry: console only ({CONNECTION_STRING_ENV} not set)"
        ),
    }
    Telemetry {
        tracer: tracer_provider,
        meter: meter_provider,
        logs: logger_provider,
    }
}

/// The exporter's HTTP client. Blocking, because the SDK's batch span processor and periodic
/// metric reader run exporters on their own threads, outside any async runtime (an async
/// `reqwest::Client` there would panic for want of a Tokio reactor). Built on a fresh thread
/// because reqwest refuses to build a blocking client inside an async runtime, and `init` is
/// usually called from `#[tokio::main]`.
fn exporter_client() -> Result<ExportClient, String> {
    std::thread::spawn(|| {
        reqwest::blocking::Client::builder()
            .timeout(EXPORT_HTTP_TIMEOUT)
            .build()
    })
    .join()
    .map_err(|_| "building the exporter's HTTP client panicked".to_string())?
    .map(ExportClient)
    .map_err(|e| format!("building the exporter's HTTP client: {e}"))
}

/// The exporter's client, with one twist: the exporter rewrites every ingestion endpoint to
/// `https://` (Azure only accepts TLS), which would make a plain-HTTP local receiver unreachable.
/// A loopback endpoint can only be a local stand-in, never Azure, so for loopback hosts (and only
/// those) the request goes out as `http://` as the connection string said.
#[derive(Debug, Clone)]
struct ExportClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        mut request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        if let Some(plain) = loopback_as_http(request.uri()) {
            *request.uri_mut() = plain;
        }
        self.0.send_bytes(request).await
    }
}

/// `https://127.0.0.1:PORT/...` → `http://127.0.0.1:PORT/...` (also `localhost` and `[::1]`);
/// `None` for any other URI.
fn loopback_as_http(uri: &axum::http::Uri) -> Option<axum::http::Uri> {
    let host = uri.host()?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if uri.scheme_str() != Some("https") || !loopback {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(axum::http::uri::Scheme::HTTP);
    axum::http::Uri::from_parts(parts).ok()
}

/// The W3C `traceparent` of the current span, to put into an outgoing event's `data.traceparent`.
/// `None` when there is no valid context (no current span, or telemetry not initialised).
pub fn current_traceparent() -> Option<String> {
    current_headers().remove("traceparent")
}

/// The W3C `tracestate` of the current span (usually `None`: Saldo adds no vendor state, it only
/// passes on what it received).
pub fn current_tracestate() -> Option<String> {
    current_headers()
        .remove("tracestate")
        .filter(|s| !s.is_empty())
}

/// `traceparent` (and `tracestate` when there is one) of the current span, as header name/value
/// pairs. Empty when there is no valid context.
pub(crate) fn current_headers() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    }
    carrier
}

/// Makes `span` a child of the remote context in `traceparent` (from an event or a header).
/// Call it before the span is first entered. `None` leaves the span as it is (a new trace, or a
/// child of the current span); a malformed value is ignored with a debug log, because bad trace
/// context must never fail the work it accompanies.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    set_parent_with_state(span, traceparent, None);
}

/// [`set_parent`] with the matching `tracestate`, passed on unchanged to children.
pub fn set_parent_with_state(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let Some(cx) = parse_context(traceparent, tracestate) else {
        tracing::debug!(traceparent, "ignoring malformed traceparent");
        return;
    };
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(traceparent, error = ?e, "cannot set the span's parent");
    }
}

/// The remote context of a `traceparent`, or `None` if it is not a valid W3C value.
pub(crate) fn parse_context(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.trim().to_string());
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_string(), ts.to_string());
    }
    // The TraceContext propagator directly rather than the global one: the format of
    // `data.traceparent` is W3C by contract, whatever propagator the process installed.
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_traceparent() {
        let cx = parse_context(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote());
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_context(bad, None).is_none(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn only_loopback_endpoints_are_downgraded_to_http() {
        let plain = |u: &str| loopback_as_http(&u.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            plain("https://127.0.0.1:4318/v2/track").as_deref(),
            Some("http://127.0.0.1:4318/v2/track")
        );
        assert_eq!(
            plain("https://localhost:1/v2/track").as_deref(),
            Some("http://localhost:1/v2/track")
        );
        assert_eq!(
            plain("https://[::1]:1/v2/track").as_deref(),
            Some("http://[::1]:1/v2/track")
        );
        assert_eq!(plain("https://dc.services.visualstudio.com/v2/track"), None);
        assert_eq!(
            plain("https://westeurope-5.in.applicationinsights.azure.com/v2/track"),
            None
        );
        assert_eq!(plain("https://10.0.0.1/v2/track"), None);
    }

    #[test]
    fn without_init_there_is_no_context_and_nothing_panics() {
        // No subscriber in this test binary's thread: spans are disabled.
        let span = tracing::info_span!("work");
        set_parent(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        set_parent(&span, Some("malformed"));
        let _g = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
