//! Issue 12, item 2: the real `saldo up` restarts whatever dies. Each kind of component (the
//! database, the topic, every regional host, the API, the SPA server when built) is SIGKILLed in
//! turn; it comes back on its own, `saldo status` shows the restart and how it died, and a
//! purchase through the API still completes. A region stopped on purpose is not a death.

use std::process::{Command, Stdio};
use std::time::Duration;

use saldo_stack::Manifest;
use saldo_tests::{bin_dir, group_alive, repo, wait_for};
use serde_json::{Value, json};

fn saldo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("saldo"));
    cmd.arg("--repo").arg(repo()).arg("--root").arg(root);
    cmd
}

/// Stops the supervisor (SIGTERM: it stops its components) if the test fails half-way, and
/// keeps the pids of the components the test saw, which the end of the test checks.
struct Guard(#[allow(dead_code)] saldo_testkit::TerminateOnDrop, Vec<i32>);

/// Buys one orange through the API, retrying the same Idempotency-Key while the stack recovers,
/// and waits until the purchase completes. Returns the transaction id.
async fn buy(http: &reqwest::Client, api: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    let tx = wait_for(
        Duration::from_secs(120),
        "the API to accept an order",
        || {
            let key = key.clone();
            async move {
                let resp = http
                    .post(format!("{api}/api/orders"))
                    .header("Idempotency-Key", key)
                    .json(&json!({"lines": [{"id": 1, "quantity": 1}]}))
                    .send()
                    .await
                    .ok()?;
                if resp.status().as_u16() != 202 {
                    return None;
                }
                let v: Value = resp.json().await.ok()?;
                v["transaction"].as_str().map(str::to_string)
            }
        },
    )
    .await
    .unwrap();
    let outcome = wait_for(Duration::from_secs(120), "the purchase to complete", || {
        let tx = tx.clone();
        async move {
            let v: Value = http
                .get(format!("{api}/api/transactions/{tx}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["status"] != "pending" && v["status"].is_string()).then_some(v)
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome["status"], "completed", "{outcome}");
    tx
}

#[tokio::test]
async fn every_kind_of_component_sigkilled_comes_back_and_purchases_complete() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let log = std::fs::File::create(root.join("up.log")).unwrap();
    let child = saldo(root)
        .args(["up", "--time-scale", "20"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("saldo up starts");
    let pid = child.id();
    let mut guard = Guard(
        saldo_testkit::TerminateOnDrop {
            child,
            grace: Duration::from_secs(60),
        },
        vec![],
    );
    let m = wait_for(Duration::from_secs(240), "the stack manifest", || async {
        Manifest::load(root).ok().filter(|m| m.pid == pid)
    })
    .await
    .expect("the stack comes up");
    let api = m.api.as_ref().expect("the API runs").url.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    buy(&http, &api).await;

    let names: Vec<String> = m.processes.iter().map(|p| p.name.clone()).collect();
    assert!(
        ["mongodb", "topic", "worker-westeurope", "api"]
            .iter()
            .all(|n| names.iter().any(|m| m == n)),
        "{names:?}"
    );
    for name in &names {
        let before = Manifest::load(root).unwrap();
        let old = before.processes.iter().find(|p| &p.name == name).unwrap();
        assert_eq!(old.restarts, 0, "{name} has not been restarted yet");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let fresh = wait_for(
            Duration::from_secs(60),
            &format!("{name} to be restarted"),
            || async {
                let m = Manifest::load(root).ok()?;
                let p = m.processes.iter().find(|p| &p.name == name)?.clone();
                (p.restarts == 1 && p.pid != old.pid).then_some(p)
            },
        )
        .await
        .unwrap();
        let exit = fresh.last_exit.as_ref().expect("the death is recorded");
        assert!(exit.status.contains("SIGKILL"), "{name}: {exit:?}");
        guard.1.push(fresh.pid);
        // The stack is usable again: a purchase goes all the way through.
        let tx = buy(&http, &api).await;
        println!(
            "{name} restarted (pid {} -> {}); {tx} completed",
            old.pid, fresh.pid
        );
    }

    // `saldo status` shows every component up, each restarted once, and how it died.
    let healthy = wait_for(Duration::from_secs(60), "saldo status healthy", || async {
        let out = saldo(root).arg("status").arg("--json").output().ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("status --json is JSON"))
    })
    .await
    .unwrap();
    for row in healthy["components"].as_array().unwrap() {
        assert_eq!(row["state"], "up", "{row}");
        assert_eq!(row["restarts"], 1, "{row}");
        assert!(
            row["last_exit"]["status"]
                .as_str()
                .unwrap_or_default()
                .contains("SIGKILL"),
            "{row}"
        );
    }
    let table = saldo(root).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("restarts") && text.contains("SIGKILL"),
        "{text}"
    );

    // Stopping a region on purpose is not a death: nothing is restarted.
    let region = saldo(root)
        .args(["region", "stop", "northeurope"])
        .output()
        .unwrap();
    assert!(region.status.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = Manifest::load(root).unwrap();
    let host = m
        .processes
        .iter()
        .find(|p| p.name == "worker-northeurope")
        .unwrap();
    assert_eq!(host.restarts, 1, "a stopped region is not restarted");
    buy(&http, &api).await;
    assert!(
        saldo(root)
            .args(["region", "start", "northeurope"])
            .status()
            .unwrap()
            .success()
    );

    // Stopping the stack stops the restarted processes too.
    let pids = std::mem::take(&mut guard.1);
    drop(guard);
    for p in pids {
        assert!(!group_alive(p), "restarted group {p} is gone after stop");
    }
}
