//! The API over real HTTP: in-process router on port 0, real SecantusDB, fake worker nodes and a
//! fake topic (see `common`).

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use chrono::Utc;
use common::*;
use saldo_api::commands::transaction_id;
use saldo_core::events::{ProductLine, Quantity, parse_event};
use saldo_core::views::{LedgerEntryView, LedgerState, PeerView};
use serde_json::{Value, json};

const ORDER: &str = r#"{"lines": [{"id": 1, "quantity": 2}, {"id": 2, "quantity": 1}]}"#;

#[tokio::test]
async fn reads_fail_over_past_stopped_and_hung_nodes() {
    let h = Harness::start(&[Mode::Stopped, Mode::Hang, Mode::Healthy]).await;
    for _ in 0..6 {
        let resp = h.http.get(h.url("/api/products")).send().await.unwrap();
        assert_eq!(resp.headers()["saldo-served-by"], h.nodes[2].url.as_str());
        let (status, body) = read(resp).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, serde_json::to_value(catalogue()).unwrap());
    }
    let (status, body) = h.get("/api/products/1").await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("Orange"))
    );
    assert_eq!(body["saldo"], 5);
    // A 404 is the fleet's answer (one shared warehouse), not a node failure.
    let (status, body) = h.get("/api/products/99").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "product_not_found")
    );
    let (status, body) = h.get("/api/products/orange").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // The last live node fails too: a clear 503 naming what happened to each node.
    h.nodes[2].set_mode(Mode::Fail);
    let resp = h.http.get(h.url("/api/products")).send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, body) = read(resp).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_node_available")
    );
    let message = body["error"]["message"].as_str().unwrap();
    for needle in ["stopped", "timed out", "500"] {
        assert!(message.contains(needle), "{needle} missing from {message}");
    }
    // And it comes back.
    h.nodes[0].set_mode(Mode::Healthy);
    assert_eq!(h.get("/api/products/2").await.0, StatusCode::OK);
}

#[tokio::test]
async fn reads_spread_over_healthy_nodes() {
    let h = Harness::start(&[Mode::Healthy, Mode::Healthy, Mode::Healthy]).await;
    for _ in 0..6 {
        assert_eq!(h.get("/api/products").await.0, StatusCode::OK);
    }
    for n in &h.nodes {
        assert!(n.served() >= 1, "{} served nothing", n.url);
    }
}

