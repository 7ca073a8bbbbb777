//! A tiny custom handler for saldo-funchost's own tests (not shipped anywhere).
//!
//! - `/api/...` (forwarded requests): answers 200 with JSON describing what it received (method,
//!   path, query, headers, body) plus its pid and a few environment values. `/api/crash` exits.
//! - `POST /<FunctionName>` (invocations): appends `{"function", "invocationId", "payload"}` as one
//!   line to the file in `TESTHANDLER_RECORD` (if set) and answers an `Outputs.res` echoing the
//!   payload.
//! - `TESTHANDLER_SLOW_MS=N` makes every invocation take N ms.
//! - `TESTHANDLER_MODE=never-listen` never opens its port; `exit` exits at once with status 3.

use std::collections::BTreeMap;
use std::io::Write;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    match std::env::var("TESTHANDLER_MODE").as_deref() {
        Ok("never-listen") => loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        },
        Ok("exit") => std::process::exit(3),
        _ => {}
    }
    let port: u16 = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .expect("FUNCTIONS_CUSTOMHANDLER_PORT is set by the host")
        .parse()
        .expect("a port number");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    // Real handlers announce themselves like this too; the host must keep it off its own stdout.
    println!("listening on http://127.0.0.1:{port}");
    axum::serve(listener, axum::Router::new().fallback(handle))
        .await
        .expect("serve");
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        m.entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    json!(m)
}

async fn handle(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    if path == "/api/crash" {
        std::process::exit(1);
    }
    if path.starts_with("/api/") {
        let echo = json!({
            "method": parts.method.as_str(),
            "path": path,
            "query": parts.uri.query(),
            "headers": headers_json(&parts.headers),
            "body": String::from_utf8_lossy(&body),
            "pid": std::process::id(),
            "runtime": std::env::var("FUNCTIONS_WORKER_RUNTIME").ok(),
            "setting": std::env::var("TESTHANDLER_SETTING").ok(),
        });
        return ([("x-test-echo", "yes")], axum::Json(echo)).into_response();
    }
    // An invocation: POST /<FunctionName>.
    let function = path.trim_start_matches('/').to_string();
    let started_ms = chrono_ms();
    if let Some(ms) = std::env::var("TESTHANDLER_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let invocation_id = parts
        .headers
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let line = json!({
        "function": function,
        "method": parts.method.as_str(),
        "invocationId": invocation_id,
        "payload": payload,
        "startedMs": started_ms,
        "endedMs": chrono_ms(),
        "pid": std::process::id(),
    });
    if let Ok(file) = std::env::var("TESTHANDLER_RECORD") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("open record file");
        writeln!(f, "{line}").expect("write record");
    }
    axum::Json(json!({
        "Outputs": {"res": {"statusCode": 201, "body": line, "headers": {"X-Invoked": function}}},
        "Logs": [format!("invoked {function}")],
        "ReturnValue": null
    }))
    .into_response()
}

/// Wall-clock milliseconds since the Unix epoch.
fn chrono_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
