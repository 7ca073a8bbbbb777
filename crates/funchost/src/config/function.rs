//! One `function.json`: the shape serde reads, then the rules of the bindings Saldo uses.
//!
//! No `deny_unknown_fields`: the Functions host passes a binding's properties to its extension,
//! which ignores what it does not know (`useMonitor` on a timer, `dataType`, ...), and ignores
//! unknown top-level fields, so refusing them would refuse apps Azure runs. Binding *types* the
//! stand-in does not implement are refused (they would silently do nothing locally).

use std::path::Path;

use serde::Deserialize;

use super::{AuthLevel, Binding, ConfigError, Function, HttpTrigger, TimerTrigger, Trigger, err};
use crate::route::RouteTemplate;
use crate::schedule::Ncrontab;

#[derive(Debug, Deserialize)]
struct FunctionJson {
    disabled: Option<bool>,
    bindings: Vec<RawBinding>,
}

/// Every property of the binding types the stand-in implements (`httpTrigger`, `http`,
/// `timerTrigger`); each is read only where its type uses it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBinding {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    direction: Option<String>,
    auth_level: Option<String>,
    methods: Option<Vec<String>>,
    route: Option<String>,
    schedule: Option<String>,
    run_on_startup: Option<bool>,
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

/// Parses one function.json of the function `name` (its folder). `Ok(None)` for a function
/// marked `"disabled": true`.
pub(super) fn parse_function(
    name: &str,
    file: &Path,
    text: &str,
    forwarding: bool,
) -> Result<Option<Function>, ConfigError> {
    check_name(name, file)?;
    let json: FunctionJson = super::json::parse(file, text)?;
    if json.disabled == Some(true) {
        return Ok(None);
    }
    let bindings = read_bindings(file, &json.bindings)?;
    let t = the_trigger(file, &bindings)?;
    check_supported(file, &bindings)?;
    let (tb, traw) = (&bindings[t], &json.bindings[t]);
    let trigger = if tb.kind.eq_ignore_ascii_case("httpTrigger") {
        Trigger::Http(http_trigger(
            name, file, t, tb, traw, &bindings, forwarding,
        )?)
    } else {
        Trigger::Timer(timer_trigger(file, t, tb, traw, &bindings)?)
    };
    Ok(Some(Function {
        name: name.to_string(),
        file: file.to_path_buf(),
        trigger,
        bindings,
    }))
}

/// The host's rule for function names.
fn check_name(name: &str, file: &Path) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Name, type and direction of every binding, each present, directions known, names unique.
fn read_bindings(file: &Path, raw: &[RawBinding]) -> Result<Vec<Binding>, ConfigError> {
    let mut bindings: Vec<Binding> = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let field = |value: &Option<String>, k: &str| -> Result<String, ConfigError> {
            value
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(file, format!("`bindings[{i}].{k}` is missing")))
        };
        let binding = Binding {
            name: field(&b.name, "name")?,
            kind: field(&b.kind, "type")?,
            direction: field(&b.direction, "direction")?.to_ascii_lowercase(),
        };
        if !["in", "out", "inout"].contains(&binding.direction.as_str()) {
            return Err(err(
                file,
                format!("`bindings[{i}].direction` must be in, out or inout"),
            ));
        }
        if bindings
            .iter()
            .any(|x| x.name.eq_ignore_ascii_case(&binding.name))
        {
            return Err(err(
                file,
                format!("binding name `{}` is used twice", binding.name),
            ));
        }
        bindings.push(binding);
    }
    Ok(bindings)
}

/// The index of the one trigger binding, which must be an input.
fn the_trigger(file: &Path, bindings: &[Binding]) -> Result<usize, ConfigError> {
    let triggers: Vec<usize> = (0..bindings.len())
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
    if bindings[*t].direction != "in" {
        return Err(err(
            file,
            format!("trigger `{}` must have direction `in`", bindings[*t].name),
        ));
    }
    Ok(*t)
}

