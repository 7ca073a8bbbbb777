//! W3C trace context in and out of `tracing` spans: the current span's `traceparent` and
//! `tracestate`, and making a span the child of a remote context.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
