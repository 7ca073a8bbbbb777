//! Reading and validating a Function App folder: `host.json` and one `function.json` per function.
//!
//! [`load_app`] does all checks that need no app settings; [`App::resolve_settings`] then replaces
//! `%NAME%` in timer schedules with app settings. Both refuse bad input with a [`ConfigError`]
//! naming the file and the reason (a field of the wrong type by its path in the file, e.g.
//! `bindings[0].methods[1]`). `host` and `function` hold the serde types of the two files and the
//! rules serde cannot express; `json` turns serde's errors into those reasons. [`App::route`] is
//! the request router, usable in tests:
//!
//! ```no_run
//! use saldo_funchost::config::{load_app, Match};
//! let app = load_app("functions-host/worker".as_ref()).unwrap();
//! assert!(matches!(app.route("GET", "/api/products/42"), Match::Found { .. }));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod function;
mod host;
mod json;

use crate::route::RouteTemplate;
use crate::schedule::Ncrontab;

/// A configuration error: which file, and why. Printed as `<file>: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub reason: String,
}

fn err(file: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// One Function App folder, validated.
#[derive(Debug, Clone)]
pub struct App {
    pub dir: PathBuf,
    /// `customHandler.description.defaultExecutablePath` as written.
    pub executable: String,
    /// `customHandler.description.arguments`.
    pub arguments: Vec<String>,
    /// `customHandler.description.workingDirectory`, if set (relative to the app folder).
    pub working_directory: Option<String>,
    /// `customHandler.enableForwardingHttpRequest` (default false, as in Azure).
    pub forwarding: bool,
    /// `extensions.http.routePrefix` without slashes (default `api`; may be empty).
    pub route_prefix: String,
    /// `functionTimeout` (default 5 minutes, the Consumption plan's default).
    pub function_timeout: Duration,
    /// Functions sorted by name.
    pub functions: Vec<Function>,
}

/// One function (a folder with a `function.json`).
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub file: PathBuf,
    pub trigger: Trigger,
    /// Every binding as declared (name, type, direction), in file order.
    pub bindings: Vec<Binding>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub kind: String,
    pub direction: String,
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Http(HttpTrigger),
    Timer(TimerTrigger),
}

impl Trigger {
    /// `"httpTrigger"` or `"timerTrigger"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Http(_) => "httpTrigger",
            Trigger::Timer(_) => "timerTrigger",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The trigger binding's name (e.g. `req`).
    pub binding: String,
    pub auth: AuthLevel,
    /// Upper-case methods; empty means every method (Azure's default when `methods` is absent).
    pub methods: Vec<String>,
    /// The route template (defaults to the function name).
    pub route: RouteTemplate,
    /// The name of the `http` output binding (`res`, or `$return`), if any.
    pub output: Option<String>,
    /// True when the host forwards the raw request at its original path instead of sending an
    /// invocation payload: forwarding is on and the function has exactly one `httpTrigger` input
    /// and one `http` output, nothing else.
    pub forwarded: bool,
}

impl HttpTrigger {
    pub fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

#[derive(Debug, Clone)]
pub struct TimerTrigger {
    pub binding: String,
    /// The schedule as written, e.g. `%SALDO_SWEEP_SCHEDULE%` or `0 */5 * * * *`.
    pub schedule_text: String,
    /// The parsed schedule: set by [`load_app`] for literal schedules and by
    /// [`App::resolve_settings`] for `%NAME%` ones.
    pub schedule: Option<Ncrontab>,
    pub run_on_startup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLevel {
    Anonymous,
    Function,
    Admin,
}

/// A concrete request that an app's handler must serve (see [`App::http_examples`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpExample {
    pub function: String,
    pub method: String,
    /// Full path with the route prefix, e.g. `/api/products/abc`.
    pub path: String,
    pub auth: AuthLevel,
}

/// The result of routing a request.
#[derive(Debug)]
pub enum Match<'a> {
    Found {
        function: &'a Function,
        http: &'a HttpTrigger,
        /// Route parameters, e.g. `{"id": "42"}`.
        params: BTreeMap<String, String>,
    },
    /// Some route matched the path but none allows the method. Note: the real Functions host
    /// answers such requests 404 (azure-functions-host#10098), and so does our server; this
    /// variant exists so configuration checks can tell the two cases apart.
    MethodNotAllowed {
        allowed: Vec<String>,
    },
    NotFound,
}

