//! Issue 12, item 1: nothing acknowledged is lost when a process of the stack is SIGKILLed during
//! load. Each test kills the real process (SecantusDB, the Event Grid emulator, a Functions host,
//! a handler instance) while work flows, starts it again where the platform would, and checks
//! every write that was acknowledged before the kill.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use mongodb::bson::{Document, doc};
use saldo_core::events::ProductLine;
use saldo_stack::config::Component;
use saldo_store::{MongoStore, Store};
use saldo_tests::{Options, TestStack, wait_for};

/// A product of its own, so the counter check sees only this test's transactions.
const PRODUCT: u64 = 900;
const INITIAL: i64 = 1_000_000;

fn line(change: Option<i64>, saldo: Option<i64>) -> ProductLine {
    ProductLine {
        id: PRODUCT,
        ean: 4_000_000_000_900,
        name: "Crash test dummy".into(),
        saldo,
        change,
    }
}

async fn store(uri: &str, node: &str) -> MongoStore {
    let store = MongoStore::connect(uri, "saldo", node)
        .await
        .expect("connect");
    store.init().await.expect("init");
    store
}

/// Commits warehouse transactions (stock change + marker, the workers' very transaction) from
/// `clients` concurrent clients until `stop`; returns the ids whose commit was acknowledged.
async fn commit_until(uri: &str, clients: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let uri = uri.to_string();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let store = store(&uri, &format!("crash-{c}")).await;
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let tx = format!("crash-{c}-{i}");
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    store.execute(&tx, &[line(Some(-1), None)], "test", false, Utc::now()),
                )
                .await;
                match r {
                    Ok(Ok(ex)) => {
                        assert!(ex.fresh, "{tx} is new");
                        acked.push(tx);
                    }
                    // The database is being killed: the commit was not acknowledged.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

/// Every acknowledged transaction's marker is there, and the stock agrees with the markers
/// (each marker is exactly one unit). Returns the acknowledged transactions that were lost.
async fn check_warehouse(s: &TestStack, acked: &[String]) -> Vec<String> {
    let db = s.database().await.unwrap();
    let warehouse = db.collection::<Document>("warehouse");
    let mut present = std::collections::BTreeSet::new();
    let mut cursor = warehouse
        .find(doc! {"_id": {"$regex": "^tx:crash-"}})
        .await
        .unwrap();
    use futures::TryStreamExt;
    while let Some(d) = cursor.try_next().await.unwrap() {
        present.insert(
            d.get_str("_id")
                .unwrap()
                .trim_start_matches("tx:")
                .to_string(),
        );
    }
    let product = warehouse
        .find_one(doc! {"_id": format!("product:{PRODUCT}")})
        .await
        .unwrap()
        .expect("the product survives");
    let saldo = product.get_i64("saldo").unwrap();
    assert_eq!(
        saldo,
        INITIAL - present.len() as i64,
        "the stock moved exactly once per marker (all or nothing per transaction)"
    );
    acked
        .iter()
        .filter(|t| !present.contains(*t))
        .cloned()
        .collect()
}

/// Commits under load, SIGKILLs SecantusDB, restarts it on the same storage path; returns
/// (acknowledged commits, commits per second before the kill, lost acknowledged commits).
async fn kill_database_under_load(sync_on_commit: bool) -> (usize, f64, Vec<String>) {
    let mut s = TestStack::start(Options {
        components: vec![Component::Mongodb],
        seed: false,
        mongodb_sync_on_commit: sync_on_commit,
        ..Options::default()
    })
    .await
    .expect("SecantusDB starts");
    let uri = s.manifest().mongodb.as_ref().unwrap().uri.clone();
    let setup = store(&uri, "crash-setup").await;
    setup
        .execute(
            "setup-crash",
            &[line(None, Some(INITIAL))],
            "test",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (uri, stop) = (uri.clone(), stop.clone());
        async move { commit_until(&uri, 4, stop).await }
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.sigkill("mongodb").await.unwrap();
    let ran = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    s.stack.start_component("mongodb").await.unwrap();
    let lost = check_warehouse(&s, &acked).await;
    let rate = acked.len() as f64 / ran.as_secs_f64();
    (acked.len(), rate, lost)
}

#[tokio::test]
async fn a_sigkilled_database_keeps_every_acknowledged_transaction() {
    let (acked, rate, lost) = kill_database_under_load(true).await;
    println!("--sync-on-commit: {acked} acknowledged commits ({rate:.0}/s), lost: {lost:?}");
    assert!(acked > 10, "the load committed something ({acked})");
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged commits lost: {lost:?}",
        lost.len()
    );
}

/// The measurement behind `--sync-on-commit` (run with `--ignored`): commits per second with
/// and without it, same clients, and what a SIGKILL loses without it.
#[tokio::test]
#[ignore = "a measurement: prints figures"]
async fn sync_on_commit_cost_and_what_is_lost_without_it() {
    for round in 0..2 {
        for sync in [false, true] {
            let (acked, rate, lost) = kill_database_under_load(sync).await;
            println!(
                "round {round} sync_on_commit={sync}: {acked} acknowledged commits, {rate:.1} commits/s, {} lost",
                lost.len()
            );
        }
    }
}

/// Places orders of one orange from `clients` concurrent shoppers until `stop`, retrying each
/// order's own Idempotency-Key while the stack is disturbed; returns the transactions whose
/// order was acknowledged (202).
fn shoppers(
    s: &TestStack,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let api = s.api();
    let http = s.http.clone();
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (api, http, stop) = (api.clone(), http.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = uuid::Uuid::new_v4().to_string();
                    // A shopper retries the same key a few times, as the SPA does.
                    for _ in 0..20 {
                        let r = http
                            .post(format!("{api}/api/orders"))
                            .header("Idempotency-Key", &key)
                            .json(&serde_json::json!({"lines": [{"id": 1, "quantity": 1}]}))
                            .send()
                            .await;
                        if let Ok(r) = r
                            && r.status().as_u16() == 202
                            && let Ok(v) = r.json::<serde_json::Value>().await
                            && let Some(tx) = v["transaction"].as_str()
                        {
                            acked.push(tx.to_string());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                acked
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("shopper"));
        }
        all
    })
}

