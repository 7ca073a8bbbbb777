//! `saldo verify` against a real SecantusDB over the wire: a consistent history written by the
//! real store code (three nodes' ledgers, executions in the warehouse) passes; each way of
//! corrupting it behind the fleet's back is caught and named, and undoing it passes again.

use std::process::Command;

use chrono::Utc;
use mongodb::bson::{Document, doc};
use saldo_core::events::ProductLine;
use saldo_store::test_util::spawn_secantus;
use saldo_store::{MongoStore, NewCommand, Store};

const DB: &str = "verifytest";
const NODES: [&str; 3] = ["westeurope", "northeurope", "swedencentral"];

fn line(id: u64, saldo: Option<i64>, change: Option<i64>) -> ProductLine {
    ProductLine {
        id,
        ean: 1000 + id,
        name: format!("Item {id}"),
        saldo,
        change,
    }
}

fn command(lines: Vec<ProductLine>) -> saldo_store::Command {
    saldo_store::Command {
        products: lines,
        traceparent: None,
        tracestate: None,
    }
}

/// Runs `saldo verify` on the database; returns (exit code, stdout).
fn verify(uri: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(["verify", "--mongodb", uri, "--database", DB])
        .args(["--horizon-secs", "0", "--stuck-after-secs", "30"])
        .args(extra)
        .output()
        .expect("run saldo verify");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout)
}

fn assert_clean(uri: &str, when: &str) {
    let (code, out) = verify(uri, &[]);
    assert_eq!(code, 0, "{when}: verify should pass:\n{out}");
    assert!(out.contains("consistent"), "{out}");
}