impl App {
    /// Routes `method` + `path` (the URL path, with the route prefix, e.g. `/api/products/1`).
    pub fn route(&self, method: &str, path: &str) -> Match<'_> {
        let Some(rest) = strip_prefix(path, &self.route_prefix) else {
            return Match::NotFound;
        };
        let decoded: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                urlencoding::decode(s)
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|_| s.to_string())
            })
            .collect();
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();

        let mut found: Vec<(&Function, &HttpTrigger, BTreeMap<String, String>)> = Vec::new();
        let mut allowed = Vec::new();
        for f in &self.functions {
            let Trigger::Http(h) = &f.trigger else {
                continue;
            };
            if let Some(params) = h.route.matches(&segs) {
                if h.allows(method) {
                    found.push((f, h, params));
                } else {
                    allowed.extend(h.methods.iter().cloned());
                }
            }
        }
        // The most specific template wins (literal before parameter), then the name, so the
        // choice never depends on the order folders were listed in.
        found.sort_by(|a, b| {
            a.1.route
                .precedence()
                .cmp(&b.1.route.precedence())
                .then_with(|| a.0.name.cmp(&b.0.name))
        });
        match found.into_iter().next() {
            Some((function, http, params)) => Match::Found {
                function,
                http,
                params,
            },
            None if !allowed.is_empty() => {
                allowed.sort();
                allowed.dedup();
                Match::MethodNotAllowed { allowed }
            }
            None => Match::NotFound,
        }
    }

    /// One concrete request per HTTP function, method and route shape, e.g.
    /// `("products", "GET", "/api/products/abc")`: what a handler must serve for this app. A
    /// function without `methods` (every method) is listed with GET and POST.
    pub fn http_examples(&self) -> Vec<HttpExample> {
        let mut out = Vec::new();
        for f in &self.functions {
            let Trigger::Http(h) = &f.trigger else {
                continue;
            };
            let methods: Vec<String> = if h.methods.is_empty() {
                vec!["GET".into(), "POST".into()]
            } else {
                h.methods.clone()
            };
            for path in h.route.examples() {
                let full = match (self.route_prefix.is_empty(), path.is_empty()) {
                    (true, _) => format!("/{path}"),
                    (false, true) => format!("/{}", self.route_prefix),
                    (false, false) => format!("/{}/{path}", self.route_prefix),
                };
                for m in &methods {
                    out.push(HttpExample {
                        function: f.name.clone(),
                        method: m.clone(),
                        path: full.clone(),
                        auth: h.auth,
                    });
                }
            }
        }
        out
    }

    /// Names of the timer functions (each is invoked as `POST /<name>`).
    pub fn timer_functions(&self) -> Vec<&str> {
        self.functions
            .iter()
            .filter(|f| matches!(f.trigger, Trigger::Timer(_)))
            .map(|f| f.name.as_str())
            .collect()
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Replaces `%NAME%` in timer schedules with app settings from `lookup` and parses them. A
    /// missing setting or a bad schedule is refused, naming the setting and the function's file.
    pub fn resolve_settings(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<App, ConfigError> {
        for f in &mut self.functions {
            if let Trigger::Timer(t) = &mut f.trigger {
                let text =
                    resolve_percent(&t.schedule_text, &lookup).map_err(|r| err(&f.file, r))?;
                t.schedule = Some(Ncrontab::parse(&text).map_err(|r| err(&f.file, r))?);
            }
        }
        Ok(self)
    }
}

/// `"/api/x"` with prefix `"api"` → `Some("x")`; an empty prefix strips only the slash.
fn strip_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let path = path.trim_start_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    let head = path.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Resolves every `%NAME%` in `text`, as the Functions host does for binding expressions.
fn resolve_percent(text: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else {
            return Err(format!("unterminated `%` in `{text}`"));
        };
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("empty `%%` in `{text}`"));
        }
        let value = lookup(name)
            .ok_or_else(|| format!("app setting `{name}` (used in `{text}`) is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads and validates an app folder. Needs no app settings (see [`App::resolve_settings`]).
pub fn load_app(dir: &Path) -> Result<App, ConfigError> {
    let host_path = dir.join("host.json");
    let host_text = std::fs::read_to_string(&host_path)
        .map_err(|e| err(&host_path, format!("cannot read: {e}")))?;
    let host_cfg = host::parse_host(&host_path, &host_text)?;

    let mut functions = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot list folder: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, format!("cannot list folder: {e}")))?;
        let path = entry.path();
        let file = path.join("function.json");
        // Like the real host: a function is a folder holding a function.json; anything else
        // (the handler binary, READMEs, dot-folders) is not a function.
        if !path.is_dir() || !file.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text =
            std::fs::read_to_string(&file).map_err(|e| err(&file, format!("cannot read: {e}")))?;
        if let Some(f) = function::parse_function(&name, &file, &text, host_cfg.forwarding)? {
            functions.push(f);
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));

    if !host_cfg.bundle
        && functions
            .iter()
            .any(|f| !matches!(f.trigger, Trigger::Http(_)))
    {
        return Err(err(
            &host_path,
            "timer triggers need an `extensionBundle` (Microsoft.Azure.Functions.ExtensionBundle, [4.*, 5.0.0))",
        ));
    }
    if functions.is_empty() {
        // The real host starts with no functions and logs a warning; for a stand-in that is
        // almost always a wrong --app-dir, so refuse.
        return Err(err(
            dir,
            "no function folders (a folder with a function.json) found",
        ));
    }
    Ok(App {
        dir: dir.to_path_buf(),
        executable: host_cfg.executable,
        arguments: host_cfg.arguments,
        working_directory: host_cfg.working_directory,
        forwarding: host_cfg.forwarding,
        route_prefix: host_cfg.route_prefix,
        function_timeout: host_cfg.function_timeout,
        functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_settings() {
        let lookup = |k: &str| (k == "S").then(|| "*/1 * * * * *".to_string());
        assert_eq!(resolve_percent("%S%", &lookup).unwrap(), "*/1 * * * * *");
        assert!(
            resolve_percent("%MISSING%", &lookup)
                .unwrap_err()
                .contains("MISSING")
        );
        assert!(resolve_percent("%S", &lookup).is_err());
    }

    #[test]
    fn prefix() {
        assert_eq!(strip_prefix("/api/x", "api"), Some("/x"));
        assert_eq!(strip_prefix("/API", "api"), Some(""));
        assert_eq!(strip_prefix("/apix", "api"), None);
        assert_eq!(strip_prefix("/x", ""), Some("x"));
    }
}
