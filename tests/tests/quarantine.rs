//! Issue 12, item 4, on the real stack: a bad event published among good ones is quarantined by
//! every node with its reason (visible in `saldo quarantine` and `saldo status`), while the good
//! command beside it is recorded and executed.

use std::process::Command;
use std::time::Duration;

use saldo_tests::{TestStack, bin_dir, command, repo, wait_for};
use serde_json::{Value, json};

fn saldo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin_dir().join("saldo"));
    cmd.arg("--repo").arg(repo()).arg("--root").arg(root);
    cmd
}

#[tokio::test]
async fn a_bad_event_among_good_ones_is_quarantined_and_the_good_ones_complete() {
    let s = TestStack::ready().await.unwrap();
    let good = command(
        "mixed-good-1",
        json!([{"id": 1, "ean": 1111, "name": "Orange", "change": -1}]),
    );
    let mut newer = command(
        "mixed-newer-1",
        json!([{"id": 1, "ean": 1111, "name": "Orange", "change": -1}]),
    );
    newer["dataVersion"] = json!("2.0");
    s.publish(&json!([good, newer])).await.unwrap();
    let outcome = s.outcome("mixed-good-1").await.unwrap();
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert_eq!(
        s.stock(1).await.unwrap(),
        24,
        "only the good command applied"
    );

    let listed = wait_for(
        Duration::from_secs(60),
        "every node to quarantine the newer event",
        || async {
            let out = saldo(s.root())
                .args(["quarantine", "--json"])
                .output()
                .ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let all = v.as_object()?;
            (all.len() == 3
                && all.values().all(|q| {
                    q.as_array()
                        .is_some_and(|q| q.iter().any(|e| e["eventId"] == "mixed-newer-1"))
                }))
            .then_some(v)
        },
    )
    .await
    .unwrap();
    for (node, q) in listed.as_object().unwrap() {
        let e = &q.as_array().unwrap()[0];
        assert!(
            e["reason"].as_str().unwrap().contains("2.0"),
            "{node} says why: {e}"
        );
        let raw: Value = serde_json::from_str(e["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw["id"], "mixed-newer-1", "{node} kept the raw event");
    }
    let status = saldo(s.root()).args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    for row in v["components"].as_array().unwrap() {
        if row["component"].as_str().unwrap().starts_with("worker-") {
            assert_eq!(row["quarantined"], 1, "{row}");
        }
    }
    let table = saldo(s.root()).arg("quarantine").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("mixed-newer-1") && text.contains("2.0"),
        "{text}"
    );
}
