//! The worker's router in-process over real HTTP (port 0), against a real SecantusDB.

use std::sync::Arc;

use chrono::Utc;
use saldo_core::events::Outcome;
use saldo_core::views::{LedgerEntryView, LedgerPage, OutcomeView, ProductView};
use saldo_store::test_util::{Secantus, spawn_secantus};
use saldo_store::{MongoStore, Store};
use saldo_worker::testing::{Captured, NoPeers};
use saldo_worker::{Config, Node, SystemClock};
use serde_json::{Value, json};

struct Fixture {
    db: Secantus,
    base: String,
    http: reqwest::Client,
    bus: Captured,
    node: Arc<Node<MongoStore, SystemClock, Captured, NoPeers>>,
}

async fn fixture() -> Fixture {
    fixture_with(saldo_worker::intake::Admission::default()).await
}

async fn fixture_with(admission: saldo_worker::intake::Admission) -> Fixture {
    let db = spawn_secantus();
    let store = MongoStore::connect(&db.uri(), "saldo", "westeurope")
        .await
        .unwrap();
    let bus = Captured::default();
    let cfg = Config {
        node: "westeurope".into(),
        region: "westeurope".into(),
        public_url: "http://127.0.0.1:1".into(),
        peers: vec![],
        takeover: chrono::Duration::seconds(10),
        liveness: chrono::Duration::seconds(15),
        peers_cache: chrono::Duration::milliseconds(200),
        catch_up_every: 5,
    };
    let node = Arc::new(
        Node::new(cfg, store, SystemClock, bus.clone(), NoPeers).with_admission(admission),
    );
    node.start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = saldo_worker::http::app(node.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fixture {
        db,
        base,
        http: reqwest::Client::new(),
        bus,
        node,
    }
}

fn command(id: &str, products: Value) -> Value {
    json!({
        "id": id, "eventType": "recordUpdated", "subject": "warehouse/products",
        "eventTime": Utc::now(), "dataVersion": "1.0", "metadataVersion": "1",
        "data": {"products": products}
    })
}

impl Fixture {
    async fn post(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/eventgrid", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn nothing_written(&self) {
        assert!(
            self.node.store.page(0, 10).await.unwrap().is_empty(),
            "the ledger must be empty"
        );
        assert!(
            self.node.store.products().await.unwrap().is_empty(),
            "the warehouse must be empty"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_cloudevents_options() {
    let f = fixture().await;
    let (status, body) = f
        .post(&json!([{
            "id": "v1", "topic": "/x", "subject": "", "eventTime": Utc::now(), "dataVersion": "2", "metadataVersion": "1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://example.invalid/x"}
        }]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
    let r = f
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/eventgrid", f.base),
        )
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["webhook-allowed-origin"], "eventgrid.azure.net");
    f.nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_400_and_write_nothing() {
    let f = fixture().await;
    let good = command(
        "ok-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
    );
    let mut wrong_version = good.clone();
    wrong_version["dataVersion"] = json!("2.0");
    let mut unknown_type = good.clone();
    unknown_type["eventType"] = json!("recordDeleted");
    let cases = [
        (json!({"not": "an array"}), "array"),
        (json!([]), "1..="),
        // Nothing valid in the delivery: it can never succeed (a mixed one is taken in part:
        // `a_mixed_delivery_takes_the_good_events_and_quarantines_the_bad`).
        (json!([wrong_version]), "dataVersion"),
        (json!([unknown_type]), "unknown event type"),
        (
            json!([command(
                "a",
                json!([{"id": 1, "ean": 11, "name": "Orange", "change": -5_000_000}])
            )]),
            "at most",
        ),
        (
            json!([command(
                "b",
                json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": -1}])
            )]),
            "0..=",
        ),
        (json!([command("c", json!([]))]), "at least one"),
        (json!([{"id": "x"}]), "malformed"),
    ];
    for (body, needle) in cases {
        let (status, answer) = f.post(&body).await;
        assert_eq!(status, 400, "{body}");
        let msg = answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // Not JSON at all, and an oversized delivery.
    let r = f
        .http
        .post(format!("{}/api/eventgrid", f.base))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let huge = "x".repeat(1024 * 1024 + 10);
    let r = f
        .http
        .post(format!("{}/api/eventgrid", f.base))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    f.nothing_written().await;
    assert!(f.bus.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_delivery_takes_the_good_events_and_quarantines_the_bad() {
    let f = fixture().await;
    let good = |id: &str| {
        command(
            id,
            json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
        )
    };
    let mut newer = good("newer-1");
    newer["dataVersion"] = json!("2.0");
    let mut unknown = good("unknown-1");
    unknown["eventType"] = json!("recordDeleted");
    let malformed = json!({"id": "broken-1", "eventType": "recordUpdated"});
    let delivery = json!([good("mixed-1"), newer, good("mixed-2"), unknown, malformed]);
    let (status, body) = f.post(&delivery).await;
    assert_eq!(status, 200, "the valid commands are acknowledged: {body}");
    assert_eq!(body["newCommands"], 2);
    assert_eq!(body["quarantined"], 3);
    for tx in ["mixed-1", "mixed-2"] {
        let (status, entry) = f.get(&format!("/api/ledger/{tx}")).await;
        assert_eq!(status, 200, "{tx} is recorded");
        assert_eq!(entry["state"], "completed", "{tx} is executed: {entry}");
    }
    let q = f.node.store.quarantined(10).await.unwrap();
    assert_eq!(q.len(), 3, "{q:?}");
    let by_id = |id: &str| {
        q.iter()
            .find(|e| e.event_id.as_deref() == Some(id))
            .unwrap()
    };
    assert!(by_id("newer-1").reason.contains("2.0"), "{q:?}");
    assert!(by_id("unknown-1").reason.contains("recordDeleted"), "{q:?}");
    assert!(by_id("broken-1").reason.contains("malformed"), "{q:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&by_id("newer-1").raw).unwrap(),
        delivery[1],
        "the raw event is kept"
    );
    // Redelivered (Event Grid retries at least once): the same entries, nothing new.
    let (status, body) = f.post(&delivery).await;
    assert_eq!(status, 200);
    assert_eq!(body["duplicates"], 2);
    assert_eq!(f.node.store.quarantined(10).await.unwrap().len(), 3);
}

fn heartbeat(node: &str, at: chrono::DateTime<Utc>) -> Value {
    json!({
        "id": format!("hb-{node}-{}", at.timestamp_millis()), "eventType": "nodeHeartbeat",
        "subject": format!("saldo/nodes/{node}"), "eventTime": at, "dataVersion": "1.0",
        "data": {"node": node, "region": node, "url": format!("http://127.0.0.9/{node}"), "ready": true,
                 "startedAt": at, "timestamp": at, "incarnation": 1}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_from_outside_the_fleet_or_the_future_are_refused_and_nothing_is_written() {
    let f = fixture_with(saldo_worker::intake::Admission {
        fleet: Some(["westeurope".to_string(), "northeurope".to_string()].into()),
        max_ahead: chrono::Duration::minutes(5),
    })
    .await;
    let peers_before = f.node.store.peers().await.unwrap();
    // Nothing but an intruder's heartbeat: a delivery that can never succeed.
    let (status, body) = f.post(&json!([heartbeat("mallory", Utc::now())])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("unknown node"), "{body}");
    // Mixed with a good command and a heartbeat stamped a year ahead: the command is taken.
    let delivery = json!([
        heartbeat("mallory", Utc::now()),
        heartbeat("northeurope", Utc::now() + chrono::Duration::days(365)),
        command(
            "admitted-1",
            json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}])
        ),
    ]);
    let (status, body) = f.post(&delivery).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["newCommands"], 1);
    assert_eq!(body["quarantined"], 2);
    let q = f.node.store.quarantined(10).await.unwrap();
    assert!(
        q.iter()
            .any(|e| e.reason.contains("unknown node \"mallory\"")),
        "{q:?}"
    );
    assert!(
        q.iter()
            .any(|e| e.reason.contains("ahead of this node's clock")),
        "{q:?}"
    );
    let peers = f.node.store.peers().await.unwrap();
    assert_eq!(
        peers.iter().map(|p| &p.node).collect::<Vec<_>>(),
        peers_before.iter().map(|p| &p.node).collect::<Vec<_>>(),
        "no peer record was written for a refused heartbeat"
    );
    // A heartbeat of a fleet member, on time, is heard.
    let (status, body) = f.post(&json!([heartbeat("northeurope", Utc::now())])).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        f.node
            .store
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.node == "northeurope")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_execute_once_and_redelivery_is_recognised() {
    let f = fixture().await;
    let stock = command(
        "stock-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}, {"id": 2, "ean": 22, "name": "Apple", "saldo": 1}]),
    );
    let (status, body) = f.post(&json!([stock])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["newCommands"], 1);
    assert_eq!(
        body["executed"], 1,
        "alone in the fleet, this node owns everything"
    );
    let buy = command(
        "buy-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "change": -2}]),
    );
    let before = f.node.store.db_ops();
    assert_eq!(f.post(&json!([buy.clone()])).await.0, 200);
    // Owner's share of one purchase: execute 3 (read, one bulk write of stock and marker,
    // commit), then ONE ledger write of the command with its outcome, already published, 3
    // (number, bulk write, commit: one transaction with the ledger's sequence counter); 1 more
    // when the region's peer records are read for the ranking, and more only if the server
    // asked for a retry. (It was 10: insert 3, execute 4, record the outcome 3.)
    let ops = f.node.store.db_ops() - before;
    eprintln!("database round trips for one purchase at its owner: {ops}");
    assert!((6..=9).contains(&ops), "{ops} round trips");
    // Redelivered alone and inside a batch with a new purchase: recognised, not re-executed.
    let (status, body) = f.post(&json!([buy.clone()])).await;
    assert_eq!(
        (status, body["duplicates"].clone(), body["executed"].clone()),
        (200, json!(1), json!(0))
    );
    let buy2 = command(
        "buy-2",
        json!([{"id": 2, "ean": 22, "name": "Apple", "change": -1}, {"id": 1, "ean": 11, "name": "Orange", "change": -9}]),
    );
    let (status, body) = f.post(&json!([buy, buy2])).await;
    assert_eq!(
        (
            status,
            body["duplicates"].clone(),
            body["newCommands"].clone()
        ),
        (200, json!(1), json!(1))
    );

    let (_, products) = f.get("/api/products").await;
    let products: Vec<ProductView> = serde_json::from_value(products).unwrap();
    assert_eq!(
        products.iter().map(|p| (p.id, p.saldo)).collect::<Vec<_>>(),
        [(1, 3), (2, 1)],
        "buy-2 was all-or-nothing"
    );
    let (status, one) = f.get("/api/products/1").await;
    assert_eq!((status, one["name"].clone()), (200, json!("Orange")));
    assert_eq!(f.get("/api/products/99").await.0, 404);
    assert_eq!(f.get("/api/products/abc").await.0, 400);

    let (status, entry) = f.get("/api/ledger/buy-2").await;
    assert_eq!(status, 200);
    let entry: LedgerEntryView = serde_json::from_value(entry).unwrap();
    assert_eq!(
        entry.reason.as_deref(),
        Some("out of stock: Orange (id 1) has 3, needs 9")
    );
    assert_eq!(f.get("/api/ledger/nope").await.0, 404);
    // The warehouse's marker says the same, without the ledger.
    let (status, marker) = f.get("/api/outcomes/buy-2").await;
    assert_eq!(status, 200, "{marker}");
    let marker: OutcomeView = serde_json::from_value(marker).unwrap();
    assert_eq!(
        (
            marker.status,
            marker.reason.as_deref(),
            marker.transaction.as_str()
        ),
        (Outcome::Rejected, entry.reason.as_deref(), "buy-2")
    );
    assert_eq!(Some(&marker.executed_by), entry.executed_by.as_ref());
    assert_eq!(f.get("/api/outcomes/nope").await.0, 404);

    // Completions were published, with deterministic ids, and the outbox is empty.
    let published = f.bus.published();
    let completions: Vec<_> = published
        .iter()
        .filter(|e| e.event_type == "transactionCompleted")
        .collect();
    assert_eq!(completions.len(), 3);
    assert_eq!(
        completions[0].id,
        saldo_worker::node::completion_event_id("stock-1")
    );
    assert!(f.node.store.unpublished(10).await.unwrap().is_empty());

    // The feed pages in order.
    let (_, page) = f.get("/api/ledger?after=0&limit=2").await;
    let page: LedgerPage = serde_json::from_value(page).unwrap();
    assert_eq!(page.entries.len(), 2);
    let (_, rest) = f
        .get(&format!("/api/ledger?after={}&limit=100", page.next))
        .await;
    let rest: LedgerPage = serde_json::from_value(rest).unwrap();
    let mut all: Vec<String> = page
        .entries
        .iter()
        .chain(&rest.entries)
        .map(|e| e.transaction.clone())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all, ["buy-1", "buy-2", "stock-1"]);
    assert_eq!(f.get("/api/ledger?after=-1").await.0, 400);

    let (status, st) = f.get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["counters"]["executed"], 3);
    assert_eq!(st["counters"]["duplicates"], 2);
    assert!(st["counters"]["dbOps"].as_u64().unwrap() > 10);
}

/// Event Grid and the Functions host time a request out and close the connection; the work the
/// delivery started (execute, record, publish the completion) must still finish, not wait for
/// the sweep. Without `to_completion` the handler's future is dropped in the slow publish and
/// the completion never goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_caller_gives_up_still_finishes_its_work() {
    let f = fixture().await;
    f.bus
        .delay_publishing(std::time::Duration::from_millis(1_500));
    let stock = command(
        "slow-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
    );
    let gave_up = f
        .http
        .post(format!("{}/api/eventgrid", f.base))
        .timeout(std::time::Duration::from_millis(300))
        .json(&json!([stock]))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "the caller timed out: {gave_up:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.bus.published().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the completion of a delivery whose caller gave up was never published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let published = f.bus.published();
    assert_eq!(published.len(), 1);
    assert_eq!(
        published[0].id,
        saldo_worker::node::completion_event_id("slow-1")
    );
    // Marked published once the publish returned (no sweep runs in this test).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f.node.store.unpublished(10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "still in the outbox");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, st) = f.get("/api/status").await;
    assert_eq!(st["counters"]["executed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outcomes_heartbeats_and_timers() {
    let f = fixture().await;
    let completed = json!({
        "id": "c-1", "eventType": "transactionCompleted", "subject": "webapp/workers/transactions",
        "eventTime": Utc::now(), "dataVersion": "1.0",
        "data": {"transaction": "t-9", "status": "completed", "timestamp": Utc::now(), "node": "northeurope",
                 "region": "northeurope", "products": [{"id": 1, "saldo": 4}]}
    });
    let heartbeat = json!({
        "id": "h-1", "eventType": "nodeHeartbeat", "subject": "webapp/workers/northeurope",
        "eventTime": Utc::now(), "dataVersion": "1.0",
        "data": {"node": "northeurope", "region": "northeurope", "url": "http://127.0.0.1:2", "ready": true,
                 "startedAt": Utc::now(), "timestamp": Utc::now(), "counters": {"received": 1}}
    });
    let (status, body) = f.post(&json!([completed.clone(), heartbeat])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["outcomes"].clone(), body["heartbeats"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        f.post(&json!([completed])).await.1["outcomes"],
        0,
        "a redelivered outcome is known"
    );
    let (_, e) = f.get("/api/ledger/t-9").await;
    assert_eq!(
        (e["state"].clone(), e["executedBy"].clone()),
        (json!("completed"), json!("northeurope"))
    );
    let (_, st) = f.get("/api/status").await;
    assert_eq!(st["peers"][0]["node"], "northeurope");
    assert_eq!(st["peers"][0]["live"], true);

    // Timer invocations in the custom handler protocol.
    let r = f
        .http
        .post(format!("{}/heartbeat", f.base))
        .json(&json!({"Data": {}, "Metadata": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Outputs"], json!({}));
    assert!(
        f.bus
            .published()
            .iter()
            .any(|e| e.event_type == "nodeHeartbeat")
    );
    let r = f
        .http
        .post(format!("{}/sweep", f.base))
        .json(&json!({"Data": {}, "Metadata": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_503_and_nothing_is_acknowledged() {
    let mut f = fixture().await;
    f.db.kill();
    let (status, body) = f
        .post(&json!([command(
            "lost-1",
            json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}])
        )]))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(f.get("/api/products").await.0, 503);
    let r = f
        .http
        .post(format!("{}/sweep", f.base))
        .json(&json!({"Data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Bad input is still 400, not 503: it would never succeed.
    assert_eq!(f.post(&json!({"x": 1})).await.0, 400);
}

/// Catch-up reads a peer's feed, which holds mostly what our ledger holds too (every purchase
/// passes through every ledger). Merging what we know costs reads only: no transaction, no
/// bump of the ledger's counter, no write. What we lack is still learnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_on_what_we_know_writes_nothing() {
    let f = fixture().await;
    let stock = command(
        "stock-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
    );
    let buy = command(
        "buy-1",
        json!([{"id": 1, "ean": 11, "name": "Orange", "change": -2}]),
    );
    assert_eq!(f.post(&json!([stock, buy])).await.0, 200);
    // The same entries, as a peer's feed would serve them.
    let page = f.node.feed(0, 100).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    let writes = |m: &std::collections::BTreeMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| k.ends_with(".write") || k.ends_with(".txnEnd"))
            .map(|(_, v)| v)
            .sum()
    };
    let (before, ops) = (f.node.store.db_ops_by_origin(), f.node.store.db_ops());
    assert_eq!(f.node.merge(&page.entries).await.unwrap(), 0, "nothing new");
    let after = f.node.store.db_ops_by_origin();
    assert_eq!(writes(&after), writes(&before), "{before:?} -> {after:?}");
    assert_eq!(f.node.store.db_ops() - ops, 1, "one read of what we hold");

    // An entry we lack (a peer's purchase whose delivery to us was lost) is learnt.
    let mut theirs = page.entries[1].clone();
    theirs.transaction = "buy-elsewhere".into();
    assert_eq!(f.node.merge(&[theirs]).await.unwrap(), 1);
    let learnt = f.node.store.entry("buy-elsewhere").await.unwrap().unwrap();
    assert!(learnt.outcome.is_some());
}

/// Asking a peer whether it is up, over real HTTP: a stopped app's 403 and a refused
/// connection are down; a 200 is up; no answer in time (a paused process) and an answer that
/// proves nothing (a 503) are unknown, so the deadline decides.
#[tokio::test]
async fn a_stopped_app_and_a_refused_connection_are_down_and_silence_is_unknown() {
    use axum::http::StatusCode;
    use saldo_worker::adapters::HttpPeers;
    use saldo_worker::{PeerClient, Probe};
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }
    let answering = |status: StatusCode| {
        axum::Router::new().route(
            "/api/status",
            axum::routing::get(move || async move { status }),
        )
    };
    let stopped = serve(answering(StatusCode::FORBIDDEN)).await;
    let up = serve(answering(StatusCode::OK)).await;
    let unavailable = serve(answering(StatusCode::SERVICE_UNAVAILABLE)).await;
    let paused = serve(axum::Router::new().route(
        "/api/status",
        axum::routing::get(|| async {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            "late"
        }),
    ))
    .await;
    // A port that was just free: nothing listens.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let peers = HttpPeers::new(None);
    let within = std::time::Duration::from_millis(300);
    assert_eq!(peers.probe(&stopped, within).await, Probe::Down);
    assert_eq!(peers.probe(&refused, within).await, Probe::Down);
    assert_eq!(peers.probe(&up, within).await, Probe::Up);
    assert_eq!(peers.probe(&unavailable, within).await, Probe::Unknown);
    assert_eq!(peers.probe(&paused, within).await, Probe::Unknown);
}

/// Asked about one transaction, a real worker over HTTP says whether its ledger holds it:
/// 200 is up (it may be executing it), its 404 is lacks (it cannot be), also for an id that
/// needs escaping in a path; a stopped app and a refused connection stay down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_asked_about_a_transaction_says_whether_its_ledger_holds_it() {
    use saldo_worker::adapters::HttpPeers;
    use saldo_worker::{PeerClient, Probe};
    let f = fixture().await;
    let odd = "held/?#%20 1";
    let (status, _) = f
        .post(&json!([command(
            odd,
            json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
        )]))
        .await;
    assert_eq!(status, 200);
    let peers = HttpPeers::new(None);
    let within = std::time::Duration::from_secs(5);
    assert_eq!(peers.probe_for(&f.base, odd, within).await, Probe::Up);
    assert_eq!(
        peers.probe_for(&f.base, "held", within).await,
        Probe::Lacks,
        "a prefix of the id is another transaction"
    );
    assert_eq!(
        peers.probe_for(&f.base, "never-sent", within).await,
        Probe::Lacks
    );
    let stopped = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::FORBIDDEN });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    assert_eq!(peers.probe_for(&stopped, odd, within).await, Probe::Down);
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    assert_eq!(peers.probe_for(&refused, odd, within).await, Probe::Down);
}

/// The owner's purchase costs ONE ledger write, over the wire: it executes first, publishes
/// the completion, then writes the command decided and already marked published, as ONE
/// statement (counter, bulk write, commit: 3 round trips under `command`, the counter and one
/// entry written; none under `ownOutcome`). Recording the command first and the outcome after
/// cost 6 round trips and two writes of the entry; recording the outcome unpublished and marking
/// it published after the publish a seventh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executed_purchase_is_recorded_in_one_ledger_write() {
    let f = fixture().await;
    let (status, _) = f
        .post(&json!([command(
            "settle-1",
            json!([{"id": 1, "ean": 11, "name": "Orange", "saldo": 5}]),
        )]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.bus.published().len(), 1, "the completion is published");
    let entry = f.node.store.entry("settle-1").await.unwrap().unwrap();
    assert!(
        entry.command.is_some() && entry.outcome.is_some() && entry.published,
        "{entry:?}"
    );
    let ops = f.node.store.db_ops_by_origin();
    let sum = |prefix: &str| -> u64 {
        ops.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("dbOps.command."), 3, "one ledger transaction: {ops:?}");
    assert_eq!(
        sum("dbDocs.command"),
        2,
        "the counter and one entry: {ops:?}"
    );
    assert_eq!(
        sum("dbOps.ownOutcome."),
        0,
        "no second ledger write: {ops:?}"
    );
}
