//! saldo-funchost as a real process in front of the real test handler, over HTTP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn forwarding_app() -> tempfile::TempDir {
    write_app(
        &host_json(true),
        &[
            (
                "things",
                http_fn("anonymous", "things/{id?}", &["get", "post"]),
            ),
            ("secure", http_fn("function", "secure", &["get"])),
            ("admin", http_fn("admin", "adminonly", &[])),
            ("crash", http_fn("anonymous", "crash", &["get"])),
        ],
    )
}

#[tokio::test]
async fn forwards_requests_unchanged_and_checks_keys() {
    let host = start(
        forwarding_app(),
        &[],
        &[("TESTHANDLER_SETTING", "from-host-env")],
    );
    let c = client();
    let b = &host.base;

    let r = c
        .post(format!("{b}/api/things/7?x=1&y=a%20b&code=ignored"))
        .header("X-Custom", "v1")
        .header("Content-Type", "text/plain")
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-test-echo"],
        "yes",
        "handler headers come back"
    );
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["path"], "/api/things/7",
        "forwarded at its original path"
    );
    assert_eq!(echo["query"], "x=1&y=a%20b&code=ignored", "query unchanged");
    assert_eq!(echo["body"], "hello body");
    assert_eq!(echo["headers"]["x-custom"], json!(["v1"]));
    assert_eq!(echo["headers"]["content-type"], json!(["text/plain"]));
    assert!(
        echo["headers"]["x-azure-functions-invocationid"][0]
            .as_str()
            .is_some()
    );
    assert_eq!(echo["runtime"], "custom");
    assert_eq!(
        echo["setting"], "from-host-env",
        "app settings are the host's environment"
    );

    let r = c.get(format!("{b}/api/things")).send().await.unwrap();
    assert_eq!(r.status(), 200, "optional route parameter");

    // Keys.
    let get = |path: &str| c.get(format!("{b}{path}"));
    assert_eq!(get("/api/secure").send().await.unwrap().status(), 401);
    assert_eq!(
        get("/api/secure?code=wrong").send().await.unwrap().status(),
        401
    );
    assert_eq!(
        get(&format!("/api/secure?code={FUNCTION}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/secure")
            .header("x-functions-key", FUNCTION)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/secure")
            .header("x-functions-key", MASTER)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/adminonly")
            .header("x-functions-key", FUNCTION)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/api/adminonly")
            .header("x-functions-key", MASTER)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // No `methods` means every method.
    let del = c
        .delete(format!("{b}/api/adminonly?code={MASTER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);

    // Unknown routes, and (like Azure's host) a known route with the wrong method: 404.
    assert_eq!(get("/api/nothing").send().await.unwrap().status(), 404);
    assert_eq!(get("/elsewhere").send().await.unwrap().status(), 404);
    assert_eq!(get("/api/things/1/2").send().await.unwrap().status(), 404);
    assert_eq!(
        c.delete(format!("{b}/api/things/1"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Control needs the master key.
    assert_eq!(
        get("/admin/host/status").send().await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/admin/host/status")
            .header("x-functions-key", FUNCTION)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let st: Value = get("/admin/host/status")
        .header("x-functions-key", MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["state"], "Running");
}

#[tokio::test]
async fn non_forwarded_functions_get_invocation_payloads() {
    let app = write_app(
        &host_json(false),
        &[("orders", http_fn("anonymous", "orders/{id}", &["post"]))],
    );
    let host = start(app, &["--handler", handler_bin()], &[]);
    let r = client()
        .post(format!("{}/api/orders/42?q=1", host.base))
        .header("X-Custom", "v1")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "statusCode from Outputs.res");
    assert_eq!(
        r.headers()["x-invoked"],
        "orders",
        "headers from Outputs.res"
    );
    let line: Value = r.json().await.unwrap();
    assert_eq!(line["function"], "orders", "POST /<FunctionName>");
    assert_eq!(line["method"], "POST");
    assert!(line["invocationId"].as_str().is_some_and(|s| s.len() == 36));
    let req = &line["payload"]["Data"]["req"];
    assert_eq!(req["Method"], "POST");
    assert!(req["Url"].as_str().unwrap().ends_with("/api/orders/42?q=1"));
    // Query arrives as a JSON string (as in Microsoft's sample), Headers as an object.
    let query: Value = serde_json::from_str(req["Query"].as_str().unwrap()).unwrap();
    assert_eq!(query, json!({"q": "1"}));
    assert_eq!(req["Headers"]["x-custom"], json!(["v1"]));
    assert_eq!(req["Params"], json!({"id": "42"}));
    let body: Value = serde_json::from_str(req["Body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"a": 1}));
    let meta = &line["payload"]["Metadata"];
    assert_eq!(meta["id"], "42");
    assert_eq!(meta["Query"]["q"], "1");
    assert_eq!(meta["sys"]["MethodName"], "orders");
}

#[tokio::test]
async fn timer_fires_on_schedule_with_the_documented_payload() {
    let app = write_app(
        &host_json(true),
        &[
            ("tick", timer_fn("%TICK_SCHEDULE%")),
            ("things", http_fn("anonymous", "things", &["get"])),
        ],
    );
    let record = app.path().join("record.jsonl");
    let record_s = record.to_str().unwrap().to_string();
    let _host = start(
        app,
        &[],
        &[
            ("TICK_SCHEDULE", "*/1 * * * * *"),
            ("TESTHANDLER_RECORD", &record_s),
        ],
    );
    let lines: Vec<Value> = recorded(&record, 2, 20, "two timer invocations").await;
    for l in &lines {
        assert_eq!(l["function"], "tick");
        assert_eq!(l["method"], "POST");
        assert!(l["invocationId"].as_str().is_some());
        let t = &l["payload"]["Data"]["timer"];
        assert!(t["IsPastDue"].is_boolean());
        for k in ["Last", "Next", "LastUpdated"] {
            let s = t["ScheduleStatus"][k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} missing in {t}"));
            chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{k}={s}: {e}"));
        }
        assert!(t["Schedule"].is_object());
        assert_eq!(l["payload"]["Metadata"]["sys"]["MethodName"], "tick");
    }
    // The second run knows when the first one was due.
    assert_ne!(
        lines[1]["payload"]["Data"]["timer"]["ScheduleStatus"]["Last"],
        "0001-01-01T00:00:00+00:00"
    );
    let next = |l: &Value| {
        l["payload"]["Data"]["timer"]["ScheduleStatus"]["Next"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(next(&lines[0]) < next(&lines[1]), "Next advances");
}

/// No timer reaches a stopped app: while stopped, every tick is skipped (counted in
/// `timerTicksSkipped`, which the test waits on instead of sleeping) and nothing reaches a
/// handler; started again, the timer fires again.
#[tokio::test]
async fn timers_skip_their_ticks_while_the_app_is_stopped() {
    let (host, record) = ticking_host(&[]);
    let c = client();
    let b = host.base.clone();
    let admin = |method: reqwest::Method, path: &str| {
        c.request(method, format!("{b}{path}"))
            .header("x-functions-key", MASTER)
    };
    recorded(&record, 1, 20, "a timer invocation while running").await;
    let st: Value = admin(reqwest::Method::POST, "/admin/host/stop")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["state"], "Stopped");
    // The handler is gone: whatever it recorded is all it will ever record.
    let invocations = || {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = invocations();
    let skipped = st["timerTicksSkipped"].as_u64().expect("a count");
    eventually(20, "two timer ticks skipped while stopped", || async {
        let st: Value = admin(reqwest::Method::GET, "/admin/host/status")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (st["timerTicksSkipped"].as_u64()? >= skipped + 2).then_some(())
    })
    .await;
    assert_eq!(
        invocations(),
        before,
        "no tick reached a handler while stopped"
    );

    let r = admin(reqwest::Method::POST, "/admin/host/start")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    recorded(
        &record,
        before + 1,
        20,
        "a timer invocation after the start",
    )
    .await;
}

#[tokio::test]
async fn missing_schedule_setting_is_refused() {
    let app = write_app(
        &host_json(true),
        &[("tick", timer_fn("%NOT_SET_ANYWHERE%"))],
    );
    let (code, err) = start_failing(app.path(), &[], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("NOT_SET_ANYWHERE"), "names the setting: {err}");
    assert!(err.contains("tick/function.json"), "names the file: {err}");
}

#[tokio::test]
async fn crashed_handler_is_restarted() {
    let host = start(forwarding_app(), &[], &[]);
    let c = client();
    let echo = |c: reqwest::Client, b: String| async move {
        let r = c.get(format!("{b}/api/things")).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    };
    let pid1 = echo(c.clone(), host.base.clone()).await.unwrap()["pid"]
        .as_u64()
        .unwrap();
    let r = c
        .get(format!("{}/api/crash", host.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_server_error(),
        "the crashing request fails: {}",
        r.status()
    );
    let pid2 = eventually(20, "a restarted handler", || {
        let (c, b) = (c.clone(), host.base.clone());
        async move {
            let e = echo(c, b).await?;
            e["pid"].as_u64().filter(|p| *p != pid1)
        }
    })
    .await;
    assert!(!alive(pid1 as u32), "the crashed handler is gone");
    assert!(alive(pid2 as u32));
    let st: Value = c
        .get(format!("{}/admin/host/status", host.base))
        .header("x-functions-key", MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(st["handler"]["restarts"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test]
async fn stop_answers_403_and_start_serves_again() {
    let mut host = start(forwarding_app(), &[], &[]);
    let c = client();
    let b = host.base.clone();
    let pid1 = c
        .get(format!("{b}/api/things"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;

    let admin = |path: &str| {
        c.post(format!("{b}{path}"))
            .header("x-functions-key", MASTER)
    };
    assert_eq!(
        c.post(format!("{b}/admin/host/stop"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let st: Value = admin("/admin/host/stop")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["state"], "Stopped");
    assert!(!alive(pid1), "stop kills the handler");

    for path in [
        "/api/things",
        "/api/nothing",
        &format!("/api/secure?code={FUNCTION}"),
    ] {
        let r = c.get(format!("{b}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.text().await.unwrap().contains("This web app is stopped."));
    }
    let st: Value = c
        .get(format!("{b}/admin/host/status"))
        .header("x-functions-key", MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["state"], "Stopped");

    let r = admin("/admin/host/start").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "Running");
    let e: Value = c
        .get(format!("{b}/api/things"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid2 = e["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid1, pid2);

    // SIGTERM stops the host and its handler: no orphans.
    let host_pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(host_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "host did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually(10, "the handler to exit with its host", || async {
        (!alive(pid2)).then_some(())
    })
    .await;
}

#[test]
fn malformed_configuration_is_refused_naming_the_file() {
    let good = http_fn("anonymous", "x", &["get"]).to_string();
    let app = write_app_raw("{ \"version\": \"2.0\", ", &[("x", good.clone())]);
    let (code, err) = start_failing(app.path(), &[], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("host.json") && err.contains("invalid JSON"),
        "{err}"
    );

    let host = host_json(true).to_string();
    let cases = [
        ("{\"bindings\": 3}", "`bindings` must be an array"),
        ("not json", "invalid JSON"),
        (
            r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "everyone"}]}"#,
            "authLevel",
        ),
        (
            r#"{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req", "route": "a/{id?}/b"}]}"#,
            "last segment",
        ),
        (
            r#"{"bindings": [{"type": "timerTrigger", "direction": "in", "name": "t", "schedule": "* * * * *"}]}"#,
            "six fields",
        ),
        (
            r#"{"bindings": [{"type": "queueTrigger", "direction": "in", "name": "q"}]}"#,
            "not supported",
        ),
    ];
    for (text, reason) in cases {
        let app = write_app_raw(&host, &[("x", good.clone()), ("bad", text.to_string())]);
        let (code, err) = start_failing(app.path(), &[], &[]);
        assert_ne!(code, 0, "{text}");
        assert!(err.contains("bad/function.json"), "names the file: {err}");
        assert!(err.contains(reason), "gives the reason `{reason}`: {err}");
    }
}

#[test]
fn handler_that_never_listens_fails_the_start() {
    let app = forwarding_app();
    let started = Instant::now();
    let (code, err) = start_failing(
        app.path(),
        &["--startup-timeout-ms", "1000"],
        &[("TESTHANDLER_MODE", "never-listen")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("did not open port"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the timeout is honoured"
    );

    let (code, err) = start_failing(app.path(), &[], &[("TESTHANDLER_MODE", "exit")]);
    assert_ne!(code, 0);
    assert!(err.contains("exited"), "{err}");

    let (code, err) = start_failing(app.path(), &["--handler", "/nonexistent/handler"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/handler"), "{err}");
}

/// A host whose one function, `tick`, is a timer firing every second; the test handler records
/// every invocation in the returned file. `env`: more settings for the handler.
fn ticking_host(env: &[(&str, &str)]) -> (HostProc, std::path::PathBuf) {
    let app = write_app(&host_json(true), &[("tick", timer_fn("*/1 * * * * *"))]);
    let record = app.path().join("record.jsonl");
    let record_s = record.to_str().unwrap().to_string();
    let mut env = env.to_vec();
    env.push(("TESTHANDLER_RECORD", &record_s));
    (start(app, &[], &env), record)
}

#[tokio::test]
async fn a_slow_timer_run_makes_the_next_tick_skip() {
    let (_host, record) = ticking_host(&[("TESTHANDLER_SLOW_MS", "1500")]);
    let lines: Vec<Value> = recorded(&record, 2, 30, "two slow timer runs").await;
    // One run at a time: each run started after the previous one ended.
    for w in lines.windows(2) {
        let (end, start) = (
            w[0]["endedMs"].as_u64().unwrap(),
            w[1]["startedMs"].as_u64().unwrap(),
        );
        assert!(start >= end, "runs overlap: {} then {}", w[0], w[1]);
    }
}

#[tokio::test]
async fn requests_during_a_restart_get_503() {
    // A long first backoff keeps the handler down for a while after the crash.
    let host = start(
        forwarding_app(),
        &[
            "--restart-backoff-ms",
            "3000",
            "--restart-backoff-max-ms",
            "3000",
        ],
        &[],
    );
    let c = client();
    let r = c
        .get(format!("{}/api/crash", host.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    let r = c
        .get(format!("{}/api/things", host.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    eventually(20, "the handler to be back", || {
        let (c, b) = (c.clone(), host.base.clone());
        async move {
            (c.get(format!("{b}/api/things")).send().await.ok()?.status() == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_host_takes_its_handler_along() {
    let mut host = start(forwarding_app(), &[], &[]);
    let e: Value = client()
        .get(format!("{}/api/things", host.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = e["pid"].as_u64().unwrap() as u32;
    // SIGKILL: no chance to clean up; the kernel's parent-death signal must end the handler.
    host.child.kill().unwrap();
    host.child.wait().unwrap();
    eventually(10, "the orphaned handler to exit", || async {
        (!alive(pid)).then_some(())
    })
    .await;
}

/// Launchers read the host's stdout for its `listening on` line: the handler prints one of its
/// own (on a port nobody should call), and a restart prints another, so the handler's stdout must
/// go elsewhere (stderr). Checked after a request and a crash and restart of the handler.
#[tokio::test]
async fn stdout_carries_only_the_listening_on_line() {
    let mut host = start(forwarding_app(), &[], &[]);
    let c = client();
    let status = |c: &reqwest::Client, b: &str| {
        c.get(format!("{b}/admin/host/status"))
            .header("x-functions-key", MASTER)
            .send()
    };
    let pid = |v: &Value| v["handler"]["pid"].as_u64();
    let before: Value = status(&c, &host.base).await.unwrap().json().await.unwrap();
    let first = pid(&before).expect("a running handler");
    assert!(
        c.get(format!("{}/api/things", host.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // The handler crashes; the supervisor starts a new one, which prints its line again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(30, "the handler to be restarted", || async {
        let v: Value = status(&c, &host.base).await.ok()?.json().await.ok()?;
        (v["handler"]["state"] == "Running" && pid(&v).is_some_and(|p| p != first)).then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "host did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The reader thread sees EOF once the host and its handlers are gone.
    eventually(10, "the host's stdout to close", || async {
        (std::sync::Arc::strong_count(&host.stdout) == 1).then_some(())
    })
    .await;
    let lines = host.stdout.lock().unwrap().clone();
    assert_eq!(lines, [format!("listening on {}", host.base)], "{lines:?}");
}
