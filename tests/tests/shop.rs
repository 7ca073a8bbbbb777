//! Issue 6's API proof on the real stack: idempotent orders, the warehouse role, bad input that
//! publishes nothing, failover of reads past a stopped region, and the fleet view.

use std::time::Duration;

use base64::Engine;
use saldo_tests::{TestStack, wait_for};
use serde_json::{Value, json};

fn principal(roles: &[&str]) -> String {
    base64::engine::general_purpose::STANDARD.encode(
        json!({"identityProvider": "github", "userId": "u1", "userDetails": "tester", "userRoles": roles})
            .to_string(),
    )
}

async fn stack() -> TestStack {
    TestStack::ready()
        .await
        .expect("the stack starts, seeded, every node seeing its peers")
}

async fn post_order(s: &TestStack, key: &str, body: Value) -> (u16, Value) {
    let resp = s
        .http
        .post(format!("{}/api/orders", s.api()))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_retried_order_never_buys_twice() {
    let s = stack().await;
    let body = json!({"lines": [{"id": 1, "quantity": 2}]});
    let (a, first) = post_order(&s, "retry-key-1", body.clone()).await;
    let (b, again) = post_order(&s, "retry-key-1", body).await;
    assert_eq!((a, b), (202, 202));
    assert_eq!(
        first["transaction"], again["transaction"],
        "one key, one transaction"
    );
    let tx = first["transaction"].as_str().unwrap();
    assert_eq!(s.outcome(tx).await.unwrap()["status"], "completed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.stock(1).await.unwrap(), 23, "bought once");
    // The same key with another body is refused and changes nothing.
    let (status, err) = post_order(
        &s,
        "retry-key-1",
        json!({"lines": [{"id": 1, "quantity": 5}]}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(s.stock(1).await.unwrap(), 23);
}

#[tokio::test]
async fn bad_orders_are_refused_and_publish_nothing() {
    let s = stack().await;
    let received = s.counter("received").await.unwrap();
    let cases = [
        json!({"lines": [{"id": 999, "quantity": 1}]}),
        json!({"lines": [{"id": 1, "quantity": 0}]}),
        json!({"lines": [{"id": 1, "quantity": -3}]}),
        json!({"lines": [{"id": 1, "quantity": 1_000_000_000}]}),
        json!({"lines": []}),
        json!({"nonsense": true}),
    ];
    for (i, body) in cases.iter().enumerate() {
        let (status, err) = post_order(&s, &format!("bad-{i}"), body.clone()).await;
        assert!((400..500).contains(&status), "{body} answered {status}");
        assert!(
            err["error"]["message"].is_string(),
            "{body}: a clear error: {err}"
        );
    }
    // No idempotency key at all.
    let resp = s
        .http
        .post(format!("{}/api/orders", s.api()))
        .json(&json!({"lines": [{"id": 1, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Malformed JSON.
    let resp = s
        .http
        .post(format!("{}/api/orders", s.api()))
        .header("Idempotency-Key", "malformed")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.counter("received").await.unwrap(),
        received,
        "nothing reached the fleet"
    );
    assert_eq!(s.stock(1).await.unwrap(), 25);
}

#[tokio::test]
async fn only_the_warehouse_role_sets_quantities() {
    let s = stack().await;
    let put = |roles: Option<&'static [&'static str]>| {
        let mut req = s
            .http
            .put(format!("{}/api/products/4", s.api()))
            .json(&json!({"saldo": 99}));
        if let Some(r) = roles {
            req = req.header("x-ms-client-principal", principal(r));
        }
        req.send()
    };
    assert_eq!(put(None).await.unwrap().status().as_u16(), 401, "anonymous");
    assert_eq!(
        put(Some(&["authenticated"]))
            .await
            .unwrap()
            .status()
            .as_u16(),
        403,
        "a shopper"
    );
    let resp = put(Some(&["authenticated", "warehouse"])).await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let tx: Value = resp.json().await.unwrap();
    assert_eq!(
        s.outcome(tx["transaction"].as_str().unwrap())
            .await
            .unwrap()["status"],
        "completed"
    );
    assert_eq!(s.stock(4).await.unwrap(), 99);
}

#[tokio::test]
async fn reads_fail_over_and_the_fleet_shows_a_stopped_region() {
    let s = stack().await;
    s.region("westeurope", "stop").await.unwrap();
    for _ in 0..6 {
        let (status, v) = s.get_json("/api/products").await.unwrap();
        assert_eq!(status, 200, "reads keep working with a region stopped: {v}");
    }
    let (status, fleet) = s.get_json("/api/nodes").await.unwrap();
    assert_eq!(status, 200);
    let nodes = fleet["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let down: Vec<&Value> = nodes.iter().filter(|n| n["up"] == false).collect();
    assert_eq!(down.len(), 1, "{fleet}");
    s.region("westeurope", "start").await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "westeurope to be up again",
        || async {
            let (_, f) = s.get_json("/api/nodes").await.ok()?;
            f["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["up"] == true)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_fleet_lists_recent_transactions_with_who_recorded_and_executed_them() {
    let s = stack().await;
    let a = s.order(json!([{"id": 2, "quantity": 1}])).await.unwrap();
    let b = s.order(json!([{"id": 3, "quantity": 1}])).await.unwrap();
    s.outcome(&a).await.unwrap();
    s.outcome(&b).await.unwrap();
    let list = wait_for(
        Duration::from_secs(30),
        "both purchases in the listing",
        || async {
            let (status, v) = s.get_json("/api/transactions?limit=10").await.ok()?;
            let txs = v["transactions"].as_array()?.clone();
            let done = |id: &str| {
                txs.iter().any(|t| {
                    t["transaction"] == id
                        && t["status"] == "completed"
                        && t["nodes"]
                            .as_array()
                            .is_some_and(|n| n.iter().all(|n| n["state"] == "completed"))
                })
            };
            (status == 200 && done(&a) && done(&b)).then_some(txs)
        },
    )
    .await
    .unwrap();
    let pos = |id: &str| list.iter().position(|t| t["transaction"] == id).unwrap();
    assert!(pos(&b) < pos(&a), "newest first");
    assert!(
        list.iter().all(|t| t["executedBy"].is_string()),
        "who executed each"
    );
    let (status, _) = s.get_json("/api/transactions?limit=0").await.unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let s = stack().await;
    let (status, doc) = s.get_json("/api/openapi.json").await.unwrap();
    assert_eq!(status, 200);
    for path in [
        "/api/products",
        "/api/products/{id}",
        "/api/orders",
        "/api/transactions",
        "/api/transactions/{id}",
        "/api/nodes",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}
