//! Route templates as the Functions host understands them (ASP.NET Core routing syntax): literal
//! segments, `{name}`, optional `{name?}`, constrained `{name:int}`, and a catch-all `{*rest}`.
//!
//! Pure code: parsing a template and matching a request path against it.

use std::collections::BTreeMap;

/// A parsed route template, e.g. `products/{id?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    /// The template as written in `function.json` (without the route prefix).
    pub text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param {
        name: String,
        constraint: Option<Constraint>,
        optional: bool,
        catch_all: bool,
    },
}

/// The inline constraints we support. ASP.NET has more (`min(1)`, `regex(...)`); an unsupported one
/// is refused at start rather than silently ignored, so a route never matches more than in Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    Int,
    Long,
    Bool,
    Alpha,
    Guid,
}

impl Constraint {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "int" => Some(Self::Int),
            "long" => Some(Self::Long),
            "bool" => Some(Self::Bool),
            "alpha" => Some(Self::Alpha),
            "guid" => Some(Self::Guid),
            _ => None,
        }
    }

    fn accepts(self, v: &str) -> bool {
        match self {
            Self::Int => v.parse::<i32>().is_ok(),
            Self::Long => v.parse::<i64>().is_ok(),
            Self::Bool => v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"),
            Self::Alpha => !v.is_empty() && v.chars().all(|c| c.is_ascii_alphabetic()),
            Self::Guid => uuid::Uuid::parse_str(v).is_ok(),
        }
    }
}

