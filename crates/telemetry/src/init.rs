//! Setting telemetry up: the [`Config`] (from the environment or explicit), the providers
//! (traces, logs, metrics) with their exporter, and the global subscriber.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::export::{ExportClient, exporter_client};
use crate::guard::Telemetry;
use crate::{console, exceptions};

/// The environment variable Azure sets on every app connected to Application Insights.
pub const CONNECTION_STRING_ENV: &str = "APPLICATIONINSIGHTS_CONNECTION_STRING";

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

    let (exporter, export_error) = exporter(&config);
    let tracer_provider = tracer_provider(&resource, exporter.as_ref());
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

    let filter_error = install_subscriber(&config, &tracer_provider, logger_provider.as_ref());
    report_setup(&config, filter_error, export_error);
    Telemetry {
        tracer: tracer_provider,
        meter: meter_provider,
        logs: logger_provider,
    }
}

type Exporter = opentelemetry_application_insights::Exporter<ExportClient>;

/// The Application Insights exporter the connection string asks for, or why there is none
/// although one was asked for.
fn exporter(config: &Config) -> (Option<Exporter>, Option<String>) {
    match &config.connection_string {
        None => (None, None),
        Some(cs) => match exporter_client().and_then(|client| {
            opentelemetry_application_insights::Exporter::new_from_connection_string(cs, client)
                .map_err(|e| format!("invalid {CONNECTION_STRING_ENV}: {e}"))
        }) {
            Ok(e) => (Some(e), None),
            Err(e) => (None, Some(e)),
        },
    }
}

fn tracer_provider(resource: &Resource, exporter: Option<&Exporter>) -> SdkTracerProvider {
    // AlwaysOn rather than the default ParentBased sampler: a browser or an upstream service may
    // send `traceparent` with the sampled flag off, and a purchase's trace must not vanish because
    // of that. Application Insights applies its own sampling at ingestion if configured.
    let mut tracer_builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.clone());
    if let Some(e) = exporter {
        // The batch processor runs on its own thread; OTEL_BSP_SCHEDULE_DELAY (ms, default 5000)
        // sets how often it exports.
        tracer_builder = tracer_builder.with_batch_exporter(e.clone());
    }
    tracer_builder.build()
}

/// Installs the global subscriber: the console, and the OpenTelemetry side (spans, exceptions,
/// log records outside spans). Returns why `RUST_LOG` was refused, if it was.
fn install_subscriber(
    config: &Config,
    tracer_provider: &SdkTracerProvider,
    logger_provider: Option<&SdkLoggerProvider>,
) -> Option<String> {
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
        .and_then(logger_provider.map(|p| {
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
    filter_error
}

/// Says what was set up (through the subscriber just installed), and what was refused.
fn report_setup(config: &Config, filter_error: Option<String>, export_error: Option<String>) {
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
}
