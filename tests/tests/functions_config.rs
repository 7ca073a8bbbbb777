//! Issue 4, item 4: the configuration Azure reads (`functions-host/`) and the binaries agree.
//! Every function in `function.json` is served by its handler, and the handlers serve no method
//! on those paths that the host would not route to them. Checked against the real handlers,
//! reached directly on the port their host stand-in started them on.

use std::collections::BTreeSet;

use saldo_funchost::config::{App, Match, load_app};
use saldo_tests::{Options, TestStack, repo};
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// True when the handler has no route for the request (as opposed to a route that answered 404
/// for an unknown resource, with an error body of its own).
fn not_served(status: u16, body: &str) -> bool {
    if status == 405 {
        return true;
    }
    if status != 404 {
        return false;
    }
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    body.trim().is_empty() || code.as_deref() == Some("not_found")
}

async fn handler_base(s: &TestStack, host_url: &str, master: &str) -> String {
    let status: Value = s
        .http
        .get(format!("{host_url}/admin/host/status"))
        .header("x-functions-key", master)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let port = status["handler"]["port"]
        .as_u64()
        .expect("the host reports its handler's port");
    format!("http://127.0.0.1:{port}")
}

async fn check(s: &TestStack, app: &App, name: &str, base: &str) {
    let mut paths = BTreeSet::new();
    for ex in app.http_examples() {
        let resp = s
            .http
            .request(ex.method.parse().unwrap(), format!("{base}{}", ex.path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(
            !not_served(status, &body),
            "{name}/{}: the handler does not serve {} {} ({status} {body})",
            ex.function,
            ex.method,
            ex.path
        );
        paths.insert(ex.path);
    }
    for path in &paths {
        for m in METHODS {
            if matches!(app.route(m, path), Match::Found { .. }) {
                continue;
            }
            let resp = s
                .http
                .request(m.parse().unwrap(), format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                not_served(status, &body),
                "{name}: the handler serves {m} {path} ({status}), which Azure would never route to it"
            );
        }
    }
    for timer in app.timer_functions() {
        let resp = s
            .http
            .post(format!("{base}/{timer}"))
            .json(&json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "IsPastDue": false}}, "Metadata": {}}))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{name}/{timer}: {}",
            resp.status()
        );
        let v: Value = resp.json().await.unwrap();
        assert!(
            v.get("Outputs").is_some(),
            "{name}/{timer} answers the invocation protocol: {v}"
        );
    }
}

#[tokio::test]
async fn every_function_is_served_and_nothing_else() {
    let s = TestStack::start(Options {
        seed: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let worker = load_app(&repo().join("functions-host/worker")).unwrap();
    let api = load_app(&repo().join("functions-host/api")).unwrap();
    let node = s.manifest().nodes[0].clone();
    let base = handler_base(&s, &node.url, &node.master_key).await;
    check(&s, &worker, "worker", &base).await;
    let a = s.manifest().api.clone().unwrap();
    let base = handler_base(&s, &a.url, &a.master_key).await;
    check(&s, &api, "api", &base).await;
    // The API app has no timers: the worker's timer invocations must not exist there.
    for t in worker.timer_functions() {
        let resp = s
            .http
            .post(format!("{base}/{t}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            not_served(status, &resp.text().await.unwrap()),
            "api serves /{t} ({status})"
        );
    }
}
