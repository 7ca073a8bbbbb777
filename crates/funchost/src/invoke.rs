//! The custom handler invocation protocol, without I/O: building the `{"Data", "Metadata"}`
//! request payloads the host POSTs to `/<FunctionName>`, and reading the handler's
//! `{"Outputs", "Logs", "ReturnValue"}` answer.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// An HTTP request as the host describes it to a non-forwarded function.
#[derive(Debug, Clone)]
pub struct HttpRequestInfo {
    /// The full URL the client called, e.g. `http://127.0.0.1:7071/api/orders?x=1`.
    pub url: String,
    pub method: String,
    /// Query parameters (the last value wins for a repeated name, as in the host's dictionary).
    pub query: BTreeMap<String, String>,
    /// Headers; a repeated header keeps every value.
    pub headers: BTreeMap<String, Vec<String>>,
    pub params: BTreeMap<String, String>,
    pub body: String,
}

fn now_str(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// `sys` metadata the host adds to every invocation.
fn sys(function: &str, now: DateTime<Utc>, rand: uuid::Uuid) -> Value {
    json!({"MethodName": function, "UtcNow": now_str(now), "RandGuid": rand.to_string()})
}

/// The payload for an HTTP-triggered function that is not forwarded. Shaped like the sample in
/// Microsoft's custom handler article: `Query` is a JSON *string* of an object, `Headers` maps a
/// name to a list of values, `Body` is the body as a string; `Metadata` holds the trigger
/// metadata (query, headers, route parameters) as objects.
pub fn http_payload(
    function: &str,
    binding: &str,
    req: &HttpRequestInfo,
    now: DateTime<Utc>,
    rand: uuid::Uuid,
) -> Value {
    let query_obj: Map<String, Value> = req
        .query
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let headers_flat: Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.join(","))))
        .collect();
    let mut metadata = Map::new();
    for (k, v) in &req.params {
        metadata.insert(k.clone(), json!(v));
    }
    metadata.insert("Query".into(), Value::Object(query_obj.clone()));
    metadata.insert("Headers".into(), Value::Object(headers_flat));
    metadata.insert("sys".into(), sys(function, now, rand));
    json!({
        "Data": {
            binding: {
                "Url": req.url,
                "Method": req.method,
                "Query": Value::Object(query_obj).to_string(),
                "Headers": req.headers,
                "Params": req.params,
                "Body": req.body,
            }
        },
        "Metadata": metadata,
    })
}

/// Timer status carried in a timer invocation.
#[derive(Debug, Clone, Copy)]
pub struct TimerStatus {
    /// The previous occurrence that ran, if any (Azure sends `0001-01-01T00:00:00` before the first).
    pub last: Option<DateTime<Utc>>,
    pub next: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    pub is_past_due: bool,
}

/// The documented timer payload: `{"Data": {<binding>: {"Schedule", "ScheduleStatus", "IsPastDue"}}}`.
pub fn timer_payload(
    function: &str,
    binding: &str,
    st: &TimerStatus,
    now: DateTime<Utc>,
    rand: uuid::Uuid,
) -> Value {
    let last = st
        .last
        .map(now_str)
        .unwrap_or_else(|| "0001-01-01T00:00:00+00:00".to_string());
    json!({
        "Data": {
            binding: {
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {
                    "Last": last,
                    "Next": now_str(st.next),
                    "LastUpdated": now_str(st.last_updated),
                },
                "IsPastDue": st.is_past_due,
            }
        },
        "Metadata": {"sys": sys(function, now, rand)},
    })
}

/// A handler's answer to an invocation.
#[derive(Debug, Default)]
pub struct InvocationResponse {
    pub outputs: Map<String, Value>,
    pub logs: Vec<String>,
    pub return_value: Value,
}

/// Reads `{"Outputs", "Logs", "ReturnValue"}`. An empty body counts as "no outputs" (a timer
/// function has nothing to return); anything else that is not a JSON object is an error.
pub fn parse_response(body: &[u8]) -> Result<InvocationResponse, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(InvocationResponse::default());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let Value::Object(mut o) = v else {
        return Err("answer is not a JSON object".into());
    };
    let outputs = match o.remove("Outputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("`Outputs` is not an object".into()),
    };
    let logs = match o.remove("Logs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|l| match l {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        Some(_) => return Err("`Logs` is not an array".into()),
    };
    Ok(InvocationResponse {
        outputs,
        logs,
        return_value: o.remove("ReturnValue").unwrap_or(Value::Null),
    })
}

