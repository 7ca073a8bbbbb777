//! `host.json`: the shape serde reads, and the checks serde cannot express.
//!
//! No `deny_unknown_fields`: the Functions host ignores what it does not know in `host.json`
//! (sections for other extensions, `logging`, settings of newer versions; azure-functions-host
//! #3718, #614), so refusing unknown fields would refuse apps Azure runs. What we read is typed,
//! so a known field of the wrong type is refused naming its path.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, err};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HostJson {
    version: Option<String>,
    custom_handler: Option<CustomHandler>,
    extension_bundle: Option<ExtensionBundle>,
    extensions: Option<Extensions>,
    function_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomHandler {
    description: Option<Description>,
    enable_forwarding_http_request: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    default_executable_path: Option<String>,
    arguments: Option<Vec<String>>,
    working_directory: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ExtensionBundle {
    id: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Extensions {
    http: Option<HttpExtension>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpExtension {
    route_prefix: Option<String>,
}

/// What the rest of the stand-in needs from `host.json`.
pub(super) struct HostConfig {
    pub(super) executable: String,
    pub(super) arguments: Vec<String>,
    pub(super) working_directory: Option<String>,
    pub(super) forwarding: bool,
    pub(super) route_prefix: String,
    pub(super) function_timeout: Duration,
    /// An extension bundle is declared (timer triggers need one).
    pub(super) bundle: bool,
}

const BUNDLE_ID: &str = "Microsoft.Azure.Functions.ExtensionBundle";

pub(super) fn parse_host(file: &Path, text: &str) -> Result<HostConfig, ConfigError> {
    let host: HostJson = super::json::parse(file, text)?;
    match host.version.as_deref() {
        Some("2.0") => {}
        Some(other) => {
            return Err(err(
                file,
                format!("`version` must be \"2.0\", found \"{other}\""),
            ));
        }
        None => return Err(err(file, "`version` is missing (must be \"2.0\")")),
    }
    let ch = host
        .custom_handler
        .ok_or_else(|| err(file, "`customHandler` is missing"))?;
    let desc = ch
        .description
        .ok_or_else(|| err(file, "`customHandler.description` is missing"))?;
    let executable = desc
        .default_executable_path
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            err(
                file,
                "`customHandler.description.defaultExecutablePath` is missing or empty",
            )
        })?;
    let bundle = match host.extension_bundle {
        None => false,
        Some(b) => {
            if b.id.as_deref() != Some(BUNDLE_ID) {
                return Err(err(
                    file,
                    format!("`extensionBundle.id` must be \"{BUNDLE_ID}\""),
                ));
            }
            if b.version.is_none_or(|s| s.trim().is_empty()) {
                return Err(err(
                    file,
                    "`extensionBundle.version` is missing (e.g. \"[4.*, 5.0.0)\")",
                ));
            }
            true
        }
    };
    let route_prefix = host
        .extensions
        .and_then(|e| e.http)
        .and_then(|h| h.route_prefix)
        .unwrap_or_else(|| "api".into())
        .trim_matches('/')
        .to_string();
    let function_timeout = match host.function_timeout {
        None => Duration::from_secs(300),
        Some(s) => parse_timespan(&s)
            .ok_or_else(|| err(file, format!("`functionTimeout` \"{s}\" is not hh:mm:ss")))?,
    };
    Ok(HostConfig {
        executable,
        arguments: desc.arguments.unwrap_or_default(),
        working_directory: desc.working_directory.filter(|s| !s.is_empty()),
        forwarding: ch.enable_forwarding_http_request.unwrap_or(false),
        route_prefix,
        function_timeout,
        bundle,
    })
}

/// `hh:mm:ss` (the TimeSpan form host.json uses) → Duration.
fn parse_timespan(s: &str) -> Option<Duration> {
    let parts: Vec<&str> = s.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return None;
    };
    let (h, m, sec): (u64, u64, f64) = (h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?);
    if m >= 60 || !(0.0..60.0).contains(&sec) {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> String {
        match parse_host(Path::new("host.json"), text) {
            Ok(_) => panic!("{text} was accepted"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn timespan() {
        assert_eq!(parse_timespan("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(parse_timespan("5"), None);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_naming_its_path() {
        let r = reason(
            r#"{"version": "2.0", "customHandler": {"description": {"defaultExecutablePath": "h", "arguments": ["a", 1]}}}"#,
        );
        assert!(
            r.starts_with(
                "`customHandler.description.arguments[1]` must be a string, found integer `1`"
            ),
            "{r}"
        );
        let r = reason(
            r#"{"version": "2.0", "customHandler": {"description": {"defaultExecutablePath": "h"}, "enableForwardingHttpRequest": "yes"}}"#,
        );
        assert!(
            r.starts_with("`customHandler.enableForwardingHttpRequest` must be true or false"),
            "{r}"
        );
        let r = reason(r#"{"version": "2.0", "extensions": {"http": {"routePrefix": 7}}}"#);
        assert!(
            r.starts_with("`extensions.http.routePrefix` must be a string"),
            "{r}"
        );
        assert_eq!(
            reason(r#"{"version": 2}"#).split(" (").next().unwrap(),
            "`version` must be a string, found integer `2`"
        );
        assert_eq!(reason("{}"), "`version` is missing (must be \"2.0\")");
    }

    #[test]
    fn sections_the_stand_in_does_not_read_are_ignored_as_azure_ignores_them() {
        let host = parse_host(
            Path::new("host.json"),
            r#"{"version": "2.0", "logging": {"logLevel": {"default": "Information"}},
                "customHandler": {"description": {"defaultExecutablePath": "h", "newerSetting": 1}},
                "extensions": {"queues": {"batchSize": 4}, "http": {"routePrefix": "/x/"}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.route_prefix, "x");
        assert!(!host.forwarding && !host.bundle);
        assert_eq!(host.function_timeout, Duration::from_secs(300));
    }
}
