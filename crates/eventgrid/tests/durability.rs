//! Durability: an event answered 200 survives a crash of the emulator, pending retries keep
//! their attempt count, and the log is compacted once work is done.
//!
//! What these prove, and what not: the crash is a SIGKILL of the process, which keeps the
//! kernel's page cache, so they prove that every record is written to the log (`write(2)`)
//! before it matters (a `pub` record before its 200) and that replay rebuilds the pending work
//! from the file. They do not prove the fsync: only a power cut or a kernel crash loses what is
//! in the page cache and not on the disk. That the 200 waits for an fsync is the writer's code
//! (`append_synced`), counted by `walFsyncs`, which the first test checks an answered publish raised.
//! Before each kill the test waits for `walQueued` (records the writer has not yet written) to
//! be 0, so a kill never races the writer thread.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn accepted_events_and_pending_retries_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--time-scale", "100"]);
    let rx = Receiver::start(503).await;
    assert_eq!(
        put_subscription(&emu, "region", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    let fresh = Receiver::start(200).await;
    // A subscriber that never got a chance: its events are pending when the process dies.
    assert_eq!(
        put_subscription(
            &emu,
            "later",
            json!({"destination": webhook(&fresh.url), "filter": {"subjectBeginsWith": "never"}})
        )
        .await
        .0,
        201
    );
    let events: Vec<Value> = (0..5).map(|i| event(&format!("e{i}"), "t", "s")).collect();
    let fsyncs = get_json(&emu, "/metrics").await.1["walFsyncs"]
        .as_u64()
        .unwrap();
    assert_eq!(publish(&emu, &Value::Array(events)).await.0, 200);
    assert!(
        get_json(&emu, "/metrics").await.1["walFsyncs"]
            .as_u64()
            .unwrap()
            > fsyncs,
        "the 200 came after an fsync"
    );
    // Every event has failed once (503) and waits for its retry.
    wait_metric(&emu, "region", "retried", 5, 20).await;
    // The retry records were appended before `retried` counted them: wait until they are written.
    wal_written(&emu).await;

    let emu = emu.restart();
    rx.set_default(200);
    let m = wait_metric(&emu, "region", "delivered", 5, 30).await;
    assert_eq!(m["pending"], 0, "{m}");
    let mut ids: Vec<String> = rx
        .got()
        .iter()
        .filter(|g| g.header("aeg-delivery-count") != "0")
        .flat_map(|g| g.events())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        ["e0", "e1", "e2", "e3", "e4"],
        "every event was redelivered after the restart, counting its earlier attempt"
    );
    assert_eq!(fresh.got().len(), 0);

    // Delivered work is not delivered again after another restart. "Done" records are not
    // fsync'd (a lost one only means a duplicate, which Event Grid allows), so the kill waits
    // until the writer has written them.
    wal_written(&emu).await;
    let emu = emu.restart();
    // The restarted emulator replayed the log before it listened: nothing is pending.
    assert_eq!(
        metrics(&emu, "region").await["pending"],
        0,
        "nothing left to deliver"
    );
}

/// Waits until the log writer has written every record appended so far (`walQueued` is 0).
async fn wal_written(emu: &Emulator) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, m) = get_json(emu, "/metrics").await;
        assert_eq!(s, 200, "{m}");
        if m["walQueued"] == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log writer did not catch up: {m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_log_is_compacted_when_work_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--compact-bytes", "20000"]);
    let rx = Receiver::start(200).await;
    let props = json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": rx.url, "maxEventsPerBatch": 50}}});
    assert_eq!(put_subscription(&emu, "sink", props).await.0, 201);
    for r in 0..20 {
        let batch: Vec<Value> = (0..50)
            .map(|i| event(&format!("{r}-{i}"), "t", "s"))
            .collect();
        assert_eq!(publish(&emu, &Value::Array(batch)).await.0, 200);
    }
    wait_metric(&emu, "sink", "delivered", 1000, 30).await;
    // One more event and its delivery make the writer look at the log size again.
    assert_eq!(
        publish(&emu, &json!([event("last", "t", "s")])).await.0,
        200
    );
    wait_metric(&emu, "sink", "delivered", 1001, 30).await;
    let wal = dir.path().join("data").join("events.wal");
    // 1,000 events of ~250 bytes were written (~250 KB); compaction keeps only pending work.
    wait_for(10, "the event log to shrink", || {
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(u64::MAX) < 40_000
    })
    .await;
}