/// The HTTP response a handler produced through its `http` output binding.
#[derive(Debug, PartialEq)]
pub struct HttpOutput {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Translates an `http` output value into a response. The value is an object
/// `{"statusCode", "body", "headers"}` or that object as a JSON string; `statusCode` may be a
/// number or a numeric string (default 200); an object/array `body` is sent as JSON. `None`
/// (no value) gives 204, the Functions default for an HTTP function that sets no response.
pub fn http_output(value: Option<&Value>) -> Result<HttpOutput, String> {
    let parsed;
    let v = match value {
        None | Some(Value::Null) => {
            return Ok(HttpOutput {
                status: 204,
                headers: Vec::new(),
                body: Vec::new(),
            });
        }
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(o @ Value::Object(_)) => {
                parsed = o;
                &parsed
            }
            // A plain string is the body of a 200 response.
            _ => {
                return Ok(HttpOutput {
                    status: 200,
                    headers: Vec::new(),
                    body: s.clone().into_bytes(),
                });
            }
        },
        Some(v @ Value::Object(_)) => v,
        Some(other) => return Err(format!("http output must be an object, found {other}")),
    };
    let status = status_code(v)?;
    let mut headers = response_headers(v)?;
    let body = response_body(v, &mut headers);
    Ok(HttpOutput {
        status,
        headers,
        body,
    })
}

/// A field of the response object, its name compared case-insensitively (as the host does).
fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_object().and_then(|o| {
        o.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    })
}

/// `statusCode` (or `status`): a number or a numeric string, 100..=599, 200 when absent.
fn status_code(v: &Value) -> Result<u16, String> {
    let status = match field(v, "statusCode").or_else(|| field(v, "status")) {
        None | Some(Value::Null) => 200,
        Some(Value::Number(n)) => n.as_u64().ok_or("statusCode is not a whole number")?,
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("statusCode `{s}` is not a number"))?,
        Some(other) => return Err(format!("statusCode {other} is not a number")),
    };
    if !(100..=599).contains(&status) {
        return Err(format!("statusCode {status} is out of range"));
    }
    Ok(status as u16)
}

/// `headers`: an object of strings, arrays (one header per element) or other values (as JSON).
fn response_headers(v: &Value) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    match field(v, "headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, val) in h {
                match val {
                    Value::String(s) => headers.push((k.clone(), s.clone())),
                    Value::Array(a) => {
                        for x in a {
                            headers.push((
                                k.clone(),
                                x.as_str().map_or_else(|| x.to_string(), str::to_string),
                            ));
                        }
                    }
                    other => headers.push((k.clone(), other.to_string())),
                }
            }
        }
        Some(_) => return Err("headers must be an object".into()),
    }
    Ok(headers)
}

/// `body`: a string as it is, an object or array as JSON (with a JSON content type unless the
/// handler set one), anything else as its JSON text.
fn response_body(v: &Value, headers: &mut Vec<(String, String)>) -> Vec<u8> {
    match field(v, "body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other @ (Value::Object(_) | Value::Array(_))) => {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                headers.push((
                    "Content-Type".into(),
                    "application/json; charset=utf-8".into(),
                ));
            }
            other.to_string().into_bytes()
        }
        Some(other) => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_as_object_or_string() {
        let o = json!({"statusCode": 201, "body": {"a": 1}, "headers": {"X-A": "b"}});
        let a = http_output(Some(&o)).unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(a.body, br#"{"a":1}"#);
        assert!(a.headers.contains(&("X-A".into(), "b".into())));
        let s = Value::String(o.to_string());
        assert_eq!(http_output(Some(&s)).unwrap(), a);
        let st = json!({"statusCode": "404"});
        assert_eq!(http_output(Some(&st)).unwrap().status, 404);
        assert_eq!(http_output(None).unwrap().status, 204);
        assert!(http_output(Some(&json!({"statusCode": 99}))).is_err());
        assert!(http_output(Some(&json!(5))).is_err());
    }

    #[test]
    fn response_parsing() {
        let r = parse_response(br#"{"Outputs": {"res": {}}, "Logs": ["a", 1], "ReturnValue": 3}"#)
            .unwrap();
        assert!(r.outputs.contains_key("res"));
        assert_eq!(r.logs, vec!["a".to_string(), "1".to_string()]);
        assert_eq!(r.return_value, json!(3));
        assert!(parse_response(b"").unwrap().outputs.is_empty());
        assert!(parse_response(b"nope").is_err());
        assert!(parse_response(b"[1]").is_err());
    }
}