#[tokio::test]
async fn an_order_is_published_once_per_key() {
    let h = Harness::start(&[Mode::Healthy, Mode::Stopped]).await;
    let (status, headers, body) = h.order(Some("order-key-1"), ORDER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let tx = transaction_id("order-key-1");
    assert_eq!(body, json!({"transaction": tx, "status": "pending"}));
    assert_eq!(
        headers["location"],
        format!("/api/transactions/{tx}").as_str()
    );
    assert!(headers.get("idempotent-replayed").is_none());

    let published = h.topic.published();
    assert_eq!(published.len(), 1);
    let event = &published[0];
    assert_eq!(
        (event["id"].as_str(), event["eventType"].as_str()),
        (Some(tx.as_str()), Some("recordUpdated"))
    );
    assert_eq!(event["data"]["transaction"], tx.as_str());
    let lines: Vec<ProductLine> =
        serde_json::from_value(event["data"]["products"].clone()).unwrap();
    let cat = catalogue();
    assert_eq!(
        lines,
        vec![
            ProductLine {
                id: 1,
                ean: cat[0].ean,
                name: "Orange".into(),
                saldo: None,
                change: Some(-2)
            },
            ProductLine {
                id: 2,
                ean: cat[1].ean,
                name: "Apple".into(),
                saldo: None,
                change: Some(-1)
            },
        ]
    );
    parse_event(event).expect("workers accept the command");

    // A retry (lines in another order, other spacing) is the same request: same answer, nothing new.
    let retry = r#"{"lines":[{"quantity":1,"id":2},{"id":1,"quantity":2}]}"#;
    let (status, headers, body) = h.order(Some("order-key-1"), retry).await;
    assert_eq!(
        (status, body["transaction"].as_str()),
        (StatusCode::ACCEPTED, Some(tx.as_str()))
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(
        headers["location"],
        format!("/api/transactions/{tx}").as_str()
    );
    // The same key for another order is refused.
    let other = r#"{"lines": [{"id": 1, "quantity": 3}]}"#;
    let (status, _, body) = h.order(Some("order-key-1"), other).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    assert_eq!(h.topic.published().len(), 1);

    // Before any node has it, the API's own record says "pending".
    let (status, body) = h.get(&format!("/api/transactions/{tx}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending");
    assert!(body["acceptedAt"].is_string());
    assert_eq!(body["published"], true);
    assert_eq!(body["lines"].as_array().unwrap().len(), 2);
    assert_eq!(body["nodes"][0]["state"], "unknown");
    assert_eq!(body["nodes"][1]["state"], "unreachable");

    // Concurrent duplicates: one transaction; any republication is the identical event.
    let attempts = (0..5).map(|_| h.order(Some("order-key-2"), ORDER));
    for (status, _, body) in futures::future::join_all(attempts).await {
        assert_eq!(
            (status, body["transaction"].as_str()),
            (
                StatusCode::ACCEPTED,
                Some(transaction_id("order-key-2").as_str())
            )
        );
    }
    let published = h.topic.published();
    let ids: BTreeSet<&str> = published
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([tx.as_str(), transaction_id("order-key-2").as_str()])
    );
    let second: Vec<&Value> = published
        .iter()
        .filter(|e| e["id"] != tx.as_str())
        .collect();
    assert!(
        second.windows(2).all(|w| w[0] == w[1]),
        "republished events differ: {second:?}"
    );
}

#[tokio::test]
async fn bad_orders_are_refused_and_publish_nothing() {
    let h = Harness::start(&[Mode::Healthy]).await;
    let line = |id: u64, q: i64| json!({"id": id, "quantity": q});
    let many: Vec<Value> = (1..=101).map(|i| line(i, 1)).collect();
    let huge = format!(
        r#"{{"lines": [{{"id": 1, "quantity": 1}}], "pad": "{}"}}"#,
        "x".repeat(100_000)
    );
    let cases: Vec<(Option<&str>, String, StatusCode, &str)> = vec![
        (
            None,
            ORDER.into(),
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
        ),
        (
            Some("has space"),
            ORDER.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-json"),
            "{".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("k-array"),
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("k-extra"),
            r#"{"lines": [], "coupon": "FREE"}"#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("k-idtype"),
            r#"{"lines": [{"id": "1", "quantity": 1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Some("k-empty"),
            json!({"lines": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-zero"),
            json!({"lines": [line(1, 0)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-neg"),
            json!({"lines": [line(1, -2)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-big"),
            json!({"lines": [line(1, 1_001)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-absurd"),
            json!({"lines": [line(1, i64::MAX)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-many"),
            json!({"lines": many}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("k-dup"),
            json!({"lines": [line(1, 1), line(1, 2)]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "duplicate_line",
        ),
        (
            Some("k-unknown"),
            json!({"lines": [line(1, 1), line(99, 1)]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_products",
        ),
        (
            Some("k-huge"),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (key, body, want_status, want_code) in cases {
        let (status, _, answer) = h.order(key, &body).await;
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (want_status, want_code),
            "key {key:?}: {answer}"
        );
        assert!(
            h.topic.published().is_empty(),
            "key {key:?} published something"
        );
        if let Some(k) = key {
            // No record was kept either: the key is still free.
            let (status, _) = h
                .get(&format!("/api/transactions/{}", transaction_id(k)))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "key {k} left a record");
        }
    }
    // A principal that cannot be read is refused even where signing in is optional: 401, as for
    // any credentials that cannot be read.
    let resp = h
        .http
        .post(h.url("/api/orders"))
        .header("idempotency-key", "k-principal")
        .header("x-ms-client-principal", "not base64!")
        .body(ORDER)
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "malformed_principal")
    );
    assert!(h.topic.published().is_empty());
    // Unknown routes and methods answer in the same error shape.
    let (status, body) = h.get("/api/nope").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let resp = h.http.delete(h.url("/api/orders")).send().await.unwrap();
    let (status, body) = read(resp).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn warehouse_updates_need_the_role() {
    let h = Harness::start(&[Mode::Healthy]).await;
    let put = |path: &str, principal: Option<String>, key: Option<&str>, body: &str| {
        let mut req = h.http.put(h.url(path)).body(body.to_string());
        if let Some(p) = principal {
            req = req.header("x-ms-client-principal", p);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            let headers = resp.headers().clone();
            let (s, v) = read(resp).await;
            (s, headers, v)
        }
    };
    let warehouse = || Some(principal(&["anonymous", "authenticated", "warehouse"]));
    let ok = r#"{"saldo": 40}"#;
    let refused = [
        (
            put("/api/products/1", None, None, ok).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            put(
                "/api/products/1",
                Some(principal(&["authenticated"])),
                None,
                ok,
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            put("/api/products/1", Some("%%%".into()), None, ok).await,
            StatusCode::UNAUTHORIZED,
            "malformed_principal",
        ),
        (
            put("/api/products/1", warehouse(), None, r#"{"saldo": -1}"#).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            put(
                "/api/products/1",
                warehouse(),
                None,
                r#"{"saldo": 1000001}"#,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            put("/api/products/1", warehouse(), None, r#"{"saldo": "x"}"#).await,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            put("/api/products/x", warehouse(), None, ok).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            put("/api/products/99", warehouse(), None, ok).await,
            StatusCode::NOT_FOUND,
            "product_not_found",
        ),
        (
            put("/api/products/1", warehouse(), None, &" ".repeat(70_000)).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for ((status, _, body), want_status, want_code) in refused {
        assert_eq!(
            (status, error_code(&body).as_str()),
            (want_status, want_code),
            "{body}"
        );
    }
    assert!(h.topic.published().is_empty());

    let (status, headers, body) = put("/api/products/1", warehouse(), None, ok).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let tx = body["transaction"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"],
        format!("/api/transactions/{tx}").as_str()
    );
    let event = h.topic.published()[0].clone();
    assert_eq!(event["id"], tx.as_str());
    assert_eq!(event["subject"], "warehouse/products/1");
    assert_eq!(
        event["data"]["products"],
        json!([{"id": 1, "ean": catalogue()[0].ean, "name": "Orange", "saldo": 40}])
    );
    parse_event(&event).unwrap();

    // Without a key every request is its own transaction; with one, a retry is the same.
    let (_, _, again) = put("/api/products/1", warehouse(), None, ok).await;
    assert_ne!(again["transaction"], tx.as_str());
    let (s1, _, a) = put(
        "/api/products/2",
        warehouse(),
        Some("set-2"),
        r#"{"saldo": 0}"#,
    )
    .await;
    let (s2, h2, b) = put(
        "/api/products/2",
        warehouse(),
        Some("set-2"),
        r#"{"saldo": 0}"#,
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(
        (
            a["transaction"].clone(),
            h2["idempotent-replayed"].to_str().unwrap()
        ),
        (b["transaction"].clone(), "true")
    );
    let (s3, _, c) = put(
        "/api/products/2",
        warehouse(),
        Some("set-2"),
        r#"{"saldo": 1}"#,
    )
    .await;
    assert_eq!(
        (s3, error_code(&c).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    // The same key on the order endpoint is another request, too.
    let (s4, _, d) = h.order(Some("set-2"), ORDER).await;
    assert_eq!(
        (s4, error_code(&d).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    assert_eq!(h.topic.published().len(), 3);
}

#[tokio::test]
async fn topic_down_is_503_and_a_retry_publishes() {
    let h = Harness::start(&[Mode::Healthy]).await;
    h.topic.set_mode(TopicMode::Down);
    let (status, headers, body) = h.order(Some("k-topic"), ORDER).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "topic_unavailable")
    );
    assert_eq!(headers["retry-after"], "1");
    assert!(h.topic.published().is_empty());
    // Accepted but not sent: the status says so.
    let (status, body) = h
        .get(&format!("/api/transactions/{}", transaction_id("k-topic")))
        .await;
    assert_eq!(
        (status, body["status"].as_str(), body["published"].as_bool()),
        (StatusCode::OK, Some("pending"), Some(false))
    );

    // The retry with the same key publishes the command stored by the first attempt.
    h.topic.set_mode(TopicMode::Accept);
    let (status, headers, body) = h.order(Some("k-topic"), ORDER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(h.topic.published().len(), 1);
    assert_eq!(
        h.topic.published()[0]["id"],
        transaction_id("k-topic").as_str()
    );
    // Once published, a retry does not publish again.
    h.order(Some("k-topic"), ORDER).await;
    assert_eq!(h.topic.published().len(), 1);

    h.topic.set_mode(TopicMode::Reject);
    let (status, _, body) = h.order(Some("k-rejected"), ORDER).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_GATEWAY, "topic_rejected")
    );
}

#[tokio::test]
async fn database_down_is_503_and_publishes_nothing() {
    let mut h = Harness::start(&[Mode::Healthy]).await;
    let known = "tx-known-by-a-node";
    h.nodes[0].record(entry(known, "n0", LedgerState::Pending));
    h.db.kill();
    let (status, headers, body) = h.order(Some("k-db"), ORDER).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "driver details leak: {body}"
    );
    assert!(h.topic.published().is_empty());
    // Reads need no database.
    assert_eq!(h.get("/api/products").await.0, StatusCode::OK);
    // A transaction a node knows is still answered; one nobody knows cannot be ruled out.
    assert_eq!(
        h.get(&format!("/api/transactions/{known}")).await.0,
        StatusCode::OK
    );
    let (status, body) = h.get("/api/transactions/nobody-knows").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
    );
}

fn entry(tx: &str, node: &str, state: LedgerState) -> LedgerEntryView {
    LedgerEntryView {
        transaction: tx.into(),
        recorded_by: node.into(),
        state,
        products: Some(vec![ProductLine {
            id: 1,
            ean: 1,
            name: "Orange".into(),
            saldo: None,
            change: Some(-2),
        }]),
        recorded_at: Utc::now(),
        executed_by: None,
        executed_region: None,
        executed_at: None,
        reason: None,
        quantities: vec![],
        takeover: false,
        seq: 1,
        traceparent: None,
    }
}

#[tokio::test]
async fn transaction_status_combines_every_node() {
    let h = Harness::start(&[Mode::Healthy, Mode::Healthy, Mode::Stopped]).await;
    let pending = entry("t-1", "n0", LedgerState::Pending);
    let executed_at = Utc::now();
    let done = LedgerEntryView {
        executed_by: Some("n1".into()),
        executed_region: Some("northeurope".into()),
        executed_at: Some(executed_at),
        takeover: true,
        quantities: vec![Quantity { id: 1, saldo: 3 }],
        ..entry("t-1", "n1", LedgerState::Completed)
    };
    h.nodes[0].record(pending.clone());
    h.nodes[1].record(done.clone());
    let (status, body) = h.get("/api/transactions/t-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(
        (body["executedBy"].as_str(), body["executedRegion"].as_str()),
        (Some("n1"), Some("northeurope"))
    );
    assert_eq!(body["takeover"], true);
    let at: chrono::DateTime<Utc> = serde_json::from_value(body["executedAt"].clone()).unwrap();
    assert_eq!(
        at, executed_at,
        "the executor's completion time is passed on"
    );
    assert_eq!(body["quantities"], json!([{"id": 1, "saldo": 3}]));
    assert_eq!(body["lines"][0]["change"], -2);
    assert!(
        body.get("acceptedAt").is_none(),
        "not accepted through this API"
    );
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["state"], "pending");
    assert_eq!(nodes[0]["node"], "n0");
    let recorded: chrono::DateTime<Utc> =
        serde_json::from_value(nodes[0]["recordedAt"].clone()).unwrap();
    assert_eq!(recorded, pending.recorded_at);
    assert_eq!(nodes[1]["state"], "completed");
    assert_eq!(nodes[2]["state"], "unreachable");
    assert!(nodes[2]["error"].as_str().unwrap().contains("stopped"));

    h.nodes[1].record(LedgerEntryView {
        executed_by: Some("n1".into()),
        reason: Some("out of stock".into()),
        ..entry("t-2", "n1", LedgerState::Rejected)
    });
    let (status, body) = h.get("/api/transactions/t-2").await;
    assert_eq!(
        (status, body["status"].as_str(), body["reason"].as_str()),
        (StatusCode::OK, Some("rejected"), Some("out of stock"))
    );

    let (status, body) = h.get("/api/transactions/t-unknown").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "transaction_not_found")
    );
    let (status, body) = h.get("/api/transactions/bad%0Aid").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn the_fleet_view_survives_a_down_node() {
    let h = Harness::start(&[Mode::Healthy, Mode::Healthy, Mode::Stopped]).await;
    let t0 = Utc::now();
    let seen = |secs: i64| PeerView {
        node: "n2".into(),
        region: "n2-region".into(),
        url: h.nodes[2].url.clone(),
        last_heartbeat: t0 + chrono::Duration::seconds(secs),
        live: false,
    };
    *h.nodes[0].inner.peers.lock().unwrap() = vec![seen(1)];
    *h.nodes[1].inner.peers.lock().unwrap() = vec![seen(4)];
    let (status, body) = h.get("/api/nodes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        (nodes[0]["up"].as_bool(), nodes[0]["region"].as_str()),
        (Some(true), Some("n0-region"))
    );
    assert_eq!(
        (
            nodes[0]["ready"].as_bool(),
            nodes[0]["counters"]["received"].as_u64()
        ),
        (Some(true), Some(7))
    );
    let down = &nodes[2];
    assert_eq!(
        (down["up"].as_bool(), down["node"].as_str()),
        (Some(false), Some("n2"))
    );
    assert!(
        down["error"].as_str().unwrap().contains("stopped"),
        "{down}"
    );
    let last: chrono::DateTime<Utc> =
        serde_json::from_value(down["lastHeartbeat"].clone()).unwrap();
    assert_eq!(last, t0 + chrono::Duration::seconds(4));

    for n in &h.nodes {
        n.set_mode(Mode::Fail);
    }
    let (status, body) = h.get("/api/nodes").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["up"] == false)
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let h = Harness::start(&[Mode::Healthy]).await;
    let (status, doc) = h.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let routes = [
        ("/api/products", "get"),
        ("/api/products/{id}", "get"),
        ("/api/products/{id}", "put"),
        ("/api/orders", "post"),
        ("/api/transactions", "get"),
        ("/api/transactions/{id}", "get"),
        ("/api/nodes", "get"),
        ("/api/openapi.json", "get"),
    ];
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            listed.insert((path.clone(), method.clone()));
        }
    }
    let want: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(listed, want);
    for schema in [
        "OrderRequest",
        "SetSaldoRequest",
        "ErrorBody",
        "TransactionView",
        "FleetView",
        "AcceptedView",
        "Product",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    // Every documented route is served (no 404 "no route", no 405).
    for (path, method) in &listed {
        let url = h.url(&path.replace("{id}", "1"));
        let resp = h
            .http
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        let (status, body) = read(resp).await;
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && body["error"]["code"] != "not_found",
            "{method} {path}: {body}"
        );
    }
    assert_eq!(saldo_api::openapi().paths.paths.len(), 7);
}

/// The edges the OpenAPI document now states, over HTTP (each answered differently before: a
/// plain-text 400 from the framework, a 400 for a float-notation integer, a 400 for an id that
/// merely cannot exist).
#[tokio::test]
async fn the_documented_edges_answer_as_the_document_says() {
    let h = Harness::start(&[Mode::Healthy]).await;
    for path in ["/api/products/%FF", "/api/transactions/%FF"] {
        let (status, body) = h.get(path).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{path}"
        );
    }
    // 128 characters (the documented maxLength) but 256 bytes: no event id can be that long.
    let long = urlencoding::encode(&"ÿ".repeat(128)).into_owned();
    let (status, body) = h.get(&format!("/api/transactions/{long}")).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "transaction_not_found")
    );
    for query in [
        "limit=abc",
        "limit=1&limit=2",
        "limit=0",
        "limit=101",
        "limit=",
    ] {
        let (status, body) = h.get(&format!("/api/transactions?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("limit"),
            "{query}: {body}"
        );
    }
    let (status, _, body) = h
        .order(
            Some("k-floats"),
            r#"{"lines": [{"id": 1.0, "quantity": 2e0}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let published = h.topic.published();
    assert_eq!(published[0]["data"]["products"][0]["change"], -2);
}
