//! Reading and validating a Function App folder: `host.json` and one `function.json` per function.
//!
//! [`load_app`] does all checks that need no app settings; [`App::resolve_settings`] then replaces
//! `%NAME%` in timer schedules with app settings. Both refuse bad input with a [`ConfigError`]
//! naming the file and the reason. [`App::route`] is the request router, usable in tests:
//!
//! ```no_run
//! use saldo_funchost::config::{load_app, Match};
//! let app = load_app("functions-host/worker".as_ref()).unwrap();
//! assert!(matches!(app.route("GET", "/api/products/42"), Match::Found { .. }));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

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
    let host: Value = parse_json(&host_path, &host_text)?;
    let host_cfg = parse_host(&host_path, &host)?;

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
        let json = parse_json(&file, &text)?;
        if let Some(f) = parse_function(&name, &file, &json, host_cfg.forwarding)? {
            functions.push(f);
        }
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));

    if host_cfg.bundle.is_none()
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

fn parse_json(file: &Path, text: &str) -> Result<Value, ConfigError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| err(file, format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(err(file, "must be a JSON object"));
    }
    Ok(v)
}

struct HostConfig {
    executable: String,
    arguments: Vec<String>,
    working_directory: Option<String>,
    forwarding: bool,
    route_prefix: String,
    function_timeout: Duration,
    bundle: Option<()>,
}

fn opt_str<'v>(file: &Path, v: &'v Value, key: &str) -> Result<Option<&'v str>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(file, format!("`{key}` must be a string"))),
    }
}

