//! HTTP hops: incoming requests become server spans (continuing a `traceparent` header, which
//! Application Insights shows as requests), outgoing requests carry the current context.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::global;
use opentelemetry_http::HeaderExtractor;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header in which the Azure Functions host names the invocation. The host does not pass its
/// own trace context to custom handlers, so this id is the only link between the host's logs and
/// ours; it is recorded as `faas.invocation_id` (OpenTelemetry's name for it).
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";

/// Axum middleware: `.layer(axum::middleware::from_fn(saldo_telemetry::http::trace_requests))`.
///
/// One server span per request, named `METHOD route` (the matched route template, e.g.
/// `GET /api/ledger/{id}`, so requests group by route; the raw path when no route matched), with
/// `http.request.method`, `http.route`, `url.path`, `http.response.status_code` and, behind the
/// Functions host, `faas.invocation_id`. A valid incoming `traceparent` header makes it a child of
/// the caller's span; without one the request starts a new trace. A 5xx answer marks the span
/// failed (a 4xx is the client's fault, not a failed request, as OpenTelemetry prescribes for
/// server spans).
pub async fn trace_requests(req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let name = format!("{method} {}", route.as_deref().unwrap_or(&path));
    let headers = req.headers();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let host = header("host");
    let invocation = header(INVOCATION_ID_HEADER);
    let traceparent = header("traceparent");

    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = %path,
        url.scheme = "http",
        http.request.header.host = host.as_deref(),
        http.response.status_code = Empty,
        faas.invocation_id = invocation.as_deref(),
        // Filled in by handlers that learn which transaction the request is about:
        // `tracing::Span::current().record("transaction", id)` (see `record_transaction`).
        transaction = Empty,
    );
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_valid()
    {
        if let Err(e) = span.set_parent(parent) {
            tracing::debug!(error = ?e, "cannot continue the incoming traceparent");
        }
    } else if let Some(traceparent) = traceparent {
        tracing::debug!(traceparent, "ignoring malformed traceparent header");
    }

    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

/// Notes on the current request span (from [`trace_requests`]) which transaction the request is
/// about, so the Application Insights request carries it as a property. Harmless elsewhere: a span
/// without a `transaction` field ignores it.
pub fn record_transaction(transaction: &str) {
    tracing::Span::current().record("transaction", transaction);
}

/// Adds the current trace context (`traceparent`, and `tracestate` if any) to an outgoing request.
/// Without a valid current context the request is left unchanged.
pub fn inject(mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in crate::current_headers() {
        req = req.header(name, value);
    }
    req
}

/// Sends `req` inside a client span (Application Insights shows it as an HTTP dependency named
/// `METHOD host`, with the URL, status code and duration), carrying that span's trace context.
/// Use it instead of `inject(req).send()` where the call itself is worth seeing.
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let (client, request) = req.build_split();
    let request = request?;
    let url = request.url();
    let host = url.host_str().unwrap_or("").to_string();
    let port = url.port_or_known_default().unwrap_or(0);
    let span = tracing::info_span!(
        "http client",
        otel.name = %format!("{} {host}", request.method()),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %request.method(),
        // Query strings may carry keys (`?code=`): only the path is recorded.
        url.full = %format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        server.address = %host,
        server.port = port,
        http.response.status_code = Empty,
    );
    async move {
        let mut request = request;
        for (name, value) in crate::current_headers() {
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                request.headers_mut().insert(n, v);
            }
        }
        let result = client.execute(request).await;
        let span = tracing::Span::current();
        match &result {
            Ok(resp) => {
                span.record("http.response.status_code", resp.status().as_u16());
                if resp.status().is_client_error() || resp.status().is_server_error() {
                    span.record("otel.status_code", "error");
                }
            }
            Err(e) => {
                span.record("otel.status_code", "error");
                tracing::debug!(error = %e, "request failed");
            }
        }
        result
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// axum requires middleware futures to be `Send`; holding a borrow of the request (whose
    /// body is not `Sync`) across the await breaks that, so it is checked here, not by the users.
    #[allow(dead_code)]
    fn trace_requests_is_send(req: Request, next: Next) {
        fn is_send<T: Send>(_: T) {}
        is_send(trace_requests(req, next));
    }
}
