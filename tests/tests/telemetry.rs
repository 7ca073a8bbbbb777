//! Issue 7's proof: every app exports to Application Insights (a local fake ingestion endpoint),
//! and one purchase is one operation from the API's request through every worker, with the
//! transaction id as a property; a failed execution is an exception of its purchase's trace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use saldo_telemetry::testing::{FakeIngestion, of_type, property, tag};
use saldo_tests::{Options, TestStack, command};
use serde_json::{Value, json};

fn traceparent() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    (trace.clone(), format!("00-{trace}-{span}-01"))
}

fn of_operation<'a>(all: &'a [Value], trace: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|e| tag(e, "ai.operation.id") == Some(trace))
        .collect()
}

fn instances(envelopes: &[&Value], role: &str) -> BTreeSet<String> {
    envelopes
        .iter()
        .filter(|e| tag(e, "ai.cloud.role") == Some(role))
        .filter_map(|e| tag(e, "ai.cloud.roleInstance").map(String::from))
        .collect()
}

#[tokio::test]
async fn one_purchase_is_one_trace_across_every_hop() {
    let ingestion = FakeIngestion::start();
    let env = BTreeMap::from([
        (
            "APPLICATIONINSIGHTS_CONNECTION_STRING".to_string(),
            ingestion.connection_string(),
        ),
        // Export within a fraction of a second instead of Azure's batching delays.
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        ("OTEL_BLRP_SCHEDULE_DELAY".to_string(), "200".to_string()),
    ]);
    let s = TestStack::start(Options {
        env,
        ..Options::default()
    })
    .await
    .unwrap();
    s.wait_for_catalogue().await.unwrap();
    s.wait_for_fleet().await.unwrap();
    let regions = s.regions();

    // A purchase that arrives with the browser's trace context.
    let (trace, parent) = traceparent();
    let resp = s
        .http
        .post(format!("{}/api/orders", s.api()))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("traceparent", &parent)
        .json(&json!({"lines": [{"id": 1, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let tx = resp.json::<Value>().await.unwrap()["transaction"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.outcome(&tx).await.unwrap()["status"], "completed");

    let all = ingestion.wait_for(Duration::from_secs(60), |all| {
        let op = of_operation(all, &trace);
        let workers = instances(&op, "saldo-worker");
        !instances(&op, "saldo-api").is_empty() && regions.iter().all(|r| workers.contains(r))
    });
    let op = of_operation(&all, &trace);
    assert!(
        !instances(&op, "saldo-api").is_empty(),
        "the API's request is in the trace"
    );
    let workers = instances(&op, "saldo-worker");
    for r in &regions {
        assert!(
            workers.contains(r),
            "{r} is in the purchase's trace (instances: {workers:?})"
        );
    }
    let requests = of_type(&all, "Request");
    assert!(
        requests
            .iter()
            .any(|e| tag(e, "ai.operation.id") == Some(trace.as_str())
                && tag(e, "ai.cloud.role") == Some("saldo-api")),
        "the API's request is exported as a Request"
    );
    assert!(
        op.iter()
            .any(|e| property(e, "transaction") == Some(tx.as_str())),
        "the transaction id is a property"
    );
    assert!(
        op.iter()
            .filter(|e| tag(e, "ai.cloud.role") == Some("saldo-worker"))
            .all(|e| tag(e, "ai.cloud.roleInstance").is_some()),
        "every worker envelope names its instance"
    );

    // An execution that fails: a product document the store cannot read.
    s.database()
        .await
        .unwrap()
        .collection::<mongodb::bson::Document>("warehouse")
        .insert_one(mongodb::bson::doc! {"_id": "product:77", "id": 77, "ean": 7, "name": "Broken", "saldo": "lots"})
        .await
        .unwrap();
    let (trace2, parent2) = traceparent();
    let mut event = command(
        "telemetry-broken-1",
        json!([{"id": 77, "ean": 7, "name": "Broken", "change": -1}]),
    );
    event["data"]["traceparent"] = json!(parent2);
    s.publish(&json!([event])).await.unwrap();
    let all = ingestion.wait_for(Duration::from_secs(60), |all| {
        of_type(all, "Exception")
            .iter()
            .any(|e| tag(e, "ai.operation.id") == Some(trace2.as_str()))
    });
    let exceptions: Vec<&Value> = of_type(&all, "Exception")
        .into_iter()
        .filter(|e| tag(e, "ai.operation.id") == Some(trace2.as_str()))
        .collect();
    assert!(
        !exceptions.is_empty(),
        "a failed execution is an exception of its purchase's trace"
    );
    assert_eq!(tag(exceptions[0], "ai.cloud.role"), Some("saldo-worker"));
}