/// Asserts verify fails and that the table's FAIL rows name `check` (and the problem `needle`).
fn assert_caught(uri: &str, check: &str, needle: &str) {
    let (code, out) = verify(uri, &[]);
    assert_eq!(code, 2, "verify should fail on {check}:\n{out}");
    let failed_row = out
        .lines()
        .any(|l| l.starts_with(check) && l.contains("FAIL"));
    assert!(failed_row, "the {check:?} row should say FAIL:\n{out}");
    assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_a_clean_history_and_names_each_corruption() {
    let db = spawn_secantus();
    let uri = db.uri();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let raw = client.database(DB);
    let mut stores = Vec::new();
    for n in NODES {
        let s = MongoStore::connect(&uri, DB, n).await.unwrap();
        s.init().await.unwrap();
        stores.push(s);
    }

    // A history: stock two products, then purchases (one rejected), executed by various nodes;
    // every ledger records every command and outcome, as the fleet does.
    let mut txs: Vec<(String, Vec<ProductLine>)> = vec![(
        "stock".into(),
        vec![line(1, Some(10), None), line(2, Some(3), None)],
    )];
    for i in 0..8 {
        txs.push((format!("buy-{i}"), vec![line(1 + i % 2, None, Some(-1))]));
    }
    for (i, (tx, lines)) in txs.iter().enumerate() {
        let now = Utc::now();
        for s in &stores {
            s.insert_commands(&[NewCommand {
                transaction: tx.clone(),
                command: command(lines.clone()),
                received_at: now,
            }])
            .await
            .unwrap();
        }
        let exec = &stores[i % 3];
        let done = exec
            .execute(tx, lines, exec.node(), false, now)
            .await
            .unwrap();
        assert!(done.fresh);
        for s in &stores {
            s.record_outcome(tx, &done.outcome, true, now)
                .await
                .unwrap();
        }
    }
    // One accepted command, still pending in one ledger (recent: not stuck).
    raw.collection::<Document>("idempotency")
        .insert_one(
            doc! {"_id": "fresh", "key": "k", "requestHash": "h", "event": "{}",
            "acceptedAt": Utc::now().to_rfc3339(), "published": true},
        )
        .await
        .unwrap();
    stores[0]
        .insert_commands(&[NewCommand {
            transaction: "fresh".into(),
            command: command(vec![line(1, None, Some(-1))]),
            received_at: Utc::now(),
        }])
        .await
        .unwrap();

    assert_clean(&uri, "the history as written");
    let (_, out) = verify(&uri, &[]);
    assert!(out.contains("fresh"), "the pending one is listed:\n{out}");

    let warehouse = raw.collection::<Document>("warehouse");
    let ledger = |n: &str| raw.collection::<Document>(&format!("ledger_{n}"));

    // 1. A ledger's outcome disagrees with the marker.
    let ok = ledger("northeurope")
        .find_one(doc! {"_id": "buy-3"})
        .await
        .unwrap()
        .unwrap();
    ledger("northeurope")
        .update_one(
            doc! {"_id": "buy-3"},
            doc! {"$set": {"outcome.status": "rejected", "state": "rejected"}},
        )
        .await
        .unwrap();
    assert_caught(&uri, "markers agree with ledgers", "buy-3");
    ledger("northeurope")
        .replace_one(doc! {"_id": "buy-3"}, ok)
        .await
        .unwrap();
    assert_clean(&uri, "after restoring the ledger entry");

    // 2. A marker lost (the commit the issue saw vanish) while ledgers say completed.
    let marker = warehouse
        .find_one(doc! {"_id": "tx:buy-4"})
        .await
        .unwrap()
        .unwrap();
    warehouse
        .delete_one(doc! {"_id": "tx:buy-4"})
        .await
        .unwrap();
    assert_caught(&uri, "markers agree with ledgers", "lost commit");
    warehouse.insert_one(marker).await.unwrap();
    assert_clean(&uri, "after restoring the marker");

    // 3. A product's quantity that its history does not explain.
    warehouse
        .update_one(doc! {"_id": "product:1"}, doc! {"$inc": {"saldo": 5}})
        .await
        .unwrap();
    assert_caught(&uri, "stock follows its history", "product 1");
    warehouse
        .update_one(doc! {"_id": "product:1"}, doc! {"$inc": {"saldo": -5}})
        .await
        .unwrap();
    assert_clean(&uri, "after restoring the quantity");

    // 4. A purchase applied twice: its change once more on the product.
    warehouse
        .update_one(doc! {"_id": "product:2"}, doc! {"$inc": {"saldo": -1}})
        .await
        .unwrap();
    assert_caught(&uri, "nothing applied twice", "applied twice");
    // ... and two executors for one transaction.
    warehouse
        .update_one(doc! {"_id": "product:2"}, doc! {"$inc": {"saldo": 1}})
        .await
        .unwrap();
    ledger("swedencentral")
        .update_one(
            doc! {"_id": "buy-5"},
            doc! {"$set": {"outcome.node": "intruder"}},
        )
        .await
        .unwrap();
    assert_caught(&uri, "nothing applied twice", "executed by");
    let right = warehouse
        .find_one(doc! {"_id": "tx:buy-5"})
        .await
        .unwrap()
        .unwrap();
    let node = right
        .get_document("outcome")
        .unwrap()
        .get_str("node")
        .unwrap()
        .to_string();
    ledger("swedencentral")
        .update_one(doc! {"_id": "buy-5"}, doc! {"$set": {"outcome.node": node}})
        .await
        .unwrap();
    assert_clean(&uri, "after restoring the executor");

    // 5. A ledger missing an old transaction, and one still pending that others decided.
    let gone = ledger("westeurope")
        .find_one(doc! {"_id": "buy-6"})
        .await
        .unwrap()
        .unwrap();
    ledger("westeurope")
        .delete_one(doc! {"_id": "buy-6"})
        .await
        .unwrap();
    assert_caught(
        &uri,
        "every ledger holds every tx",
        "ledger_westeurope lacks buy-6",
    );
    ledger("westeurope").insert_one(gone).await.unwrap();
    ledger("northeurope")
        .update_one(
            doc! {"_id": "buy-7"},
            doc! {"$set": {"outcome": null, "state": "pending"}},
        )
        .await
        .unwrap();
    assert_caught(
        &uri,
        "every ledger holds every tx",
        "ledger_northeurope still has pending buy-7",
    );
    // A stopped region's ledger may lag: told so, verify does not count it.
    let (code, out) = verify(&uri, &["--node", "northeurope=http://127.0.0.1:9"]);
    assert_eq!(code, 0, "an unreachable node's lag is not counted:\n{out}");
    assert!(out.contains("Unreachable and 1 behind"), "{out}");

    // 6. Negative stock.
    warehouse
        .update_one(doc! {"_id": "product:2"}, doc! {"$set": {"saldo": -2}})
        .await
        .unwrap();
    assert_caught(&uri, "nothing negative", "product 2 has -2");

    // 7. An accepted command nobody recorded, for longer than the stuck limit.
    raw.collection::<Document>("idempotency")
        .insert_one(doc! {"_id": "lost-1", "key": "k2", "requestHash": "h", "event": "{}",
            "acceptedAt": (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(), "published": true})
        .await
        .unwrap();
    assert_caught(&uri, "nothing stuck", "lost-1");

    // The JSON report names the same failures.
    let (_, json) = verify(&uri, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in ["coverage", "negative", "pending"] {
        assert!(failed.contains(&id), "{id} in {failed:?}");
    }
}
