//! Errors become Application Insights exceptions.
//!
//! The exporter turns a span event into exception telemetry only when the event is *named*
//! `exception` (OpenTelemetry's convention). `tracing-opentelemetry` names an event after its
//! message, so `tracing::error!(error = %e, "publish failed")` would arrive as a mere trace with
//! severity Error. This layer adds, for every event that is an error, an `exception` event to the
//! same span, with `exception.type` and `exception.message` filled in. An event is an error when
//! its level is `ERROR` or when it carries `exception.message` / `exception.type` fields (for
//! failures logged at a lower level that should still count).
//!
//! - `exception.type`: the `exception.type` field, else `error.type`, else the event's target
//!   (the module that logged it), so exceptions group by where they happen;
//! - `exception.message`: the `exception.message` field, else `"<message>: <error>"` from the
//!   message and the `error` field;
//! - every other field (e.g. `transaction`) is kept as a custom property.
//!
//! Events outside any span have no OpenTelemetry span to attach to: [`OutsideSpans`] sends those
//! as OpenTelemetry log records (Application Insights traces; an error among them is a trace with
//! severity Error, or an exception if it carries `exception.message`).

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Upper bound on the extra fields copied from one event (tracing itself allows 32 per callsite).
const MAX_FIELDS: usize = 32;

pub(crate) struct ExceptionLayer;

impl<S> Layer<S> for ExceptionLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let is_error = *event.metadata().level() == Level::ERROR
            || fields.exception_message.is_some()
            || fields.exception_type.is_some();
        if !is_error {
            return;
        }
        let Some(span_id) = ctx.event_span(event).map(|s| s.id()) else {
            return;
        };
        // `get_otel_context` locks the span's extensions; this layer holds none of them here.
        let cx = tracing::dispatcher::get_default(|d| {
            tracing_opentelemetry::get_otel_context(&span_id, d)
        });
        let Some(cx) = cx else { return };

        let type_name = fields
            .exception_type
            .or(fields.error_type)
            .unwrap_or_else(|| event.metadata().target().to_string());
        let message =
            fields
                .exception_message
                .unwrap_or_else(|| match (fields.message, fields.error) {
                    (Some(m), Some(e)) => format!("{m}: {e}"),
                    (Some(m), None) => m,
                    (None, Some(e)) => e,
                    (None, None) => event.metadata().name().to_string(),
                });
        let mut attributes = vec![
            KeyValue::new("exception.type", type_name),
            KeyValue::new("exception.message", message),
        ];
        if let Some(stack) = fields.exception_stacktrace {
            attributes.push(KeyValue::new("exception.stacktrace", stack));
        }
        attributes.extend(fields.other);
        cx.span().add_event("exception", attributes);
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    error: Option<String>,
    error_type: Option<String>,
    exception_type: Option<String>,
    exception_message: Option<String>,
    exception_stacktrace: Option<String>,
    other: Vec<KeyValue>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        let slot = match field.name() {
            "message" => &mut self.message,
            "error" => &mut self.error,
            "error.type" => &mut self.error_type,
            "exception.type" => &mut self.exception_type,
            "exception.message" => &mut self.exception_message,
            "exception.stacktrace" => &mut self.exception_stacktrace,
            name => {
                if self.other.len() < MAX_FIELDS {
                    self.other.push(KeyValue::new(name.to_string(), value));
                }
                return;
            }
        };
        *slot = Some(value);
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole source chain: "publish failed: connection refused: ...".
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        self.put(field, text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// Passes to `inner` (the OpenTelemetry log bridge) only the events that have no span: events
/// inside a span already travel as that span's events, and sending them twice would duplicate
/// every trace. It sits in the same filtered stack as the OpenTelemetry layer, so "has a span"
/// means exactly "has a span the OpenTelemetry layer knows".
///
/// The exporter's own plumbing (the SDK's internal logs, the HTTP client stack) is never exported:
/// a failing export would otherwise log, and export that log, and fail again.
pub(crate) struct OutsideSpans<L>(pub(crate) L);

/// Targets whose events must not be exported (prefixes).
const PLUMBING: [&str; 6] = ["opentelemetry", "reqwest", "hyper", "h2", "rustls", "tower"];

impl<S, L> Layer<S> for OutsideSpans<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if ctx.event_span(event).is_none() && !PLUMBING.iter().any(|p| target.starts_with(p)) {
            self.0.on_event(event, ctx);
        }
    }
}
