//! The whole fleet as processes: SecantusDB, the Event Grid emulator (`saldo-eventgrid`, built
//! beforehand by `cargo build --bins`) and three `saldo-worker` processes with fast settings and
//! their own timers. Asserts the final stock and every node's ledger.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saldo_core::ledger::ranking;
use saldo_store::test_util::{Secantus, free_port, spawn_secantus, spawn_secantus_at};
use serde_json::{Value, json};

const NODES: [&str; 3] = ["westeurope", "northeurope", "swedencentral"];
const KEY: &str = "fleet-test-topic-key";

use saldo_testkit::KillOnDrop as Proc;

struct Fleet {
    db: Secantus,
    /// Where the database keeps its data when it must survive a restart.
    db_dir: Option<PathBuf>,
    _dir: tempfile::TempDir,
    _topic: Proc,
    topic: String,
    ports: Vec<u16>,
    workers: Vec<Option<Proc>>,
    uri: String,
    http: reqwest::Client,
}

/// The emulator binary, built beforehand (`cargo build --bins`; `./dev test` does).
fn eventgrid_binary() -> PathBuf {
    saldo_testkit::workspace_binary("saldo-eventgrid")
}

/// Polls `f` until it holds; panics naming `what` after `limit` ([`saldo_testkit::until`]).
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    saldo_testkit::until(limit, what, async || f().await.then_some(())).await
}

