//! `--instances N`: N handler processes serve HTTP behind one host, and the timers run on an
//! instance of their own that never gets an HTTP request (Flex Consumption's per-function
//! scaling); every instance is restarted when it crashes and stopped with the app.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn requests_spread_over_http_instances_and_timers_run_on_their_own() {
    let app = write_app(
        &host_json(true),
        &[
            ("tick", timer_fn("*/1 * * * * *")),
            ("things", http_fn("anonymous", "things", &["get"])),
            ("crash", http_fn("anonymous", "crash", &["get"])),
        ],
    );
    let record = app.path().join("record.jsonl");
    let record_s = record.to_str().unwrap().to_string();
    let host = start(
        app,
        &["--instances", "2"],
        &[("TESTHANDLER_RECORD", &record_s)],
    );
    let c = client();
    let status = || async {
        c.get(format!("{}/admin/host/status", host.base))
            .header("x-functions-key", MASTER)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let st = status().await;
    let instances = st["instances"].as_array().unwrap().clone();
    let roles: Vec<&str> = instances
        .iter()
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["http", "http", "timers"], "{st}");
    let pid = |i: &Value| i["pid"].as_u64().unwrap();
    let http_pids: BTreeSet<u64> = instances[..2].iter().map(pid).collect();
    let timer_pid = pid(&instances[2]);
    assert_eq!(http_pids.len(), 2);
    assert!(!http_pids.contains(&timer_pid));

    // Requests go to both HTTP instances and never to the timer instance.
    let mut served = BTreeSet::new();
    for _ in 0..10 {
        let r: Value = c
            .get(format!("{}/api/things", host.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        served.insert(r["pid"].as_u64().unwrap());
    }
    assert_eq!(served, http_pids, "round-robin over the HTTP instances");
    // Timers reach only the timer instance.
    let lines = recorded(&record, 2, 20, "two timer invocations").await;
    for l in lines.iter().filter(|l| l["function"] == "tick") {
        assert_eq!(l["pid"].as_u64().unwrap(), timer_pid, "{l}");
    }

    // One HTTP instance crashes: the other keeps serving, and the crashed one is restarted.
    let _ = c.get(format!("{}/api/crash", host.base)).send().await;
    let st = eventually(20, "the crashed instance restarted", || async {
        let st = status().await;
        let restarted = st["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["restarts"].as_u64() >= Some(1) && i["state"] == "Running");
        restarted.then_some(st)
    })
    .await;
    let now: BTreeSet<u64> = st["instances"].as_array().unwrap()[..2]
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect();
    assert_eq!(now.len(), 2, "{st}");
    assert_eq!(
        now.intersection(&http_pids).count(),
        1,
        "one of them is new: {st}"
    );

    // Stopping the app stops every instance at once.
    let r = c
        .post(format!("{}/admin/host/stop", host.base))
        .header("x-functions-key", MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let all: Vec<u64> = now.iter().copied().chain([timer_pid]).collect();
    for p in all {
        assert!(!alive(p as u32), "instance {p} still running after stop");
    }
    let r = c
        .get(format!("{}/api/things", host.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