/// Every acknowledged purchase is terminal, and the oranges sold are exactly the completed
/// purchases (25 seeded).
async fn every_acknowledged_purchase_settles(s: &TestStack, acked: &[String]) {
    assert!(acked.len() >= 5, "the load placed orders ({})", acked.len());
    let mut completed = 0;
    for tx in acked {
        let o = s.outcome(tx).await.unwrap();
        if o["status"] == "completed" {
            completed += 1;
        }
    }
    assert_eq!(
        s.stock(1).await.unwrap(),
        25 - completed,
        "stock moved once per completed purchase ({completed} of {})",
        acked.len()
    );
}

/// Shoppers running in the background while a test injects its fault.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// Starts two shoppers and lets them buy for a while before the fault.
async fn begin(s: &TestStack) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let task = shoppers(s, 2, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    Load { stop, task }
}

/// Lets them buy a while longer after the fault, stops them, and checks every acknowledged
/// order.
async fn end(s: &TestStack, load: Load) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop.store(true, Ordering::Relaxed);
    let acked = load.task.await.unwrap();
    println!("{} purchases acknowledged under the fault", acked.len());
    every_acknowledged_purchase_settles(s, &acked).await;
}

#[tokio::test]
async fn a_sigkilled_topic_loses_no_acknowledged_event() {
    let mut s = TestStack::ready().await.unwrap();
    // Published straight to the topic (no API record behind them: only the topic's log can
    // keep these), each acknowledged one must reach every node.
    let stop = Arc::new(AtomicBool::new(false));
    let topic = s.manifest().topic.clone().unwrap();
    let http = s.http.clone();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let tx = format!("topic-kill-{i}");
                let r = http
                    .post(format!("{}?api-version=2018-01-01", topic.endpoint))
                    .header("aeg-sas-key", &topic.key)
                    .json(&serde_json::json!([saldo_tests::command(
                        &tx,
                        serde_json::json!([{"id": 1, "ean": 1111, "name": "Orange", "change": -1}])
                    )]))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    acked.push(tx);
                }
                // About 20 events a second: enough to catch the kill mid-write, few to check.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.sigkill("topic").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stack.start_component("topic").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    println!("{} events acknowledged around the kill", acked.len());
    every_acknowledged_purchase_settles(&s, &acked).await;
    for tx in &acked {
        for region in s.regions() {
            wait_for(
                Duration::from_secs(60),
                &format!("{region} to record {tx}"),
                || async { s.ledger(&region, tx).await.ok().flatten() },
            )
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn a_sigkilled_host_loses_no_acknowledged_purchase() {
    let mut s = TestStack::ready().await.unwrap();
    let load = begin(&s).await;
    // The region's whole app dies (host and, by its parent-death signal, its handler); the
    // platform starts it again.
    s.sigkill("worker-westeurope").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stack.start_component("worker-westeurope").await.unwrap();
    end(&s, load).await;
}

#[tokio::test]
async fn a_sigkilled_handler_instance_loses_no_acknowledged_purchase() {
    let s = TestStack::ready().await.unwrap();
    let load = begin(&s).await;
    // Every region's handler instance dies mid-request; each host restarts its own.
    for region in s.regions() {
        let node = s.manifest().node(&region).unwrap().clone();
        let v: serde_json::Value = s
            .http
            .get(format!("{}/admin/host/status", node.url))
            .header("x-functions-key", &node.master_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pid = v["handler"]["pid"]
            .as_i64()
            .expect("the host reports its handler's pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    end(&s, load).await;
}
