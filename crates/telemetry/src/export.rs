//! The exporter's HTTP client (blocking, bounded, and plain HTTP for a loopback receiver).

use std::time::Duration;

/// Per-request timeout of the exporter's HTTP client: one stuck upload must not block the export
/// thread for ever.
const EXPORT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's HTTP client. Blocking, because the SDK's batch span processor and periodic
/// metric reader run exporters on their own threads, outside any async runtime (an async
/// `reqwest::Client` there would panic for want of a Tokio reactor). Built on a fresh thread
/// because reqwest refuses to build a blocking client inside an async runtime, and `init` is
/// usually called from `#[tokio::main]`.
pub(crate) fn exporter_client() -> Result<ExportClient, String> {
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
pub(crate) struct ExportClient(reqwest::blocking::Client);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