impl Fleet {
    /// `persistent`: the database keeps its data on disk, so it can be stopped and started.
    async fn start(persistent: bool) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = persistent.then(|| dir.path().join("db"));
        let db = match &db_dir {
            Some(d) => {
                std::fs::create_dir_all(d).unwrap();
                spawn_secantus_at(free_port(), d)
            }
            None => spawn_secantus(),
        };
        let eg_port = free_port();
        let topic = Proc(
            Command::new(eventgrid_binary())
                .args([
                    "--port",
                    &eg_port.to_string(),
                    "--key",
                    KEY,
                    "--time-scale",
                    "20",
                ])
                .arg("--data-dir")
                .arg(dir.path().join("eg"))
                .arg("--deadletter-dir")
                .arg(dir.path().join("dl"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let ports: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
        let mut fleet = Fleet {
            uri: db.uri(),
            db,
            db_dir,
            _dir: dir,
            _topic: topic,
            topic: format!("http://127.0.0.1:{eg_port}"),
            ports,
            workers: NODES.iter().map(|_| None).collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let http = fleet.http.clone();
        let health = format!("{}/healthz", fleet.topic);
        wait_until("the emulator", Duration::from_secs(30), || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                http.get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        for i in 0..NODES.len() {
            fleet.start_worker(i).await;
        }
        for i in 0..NODES.len() {
            fleet.subscribe(i).await;
        }
        fleet
    }

    /// Creates node `i`'s subscription (the handshake reaches the worker).
    async fn subscribe(&self, i: usize) {
        let node = NODES[i];
        let body = json!({"properties": {"destination": {"endpointType": "WebHook", "properties": {
            "endpointUrl": format!("{}/api/eventgrid", self.url(i)), "maxEventsPerBatch": 20}}}});
        let r = self
            .http
            .put(format!("{}/subscriptions/{node}-sub", self.topic))
            .header("aeg-sas-key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "subscription for {node}: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
    }

    /// Deletes node `i`'s subscription: the topic drops what it still had to deliver there.
    async fn unsubscribe(&self, i: usize) {
        let r = self
            .http
            .delete(format!("{}/subscriptions/{}-sub", self.topic, NODES[i]))
            .header("aeg-sas-key", KEY)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "unsubscribe: {}", r.status());
    }

    async fn counter(&self, i: usize, name: &str) -> u64 {
        self.get(i, "/api/status").await.expect("status")["counters"][name]
            .as_u64()
            .unwrap_or(0)
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    async fn start_worker(&mut self, i: usize) {
        let peers: Vec<String> = (0..NODES.len())
            .filter(|j| *j != i)
            .map(|j| self.url(j))
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_saldo-worker"))
            .args(["--port", &self.ports[i].to_string()])
            .env("SALDO_NODE", NODES[i])
            .env("SALDO_REGION", NODES[i])
            .env("SALDO_MONGODB_URI", &self.uri)
            .env("SALDO_DATABASE", "saldo")
            .env("SALDO_TOPIC_ENDPOINT", format!("{}/api/events", self.topic))
            .env("SALDO_TOPIC_KEY", KEY)
            .env("SALDO_PUBLIC_URL", self.url(i))
            .env("SALDO_PEERS", peers.join(","))
            .env("SALDO_TAKEOVER_MS", "1500")
            .env("SALDO_LIVENESS_MS", "4000")
            .env("SALDO_CATCHUP_EVERY", "3")
            .env("SALDO_STANDALONE_TIMERS", "1")
            .env("SALDO_HEARTBEAT_SCHEDULE", "* * * * * *")
            .env("SALDO_SWEEP_SCHEDULE", "* * * * * *")
            // SALDO_TEST_WORKER_LOG=info shows what the workers decided when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("SALDO_TEST_WORKER_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.workers[i] = Some(Proc(child));
        let (http, url) = (self.http.clone(), format!("{}/api/status", self.url(i)));
        wait_until("a worker to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    fn db_down(&mut self) {
        self.db.kill();
    }

    fn db_up(&mut self) {
        let dir = self.db_dir.clone().expect("a persistent database");
        self.db = spawn_secantus_at(self.db.port, &dir);
    }

    fn kill_worker(&mut self, i: usize) {
        self.workers[i] = None;
    }

    async fn publish(&self, events: Value) {
        let r = self
            .http
            .post(format!("{}/api/events?api-version=2018-01-01", self.topic))
            .header("aeg-sas-key", KEY)
            .json(&events)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "publish: {}", r.status());
    }

    async fn get(&self, i: usize, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url(i)))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Waits until node `i`'s ledger has an outcome for `tx`; returns the entry.
    async fn outcome(&self, i: usize, tx: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(e) = self.get(i, &format!("/api/ledger/{tx}")).await
                && e["state"] != "pending"
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} has no outcome for {tx} after {limit:?}", NODES[i]);
    }

    /// Every live node agrees on every transaction's outcome and executor.
    async fn assert_agree(&self, txs: &[String], nodes: &[usize]) -> Vec<Value> {
        let mut first = Vec::new();
        for tx in txs {
            let mut seen: Option<(Value, Value)> = None;
            for &i in nodes {
                let e = self.outcome(i, tx, Duration::from_secs(60)).await;
                let key = (e["state"].clone(), e["executedBy"].clone());
                match &seen {
                    None => {
                        seen = Some(key);
                        first.push(e);
                    }
                    Some(k) => assert_eq!(k, &key, "{} disagrees about {tx}", NODES[i]),
                }
            }
        }
        first
    }

    async fn stock(&self, id: u64) -> i64 {
        self.get(0, &format!("/api/products/{id}"))
            .await
            .expect("product")["saldo"]
            .as_i64()
            .unwrap()
    }

    async fn executed_total(&self) -> u64 {
        let mut n = 0;
        for i in 0..NODES.len() {
            if self.workers[i].is_some() {
                n += self
                    .get(i, "/api/status")
                    .await
                    .map(|s| s["counters"]["executed"].as_u64().unwrap_or(0))
                    .unwrap_or(0);
            }
        }
        n
    }
}

fn command(tx: &str, products: Value) -> Value {
    json!({"id": tx, "eventType": "recordUpdated", "subject": "warehouse/products", "eventTime": chrono::Utc::now(),
           "dataVersion": "1.0", "metadataVersion": "1", "data": {"products": products}})
}

fn orange(change: i64) -> Value {
    json!({"id": 1, "ean": 1111, "name": "Orange", "change": change})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_executes_once_takes_over_and_catches_up() {
    let mut fleet = Fleet::start(false).await;
    let all = [0, 1, 2];

    // Stock, then purchases, one of them published three times and the rest out of order.
    fleet
        .publish(json!([command(
            "stock",
            json!([
            {"id": 1, "ean": 1111, "name": "Orange", "saldo": 10},
            {"id": 2, "ean": 2222, "name": "Apple", "saldo": 1}])
        )]))
        .await;
    fleet.assert_agree(&["stock".into()], &all).await;
    let buy = command("buy-a", json!([orange(-2)]));
    fleet
        .publish(json!([buy.clone(), command("buy-b", json!([orange(-1)]))]))
        .await;
    fleet.publish(json!([buy.clone()])).await;
    fleet
        .publish(json!([command("buy-c", json!([orange(-3)])), buy]))
        .await;
    // Multi-line, all or nothing: Apple has 1, needs 2.
    fleet
        .publish(json!([command(
            "multi",
            json!([orange(-1), {"id": 2, "ean": 2222, "name": "Apple", "change": -2}])
        )]))
        .await;
    // Decided before the race below takes the Apple (deliveries to different owners run
    // concurrently, so publication order alone orders nothing).
    fleet.assert_agree(&["multi".into()], &all).await;
    // Two buyers race for the last Apple.
    fleet
        .publish(json!([
            command(
                "race-1",
                json!([{"id": 2, "ean": 2222, "name": "Apple", "change": -1}])
            ),
            command(
                "race-2",
                json!([{"id": 2, "ean": 2222, "name": "Apple", "change": -1}])
            )
        ]))
        .await;
    let txs: Vec<String> = ["buy-a", "buy-b", "buy-c", "multi", "race-1", "race-2"]
        .map(String::from)
        .to_vec();
    let outcomes = fleet.assert_agree(&txs, &all).await;
    assert_eq!(outcomes[3]["state"], "rejected");
    assert_eq!(
        outcomes[3]["reason"],
        "out of stock: Apple (id 2) has 1, needs 2"
    );
    let race: Vec<&Value> = outcomes[4..].iter().map(|e| &e["state"]).collect();
    assert!(
        race.contains(&&json!("completed")) && race.contains(&&json!("rejected")),
        "one buyer wins: {race:?}"
    );
    assert_eq!(fleet.stock(1).await, 10 - 2 - 1 - 3);
    assert_eq!(fleet.stock(2).await, 0);
    assert_eq!(
        fleet.executed_total().await,
        7,
        "every transaction executed exactly once"
    );

    // The owner of a transaction is killed before it arrives: the next in line executes it.
    let tx = (0..)
        .map(|i| format!("orphan-{i}"))
        .find(|t| ranking(t, NODES)[0] == NODES[0])
        .unwrap();
    fleet.kill_worker(0);
    // Nothing of what follows may reach the region by redelivery: its subscription goes while
    // it is down (the topic drops its pending events), so only catch-up can bring it back.
    fleet.unsubscribe(0).await;
    let killed_at = Instant::now();
    fleet
        .publish(json!([command(&tx, json!([orange(-1)]))]))
        .await;
    let e = fleet.outcome(1, &tx, Duration::from_secs(60)).await;
    assert_eq!(e["state"], "completed");
    assert_ne!(e["executedBy"], NODES[0]);
    eprintln!("takeover of {tx} took {:?}", killed_at.elapsed());
    // A purchase while the region is down, then it comes back and catches up from its peers.
    fleet
        .publish(json!([command("while-down", json!([orange(-1)]))]))
        .await;
    fleet
        .outcome(2, "while-down", Duration::from_secs(60))
        .await;
    fleet.start_worker(0).await;
    fleet.subscribe(0).await;
    let mut txs = txs;
    txs.extend([tx, "while-down".to_string()]);
    fleet.assert_agree(&txs, &all).await;
    // The two it missed came through catch-up (the restarted process counts from zero).
    assert!(
        fleet.counter(0, "catchUpRepairs").await >= 2,
        "catch-up repaired what the region missed"
    );
    assert_eq!(fleet.stock(1).await, 10 - 2 - 1 - 3 - 1 - 1);
    // Fleet-wide database round trips per transaction, background work (heartbeats, sweeps,
    // catch-up) included: a rough figure for the report; `saldo bench` measures it properly.
    let mut ops = 0;
    for i in 0..NODES.len() {
        ops += fleet.get(i, "/api/status").await.unwrap()["counters"]["dbOps"]
            .as_u64()
            .unwrap();
    }
    eprintln!(
        "{} database round trips for {} transactions ({:.1} each, background included)",
        ops,
        txs.len() + 1,
        ops as f64 / (txs.len() + 1) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_down_then_up_loses_nothing() {
    let mut fleet = Fleet::start(true).await;
    let all = [0, 1, 2];
    fleet
        .publish(json!([command(
            "stock",
            json!([{"id": 1, "ean": 1111, "name": "Orange", "saldo": 5}])
        )]))
        .await;
    fleet.assert_agree(&["stock".into()], &all).await;
    fleet.db_down();
    // Deliveries now get 503 and Event Grid retries them.
    fleet
        .publish(json!([command("p1", json!([orange(-1)]))]))
        .await;
    fleet
        .publish(json!([command("p2", json!([orange(-2)]))]))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        fleet.get(0, "/api/products").await.is_none(),
        "reads fail while the database is down"
    );
    fleet.db_up();
    fleet.assert_agree(&["p1".into(), "p2".into()], &all).await;
    assert_eq!(fleet.stock(1).await, 5 - 1 - 2);
    assert_eq!(
        fleet.executed_total().await,
        3,
        "every transaction executed exactly once"
    );
}