/// Only the bindings Saldo uses; anything else would silently do nothing locally.
fn check_supported(file: &Path, bindings: &[Binding]) -> Result<(), ConfigError> {
    for b in bindings {
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
    Ok(())
}

fn http_trigger(
    name: &str,
    file: &Path,
    at: usize,
    tb: &Binding,
    raw: &RawBinding,
    bindings: &[Binding],
    forwarding: bool,
) -> Result<HttpTrigger, ConfigError> {
    let auth = match raw
        .auth_level
        .as_deref()
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
                format!(
                    "`bindings[{at}].authLevel` `{other}` must be anonymous, function or admin"
                ),
            ));
        }
    };
    let mut methods = Vec::new();
    for (j, m) in raw.methods.iter().flatten().enumerate() {
        let upper = m.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            return Err(err(
                file,
                format!("`bindings[{at}].methods[{j}]` `{m}` is not an HTTP method"),
            ));
        }
        methods.push(upper);
    }
    let route =
        RouteTemplate::parse(raw.route.as_deref().unwrap_or(name)).map_err(|r| err(file, r))?;
    let outputs: Vec<&Binding> = bindings
        .iter()
        .filter(|b| b.kind.eq_ignore_ascii_case("http"))
        .collect();
    if outputs.len() > 1 {
        return Err(err(file, "at most one `http` output binding is allowed"));
    }
    let output = outputs.first().map(|b| b.name.clone());
    Ok(HttpTrigger {
        binding: tb.name.clone(),
        auth,
        methods,
        route,
        forwarded: forwarding && bindings.len() == 2 && output.is_some(),
        output,
    })
}

fn timer_trigger(
    file: &Path,
    at: usize,
    tb: &Binding,
    raw: &RawBinding,
    bindings: &[Binding],
) -> Result<TimerTrigger, ConfigError> {
    if bindings.len() != 1 {
        return Err(err(file, "a timer function takes no other bindings here"));
    }
    let schedule_text = raw
        .schedule
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            err(
                file,
                format!("`bindings[{at}].schedule` of the timerTrigger is missing"),
            )
        })?;
    // A literal schedule is checked now; `%SETTING%` ones when settings are resolved.
    let schedule = if schedule_text.contains('%') {
        None
    } else {
        Some(Ncrontab::parse(&schedule_text).map_err(|r| err(file, r))?)
    };
    Ok(TimerTrigger {
        binding: tb.name.clone(),
        schedule_text,
        schedule,
        run_on_startup: raw.run_on_startup.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> String {
        match parse_function("f", Path::new("f/function.json"), text, true) {
            Ok(_) => panic!("{text} was accepted"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn a_bad_binding_is_refused_naming_its_path() {
        let r = reason(
            r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get", 5]}]}"#,
        );
        assert!(
            r.starts_with("`bindings[0].methods[1]` must be a string, found integer `5`"),
            "{r}"
        );
        let r = reason(
            r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get", "fetch"]}]}"#,
        );
        assert_eq!(r, "`bindings[0].methods[1]` `fetch` is not an HTTP method");
        let r = reason(
            r#"{"bindings": [{"type": "http", "direction": "out", "name": "res"}, {"type": "timerTrigger", "direction": "in", "name": "t", "schedule": "0 * * * * *", "runOnStartup": 1}]}"#,
        );
        assert!(
            r.starts_with("`bindings[1].runOnStartup` must be true or false"),
            "{r}"
        );
        assert_eq!(
            reason(r#"{"bindings": [{"type": "httpTrigger", "direction": "in"}]}"#),
            "`bindings[0].name` is missing"
        );
        assert!(reason(r#"{"bindings": 3}"#).starts_with("`bindings` must be an array"));
        assert!(reason(r#"{"bindings": [3]}"#).starts_with("`bindings[0]` must be an object"));
    }

    #[test]
    fn properties_azure_passes_to_the_extension_are_accepted() {
        let f = parse_function(
            "sweep",
            Path::new("sweep/function.json"),
            r#"{"scriptFile": "x", "bindings": [{"type": "timerTrigger", "direction": "in", "name": "t",
                "schedule": "%S%", "useMonitor": true}]}"#,
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("enabled");
        assert!(
            matches!(f.trigger, Trigger::Timer(ref t) if t.schedule_text == "%S%" && !t.run_on_startup)
        );
    }
}