fn parse_host(file: &Path, v: &Value) -> Result<HostConfig, ConfigError> {
    match opt_str(file, v, "version")? {
        Some("2.0") => {}
        Some(other) => {
            return Err(err(
                file,
                format!("`version` must be \"2.0\", found \"{other}\""),
            ));
        }
        None => return Err(err(file, "`version` is missing (must be \"2.0\")")),
    }
    let ch = v
        .get("customHandler")
        .ok_or_else(|| err(file, "`customHandler` is missing"))?;
    let desc = ch
        .get("description")
        .ok_or_else(|| err(file, "`customHandler.description` is missing"))?;
    let executable = opt_str(file, desc, "defaultExecutablePath")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            err(
                file,
                "`customHandler.description.defaultExecutablePath` is missing or empty",
            )
        })?
        .to_string();
    let arguments = match desc.get("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                err(
                    file,
                    "`customHandler.description.arguments` must be an array of strings",
                )
            })?,
        Some(_) => {
            return Err(err(
                file,
                "`customHandler.description.arguments` must be an array of strings",
            ));
        }
    };
    let working_directory = opt_str(file, desc, "workingDirectory")?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let forwarding = match ch.get("enableForwardingHttpRequest") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(err(
                file,
                "`customHandler.enableForwardingHttpRequest` must be true or false",
            ));
        }
    };
    let bundle = match v.get("extensionBundle") {
        None | Some(Value::Null) => None,
        Some(b) => {
            let id = opt_str(file, b, "id")?;
            if id != Some("Microsoft.Azure.Functions.ExtensionBundle") {
                return Err(err(
                    file,
                    "`extensionBundle.id` must be \"Microsoft.Azure.Functions.ExtensionBundle\"",
                ));
            }
            if opt_str(file, b, "version")?.is_none_or(|s| s.trim().is_empty()) {
                return Err(err(
                    file,
                    "`extensionBundle.version` is missing (e.g. \"[4.*, 5.0.0)\")",
                ));
            }
            Some(())
        }
    };
    let route_prefix = match v.pointer("/extensions/http") {
        Some(http) => opt_str(file, http, "routePrefix")?.unwrap_or("api"),
        None => "api",
    }
    .trim_matches('/')
    .to_string();
    let function_timeout = match opt_str(file, v, "functionTimeout")? {
        None => Duration::from_secs(300),
        Some(s) => parse_timespan(s)
            .ok_or_else(|| err(file, format!("`functionTimeout` \"{s}\" is not hh:mm:ss")))?,
    };
    Ok(HostConfig {
        executable,
        arguments,
        working_directory,
        forwarding,
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

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

/// Parses one function.json. `Ok(None)` for a function marked `"disabled": true`.
fn parse_function(
    name: &str,
    file: &Path,
    v: &Value,
    forwarding: bool,
) -> Result<Option<Function>, ConfigError> {
    // The host's rule for function names.
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(err(
            file,
            format!(
                "function name `{name}` (the folder name) must start with a letter and hold only letters, digits, `_` and `-`"
            ),
        ));
    }
    if v.get("disabled").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let Some(Value::Array(raw)) = v.get("bindings") else {
        return Err(err(file, "`bindings` must be an array"));
    };
    let mut bindings = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        if !b.is_object() {
            return Err(err(file, format!("bindings[{i}] must be an object")));
        }
        let field = |k: &str| -> Result<String, ConfigError> {
            opt_str(file, b, k)?
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| err(file, format!("bindings[{i}].{k} is missing")))
        };
        let binding = Binding {
            name: field("name")?,
            kind: field("type")?,
            direction: field("direction")?.to_ascii_lowercase(),
        };
        if !["in", "out", "inout"].contains(&binding.direction.as_str()) {
            return Err(err(
                file,
                format!("bindings[{i}].direction must be in, out or inout"),
            ));
        }
        if bindings
            .iter()
            .any(|x: &Binding| x.name.eq_ignore_ascii_case(&binding.name))
        {
            return Err(err(
                file,
                format!("binding name `{}` is used twice", binding.name),
            ));
        }
        bindings.push(binding);
    }
    let triggers: Vec<usize> = (0..raw.len())
        .filter(|&i| bindings[i].kind.to_ascii_lowercase().ends_with("trigger"))
        .collect();
    let [t] = triggers.as_slice() else {
        return Err(err(
            file,
            format!(
                "a function needs exactly one trigger binding, found {}",
                triggers.len()
            ),
        ));
    };
    let (tb, traw) = (&bindings[*t], &raw[*t]);
    if tb.direction != "in" {
        return Err(err(
            file,
            format!("trigger `{}` must have direction `in`", tb.name),
        ));
    }
    // Only the bindings Saldo uses; anything else would silently do nothing locally.
    for b in &bindings {
        let k = b.kind.as_str();
        let ok = k.eq_ignore_ascii_case("httpTrigger")
            || k.eq_ignore_ascii_case("timerTrigger")
            || (k.eq_ignore_ascii_case("http") && b.direction == "out");
        if !ok {
            return Err(err(
                file,
                format!(
                    "binding type `{k}` ({}) is not supported by the local Functions host stand-in",
                    b.direction
                ),
            ));
        }
    }
    let trigger = if tb.kind.eq_ignore_ascii_case("httpTrigger") {
        let auth = match opt_str(file, traw, "authLevel")?
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            // Azure's default when authLevel is absent.
            None | Some("function") => AuthLevel::Function,
            Some("anonymous") => AuthLevel::Anonymous,
            // "system" keys do not exist locally; treat them like admin (master key only).
            Some("admin") | Some("system") => AuthLevel::Admin,
            Some(other) => {
                return Err(err(
                    file,
                    format!("authLevel `{other}` must be anonymous, function or admin"),
                ));
            }
        };
        let methods = match traw.get("methods") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => {
                let mut ms = Vec::new();
                for m in a {
                    let m = m
                        .as_str()
                        .map(str::to_ascii_uppercase)
                        .filter(|m| METHODS.contains(&m.as_str()))
                        .ok_or_else(|| {
                            err(file, format!("`methods` has an unknown HTTP method {m}"))
                        })?;
                    ms.push(m);
                }
                ms
            }
            Some(_) => return Err(err(file, "`methods` must be an array of strings")),
        };
        let route_text = opt_str(file, traw, "route")?.unwrap_or(name);
        let route = RouteTemplate::parse(route_text).map_err(|r| err(file, r))?;
        let outputs: Vec<&Binding> = bindings
            .iter()
            .filter(|b| b.kind.eq_ignore_ascii_case("http"))
            .collect();
        if outputs.len() > 1 {
            return Err(err(file, "at most one `http` output binding is allowed"));
        }
        let output = outputs.first().map(|b| b.name.clone());
        Trigger::Http(HttpTrigger {
            binding: tb.name.clone(),
            auth,
            methods,
            route,
            forwarded: forwarding && bindings.len() == 2 && output.is_some(),
            output,
        })
    } else {
        if bindings.len() != 1 {
            return Err(err(file, "a timer function takes no other bindings here"));
        }
        let schedule_text = opt_str(file, traw, "schedule")?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| err(file, "timerTrigger `schedule` is missing"))?
            .to_string();
        // A literal schedule is checked now; `%SETTING%` ones when settings are resolved.
        let schedule = if schedule_text.contains('%') {
            None
        } else {
            Some(Ncrontab::parse(&schedule_text).map_err(|r| err(file, r))?)
        };
        let run_on_startup = match traw.get("runOnStartup") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err(file, "`runOnStartup` must be true or false")),
        };
        Trigger::Timer(TimerTrigger {
            binding: tb.name.clone(),
            schedule_text,
            schedule,
            run_on_startup,
        })
    };
    Ok(Some(Function {
        name: name.to_string(),
        file: file.to_path_buf(),
        trigger,
        bindings,
    }))
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

    #[test]
    fn timespan() {
        assert_eq!(parse_timespan("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(parse_timespan("5"), None);
    }
}
