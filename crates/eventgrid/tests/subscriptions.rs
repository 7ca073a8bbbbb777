//! The management API and the validation handshakes.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn handshakes_succeed_or_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--time-scale", "100"]);

    // Synchronous handshake: 200 with the validationResponse.
    let rx = Receiver::start(200).await;
    let (s, v) = put_subscription(
        &emu,
        "sync-one",
        json!({"destination": webhook(&format!("{}?code=abc", rx.url))}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "sync-one");
    assert_eq!(v["type"], "Microsoft.EventGrid/eventSubscriptions");
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        v["properties"]["destination"]["properties"]["endpointBaseUrl"],
        rx.url.as_str()
    );
    assert!(
        v["properties"]["destination"]["properties"]
            .get("endpointUrl")
            .is_none(),
        "the key in the URL is not echoed"
    );

    // Manual handshake: 200 without a body, then a GET of the validationUrl.
    let manual = Receiver::start(200).await;
    manual.set_handshake(Handshake::Manual);
    let (s, v) = put_subscription(
        &emu,
        "manual-one",
        json!({"destination": webhook(&manual.url)}),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // 202 is not accepted (as in Azure), nor is an error, nor an endpoint that is not there.
    let accepted_only = Receiver::start(200).await;
    accepted_only.set_handshake(Handshake::Status(202));
    let (s, v) = put_subscription(
        &emu,
        "two-oh-two",
        json!({"destination": webhook(&accepted_only.url)}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("202"),
        "{v}"
    );
    let (s, v) = put_subscription(
        &emu,
        "nobody-home",
        json!({"destination": webhook("http://127.0.0.1:9/api/eventgrid")}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{v}"
    );

    // 200 without a validationResponse and nobody opens the URL: fails after the (scaled) 5 min.
    let silent = Receiver::start(200).await;
    silent.set_handshake(Handshake::Status(200));
    let (s, v) = put_subscription(
        &emu,
        "silent-one",
        json!({"destination": webhook(&silent.url)}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("validationUrl"),
        "{v}"
    );

    // Only the validated ones exist.
    let (s, list) = get_json(&emu, "/subscriptions").await;
    assert_eq!(s, 200);
    let mut names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["manual-one", "sync-one"]);

    // Updating an existing subscription with the same endpoint answers 200 without a new handshake.
    rx.set_handshake(Handshake::Status(500));
    let (s, v) = put_subscription(
        &emu,
        "sync-one",
        json!({"destination": webhook(&format!("{}?code=abc", rx.url)), "filter": {"includedEventTypes": ["a"]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["properties"]["filter"]["includedEventTypes"][0], "a");
}

#[tokio::test]
async fn management_needs_the_key_validates_bodies_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    // No key, wrong key.
    let r = client()
        .get(format!("{}/subscriptions", emu.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/metrics", emu.url))
        .header("aeg-sas-key", "d3Jvbmc=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Health needs none.
    let r = client()
        .get(format!("{}/healthz", emu.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bad bodies.
    for (name, props) in [
        (
            "bad-batch",
            json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": rx.url, "maxEventsPerBatch": 0}}}),
        ),
        (
            "bad-attempts",
            json!({"destination": webhook(&rx.url), "retryPolicy": {"maxDeliveryAttempts": 31}}),
        ),
        (
            "bad-ttl",
            json!({"destination": webhook(&rx.url), "retryPolicy": {"eventTimeToLiveInMinutes": 1441}}),
        ),
        (
            "bad-type",
            json!({"destination": {"endpointType": "EventHub", "properties": {"endpointUrl": rx.url}}}),
        ),
        ("x", json!({"destination": webhook(&rx.url)})),
        ("no-destination", json!({})),
    ] {
        let (s, v) = put_subscription(&emu, name, props).await;
        assert_eq!(s, 400, "{name}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let r = client()
        .put(format!("{}/subscriptions/raw-junk", emu.url))
        .header("aeg-sas-key", KEY)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let props = json!({
        "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": rx.url, "maxEventsPerBatch": 10, "preferredBatchSizeInKilobytes": 64}},
        "filter": {"subjectBeginsWith": "warehouse/"},
        "retryPolicy": {"maxDeliveryAttempts": 5, "eventTimeToLiveInMinutes": 60},
        "deadLetterDestination": dead_letter("deadletter"),
    });
    assert_eq!(put_subscription(&emu, "keeper", props).await.0, 201);
    assert_eq!(
        put_subscription(&emu, "goner", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    let r = client()
        .delete(format!("{}/subscriptions/goner", emu.url))
        .header("aeg-sas-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get_json(&emu, "/subscriptions/goner").await.0, 404);
    let r = client()
        .delete(format!("{}/subscriptions/goner", emu.url))
        .header("aeg-sas-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Survives a restart, with every property.
    let emu = emu.restart();
    let (s, v) = get_json(&emu, "/subscriptions/keeper").await;
    assert_eq!(s, 200, "{v}");
    let p = &v["properties"];
    assert_eq!(p["destination"]["properties"]["maxEventsPerBatch"], 10);
    assert_eq!(p["filter"]["subjectBeginsWith"], "warehouse/");
    assert_eq!(p["retryPolicy"]["maxDeliveryAttempts"], 5);
    assert_eq!(
        p["deadLetterDestination"]["properties"]["blobContainerName"],
        "deadletter"
    );
    assert_eq!(get_json(&emu, "/subscriptions/goner").await.0, 404);
    let (_, list) = get_json(&emu, "/subscriptions").await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn subscriptions_file_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(200).await;
    let file = dir.path().join("subs.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!([{"name": "from-file", "properties": {"destination": webhook(&rx.url), "filter": {"includedEventTypes": ["recordUpdated"]}}}])).unwrap(),
    )
    .unwrap();
    let emu = Emulator::start(dir.path(), &["--subscriptions", file.to_str().unwrap()]);
    let (s, _) = get_json(&emu, "/subscriptions/from-file").await;
    assert_eq!(s, 200);
    assert_eq!(
        publish(
            &emu,
            &json!([event("1", "recordUpdated", "a"), event("2", "other", "a")])
        )
        .await
        .0,
        200
    );
    wait_metric(&emu, "from-file", "delivered", 1, 20).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(rx.event_count(), 1);
}
