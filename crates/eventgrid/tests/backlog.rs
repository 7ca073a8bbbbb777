//! A slow subscriber never makes publishing fail (its backlog spills to disk), and 429 means
//! what Azure's means: the topic's publish rate was exceeded.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn ids(r: &Receiver) -> BTreeSet<String> {
    r.got()
        .iter()
        .flat_map(|g| g.events())
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn a_stopped_subscriber_fills_its_backlog_and_publishing_still_answers_200() {
    let dir = tempfile::tempdir().unwrap();
    // At most 50 events in memory per subscription; the time scale makes the 30 s delivery
    // timeout 1 s, so the stopped subscriber's hung deliveries fail and are retried quickly.
    let args = ["--max-in-memory", "50", "--time-scale", "30"];
    let emu = Emulator::start(dir.path(), &args);
    let fast = Receiver::start(200).await;
    let slow = Receiver::start(200).await;
    for (name, r) in [("fast", &fast), ("slow", &slow)] {
        let (s, v) = put_subscription(&emu, name, json!({"destination": webhook(&r.url)})).await;
        assert_eq!(s, 201, "{v}");
    }
    slow.pause();
    let mut all = BTreeSet::new();
    for r in 0..40 {
        let batch: Vec<Value> = (0..10)
            .map(|i| {
                let id = format!("{r}-{i}");
                all.insert(id.clone());
                event(&id, "t", "s")
            })
            .collect();
        let (s, v) = publish(&emu, &Value::Array(batch)).await;
        assert_eq!(
            s, 200,
            "request {r}: a slow subscriber must not refuse publishing: {v}"
        );
    }
    // The other subscriber keeps receiving everything.
    wait_for(60, "the fast subscriber has all 400 events", || {
        ids(&fast) == all
    })
    .await;
    let m = metrics(&emu, "slow").await;
    assert_eq!(m["pending"].as_u64(), Some(400), "{m}");
    assert!(
        m["inMemory"].as_u64().unwrap() <= 50,
        "memory stays bounded: {m}"
    );
    assert!(
        m["spilled"].as_u64().unwrap() >= 350,
        "the rest waits on disk: {m}"
    );

    // The spilled backlog is durable: SIGKILL, start again, and it is still bounded in memory.
    let emu = emu.restart();
    let m = metrics(&emu, "slow").await;
    assert!(
        m["pending"].as_u64().unwrap() >= 400 - m["delivered"].as_u64().unwrap(),
        "{m}"
    );
    assert!(
        m["inMemory"].as_u64().unwrap() <= 50,
        "bounded after a restart too: {m}"
    );

    // Publishing still works after the restart, for both.
    let (s, v) = publish(&emu, &json!([event("after", "t", "s")])).await;
    assert_eq!(s, 200, "{v}");
    all.insert("after".into());

    // The slow one recovers and gets everything.
    slow.resume();
    wait_for(120, "the slow subscriber has all 401 events", || {
        ids(&slow) == all
    })
    .await;
    wait_for(60, "the fast subscriber has the late event", || {
        ids(&fast) == all
    })
    .await;
    let m = wait_metric(&emu, "slow", "delivered", 1, 10).await;
    // Delivered counts since the restart; what matters is that nothing is left.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut m = m;
    while m["pending"].as_u64() != Some(0) {
        assert!(std::time::Instant::now() < deadline, "still pending: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = metrics(&emu, "slow").await;
    }
    assert_eq!(m["spilled"].as_u64(), Some(0), "{m}");
}

fn assert_too_many_requests(v: &Value) {
    assert_eq!(v["error"]["code"], "TooManyRequests", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per second"),
        "{v}"
    );
    assert_eq!(v["error"]["details"][0]["code"], "TooManyRequests", "{v}");
}

#[tokio::test]
async fn publishing_faster_than_the_topic_rate_gets_429_with_azures_body() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--max-events-per-second", "100"]);
    let rx = Receiver::start(200).await;
    assert_eq!(
        put_subscription(&emu, "sub-1", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    let batch = |p: &str| {
        Value::Array(
            (0..100)
                .map(|i| event(&format!("{p}-{i}"), "t", "s"))
                .collect(),
        )
    };
    assert_eq!(publish(&emu, &batch("a")).await.0, 200);
    // A second second's worth at once: over the rate.
    let (s, v) = publish(&emu, &batch("b")).await;
    assert_eq!(s, 429, "{v}");
    assert_too_many_requests(&v);
    // The rate recovers with time.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(publish(&emu, &batch("c")).await.0, 200);
    wait_for(30, "200 events delivered", || rx.event_count() >= 200).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ids(&rx).iter().all(|id| !id.starts_with("b-")),
        "nothing of the refused request was accepted"
    );
    assert_eq!(rx.event_count(), 200);

    // The byte rate too (5 MB/s in Azure; 20 kB/s here).
    let dir2 = tempfile::tempdir().unwrap();
    let emu2 = Emulator::start(dir2.path(), &["--max-bytes-per-second", "20000"]);
    let big = |p: &str| {
        Value::Array(
            (0..15)
                .map(|i| {
                    let mut e = event(&format!("{p}-{i}"), "t", "s");
                    e["data"] = json!({"pad": "x".repeat(1000)});
                    e
                })
                .collect(),
        )
    };
    assert_eq!(publish(&emu2, &big("a")).await.0, 200);
    let (s, v) = publish(&emu2, &big("b")).await;
    assert_eq!(s, 429, "{v}");
    assert_too_many_requests(&v);
}
