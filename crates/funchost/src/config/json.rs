//! Reading a JSON file into a serde type, with errors that name the path in the file
//! (`bindings[1].methods[0]`, via `serde_path_to_error`) in JSON's words ("an array", "an object").

use std::path::Path;

use serde::de::DeserializeOwned;

use super::{ConfigError, err};

/// Deserializes `text` (the contents of `file`) as `T`. A syntax error is `invalid JSON: ...`;
/// a shape error names the path and what was expected there, with the line and column.
pub(super) fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            err(file, describe(&path, &inner))
        } else {
            err(file, format!("invalid JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| err(file, format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// `bindings`, `invalid type: integer `3`, expected a sequence` →
/// "`bindings` must be an array, found integer `3` (line 1, column 15)".
fn describe(path: &str, e: &serde_json::Error) -> String {
    let full = e.to_string();
    // serde_json appends the position; it is kept, in a form that reads after our sentence.
    let msg = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    let at = format!("(line {}, column {})", e.line(), e.column());
    let whole_file = path == ".";
    if let Some(rest) = msg.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let expected = json_words(expected);
        return if whole_file {
            format!("must be {expected}, found {found} {at}")
        } else {
            format!("`{path}` must be {expected}, found {found} {at}")
        };
    }
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|f| f.strip_suffix('`'))
    {
        return if whole_file {
            format!("`{field}` is missing")
        } else {
            format!("`{path}.{field}` is missing")
        };
    }
    if whole_file {
        format!("{msg} {at}")
    } else {
        format!("`{path}`: {msg} {at}")
    }
}

/// Serde's names for what it expected, in JSON's terms.
fn json_words(expected: &str) -> &str {
    match expected {
        "a sequence" => "an array",
        "a boolean" => "true or false",
        "a map" => "an object",
        e if e.starts_with("struct ") => "an object",
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        list: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        on: Option<bool>,
    }

    /// The reason without its position.
    fn reason(text: &str) -> String {
        let r = parse::<Outer>(Path::new("f.json"), text)
            .unwrap_err()
            .reason;
        r.split(" (line ").next().unwrap().to_string()
    }

    #[test]
    fn errors_name_the_path_and_what_belongs_there() {
        assert_eq!(
            reason(r#"{"list": 3}"#),
            "`list` must be an array, found integer `3`"
        );
        assert_eq!(
            reason(r#"{"list": [{"name": "a"}, {"name": 1}]}"#),
            "`list[1].name` must be a string, found integer `1`"
        );
        assert_eq!(reason(r#"{"list": [{}]}"#), "`list[0].name` is missing");
        assert!(
            reason(r#"{"list": [{"name": "a", "on": "yes"}]}"#)
                .starts_with("`list[0].on` must be true or false")
        );
        assert_eq!(reason("{}"), "`list` is missing");
        assert_eq!(reason("3"), "must be an object, found integer `3`");
        let full = parse::<Outer>(Path::new("f.json"), "{\n \"list\": 3}")
            .unwrap_err()
            .reason;
        assert!(full.ends_with("(line 2, column 10)"), "{full}");
        assert!(reason("{").starts_with("invalid JSON"));
        assert!(reason(r#"{"list": []} x"#).starts_with("invalid JSON"));
    }
}