impl RouteTemplate {
    /// Parses a template. Errors are human-readable reasons (the caller adds the file name).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim_matches('/');
        let mut segments = Vec::new();
        let mut names = Vec::new();
        let raw: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        for (i, seg) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            if seg.is_empty() {
                return Err(format!("route `{text}` has an empty segment"));
            }
            if let Some(inner) = seg.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return Err(format!(
                        "route `{text}`: segment `{seg}` is not closed with `}}`"
                    ));
                };
                // A segment mixing literal text and parameters (`a{b}`) is legal in ASP.NET but
                // unused here; refusing it keeps the matcher small.
                if inner.contains('{') || inner.contains('}') {
                    return Err(format!(
                        "route `{text}`: complex segment `{seg}` is not supported"
                    ));
                }
                let (inner, catch_all) = match inner.strip_prefix("**").or(inner.strip_prefix('*'))
                {
                    Some(rest) => (rest, true),
                    None => (inner, false),
                };
                let (inner, optional) = match inner.strip_suffix('?') {
                    Some(rest) => (rest, true),
                    None => (inner, false),
                };
                let (name, constraint) = match inner.split_once(':') {
                    Some((n, c)) => {
                        let c = Constraint::parse(c).ok_or_else(|| {
                            format!("route `{text}`: unsupported constraint `{c}` (int, long, bool, alpha, guid)")
                        })?;
                        (n, Some(c))
                    }
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("route `{text}`: bad parameter name in `{seg}`"));
                }
                if names.iter().any(|n: &String| n.eq_ignore_ascii_case(name)) {
                    return Err(format!("route `{text}`: parameter `{name}` appears twice"));
                }
                // ASP.NET allows optional and catch-all parameters only at the end of a template.
                if (optional || catch_all) && !last {
                    return Err(format!(
                        "route `{text}`: optional or catch-all parameter `{name}` must be the last segment"
                    ));
                }
                names.push(name.to_string());
                segments.push(Segment::Param {
                    name: name.to_string(),
                    constraint,
                    optional,
                    catch_all,
                });
            } else {
                if seg.contains('{') || seg.contains('}') {
                    return Err(format!(
                        "route `{text}`: complex segment `{seg}` is not supported"
                    ));
                }
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// Matches path segments (already stripped of the route prefix, percent-decoded). Returns
    /// the route parameters on success. Literal segments compare case-insensitively, as in ASP.NET.
    pub fn matches(&self, path: &[&str]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Literal(lit) => {
                    let got = path.get(i)?;
                    if !got.eq_ignore_ascii_case(lit) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Param {
                    name,
                    constraint,
                    optional,
                    catch_all,
                } => {
                    if *catch_all {
                        // `{*rest}` also matches an empty remainder, as in ASP.NET.
                        let rest = path[i.min(path.len())..].join("/");
                        params.insert(name.clone(), rest);
                        i = path.len();
                        continue;
                    }
                    match path.get(i) {
                        Some(v) => {
                            if let Some(c) = constraint
                                && !c.accepts(v)
                            {
                                return None;
                            }
                            params.insert(name.clone(), (*v).to_string());
                            i += 1;
                        }
                        None if *optional => {}
                        None => return None,
                    }
                }
            }
        }
        (i == path.len()).then_some(params)
    }

    /// Concrete paths (without prefix) this template matches, with sample values for parameters
    /// (`1` for numbers, `true`, `abc`, a fixed GUID); an optional parameter gives one path
    /// without it and one with it. For checking that a handler serves every configured route.
    pub fn examples(&self) -> Vec<String> {
        let mut base: Vec<String> = Vec::new();
        let mut with_last: Option<String> = None;
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => base.push(l.clone()),
                Segment::Param {
                    constraint,
                    optional,
                    catch_all,
                    ..
                } => {
                    let sample = match constraint {
                        Some(Constraint::Int | Constraint::Long) => "1",
                        Some(Constraint::Bool) => "true",
                        Some(Constraint::Guid) => "00000000-0000-4000-8000-000000000001",
                        Some(Constraint::Alpha) | None => "abc",
                    };
                    if *optional || *catch_all {
                        with_last = Some(sample.to_string());
                    } else {
                        base.push(sample.to_string());
                    }
                }
            }
        }
        let mut out = vec![base.join("/")];
        if let Some(last) = with_last {
            base.push(last);
            out.push(base.join("/"));
        }
        out
    }

    /// Sort key: ASP.NET prefers literal segments over constrained parameters over plain ones over
    /// optional and catch-all ones. Lower sorts first.
    pub(crate) fn precedence(&self) -> Vec<u8> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Param {
                    catch_all: true, ..
                } => 4,
                Segment::Param { optional: true, .. } => 3,
                Segment::Param {
                    constraint: Some(_),
                    ..
                } => 1,
                Segment::Param { .. } => 2,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, p: &str) -> Option<BTreeMap<String, String>> {
        let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        RouteTemplate::parse(t).unwrap().matches(&segs)
    }

    #[test]
    fn literals_and_params() {
        assert!(m("orders", "orders").unwrap().is_empty());
        assert!(m("orders", "ORDERS").is_some());
        assert!(m("orders", "orders/1").is_none());
        assert_eq!(
            m("transactions/{id}", "transactions/abc").unwrap()["id"],
            "abc"
        );
        assert!(m("transactions/{id}", "transactions").is_none());
        assert!(m("products/{id?}", "products").unwrap().is_empty());
        assert_eq!(m("products/{id?}", "products/7").unwrap()["id"], "7");
        assert!(m("products/{id?}", "products/7/8").is_none());
        assert!(m("openapi.json", "openapi.json").is_some());
    }

    #[test]
    fn constraints_and_catch_all() {
        assert!(m("items/{n:int}", "items/12").is_some());
        assert!(m("items/{n:int}", "items/x").is_none());
        assert!(m("items/{n:int?}", "items").is_some());
        assert_eq!(m("files/{*rest}", "files/a/b").unwrap()["rest"], "a/b");
    }

    #[test]
    fn examples_match_their_template() {
        for t in [
            "products/{id?}",
            "items/{n:int}",
            "a/{g:guid}/b",
            "files/{*rest}",
            "x",
        ] {
            let tpl = RouteTemplate::parse(t).unwrap();
            for e in tpl.examples() {
                let segs: Vec<&str> = e.split('/').filter(|s| !s.is_empty()).collect();
                assert!(tpl.matches(&segs).is_some(), "{t}: {e}");
            }
        }
        assert_eq!(
            RouteTemplate::parse("products/{id?}").unwrap().examples(),
            ["products", "products/abc"]
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in [
            "a/{id?}/b",
            "a/{x:regex(.*)}",
            "a/{id",
            "a//b",
            "a/{id}/{ID}",
            "a{b}",
        ] {
            assert!(RouteTemplate::parse(t).is_err(), "{t} should be refused");
        }
    }
}
