//! Delivery: headers, filters, batching, each status code's retry behaviour and timing at a fast
//! time scale, dead-letter blobs, isolation between subscribers, CloudEvents.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn headers_query_string_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    let props = json!({
        "destination": webhook(&format!("{}?code=secret%2Bkey", rx.url)),
        "filter": {"includedEventTypes": ["recordUpdated"], "subjectBeginsWith": "warehouse/", "subjectEndsWith": "/orange"},
    });
    assert_eq!(put_subscription(&emu, "west-europe", props).await.0, 201);
    let sensitive = Receiver::start(200).await;
    let props = json!({"destination": webhook(&sensitive.url), "filter": {"subjectBeginsWith": "Warehouse/", "isSubjectCaseSensitive": true}});
    assert_eq!(put_subscription(&emu, "sensitive", props).await.0, 201);
    let events = json!([
        event("match", "recordUpdated", "warehouse/products/orange"),
        event("case", "RecordUpdated", "WAREHOUSE/products/ORANGE"),
        event("type", "transactionCompleted", "warehouse/products/orange"),
        event("begin", "recordUpdated", "shop/products/orange"),
        event("end", "recordUpdated", "warehouse/products/apple"),
        event("upper", "x", "Warehouse/a"),
    ]);
    assert_eq!(publish(&emu, &events).await.0, 200);
    wait_metric(&emu, "west-europe", "delivered", 2, 20).await;
    wait_metric(&emu, "sensitive", "delivered", 1, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = rx
        .got()
        .iter()
        .flat_map(|g| g.events())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["case", "match"]);
    let ids: Vec<Value> = sensitive
        .got()
        .iter()
        .flat_map(|g| g.events())
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, [json!("upper")]);

    let g = &rx.got()[0];
    assert_eq!(
        g.path_and_query, "/api/eventgrid?code=secret%2Bkey",
        "the endpoint's query string is kept"
    );
    assert_eq!(g.header("aeg-event-type"), "Notification");
    assert_eq!(g.header("aeg-subscription-name"), "WEST-EUROPE");
    assert_eq!(g.header("aeg-delivery-count"), "0");
    assert_eq!(g.header("aeg-data-version"), "1.0");
    assert_eq!(g.header("aeg-metadata-version"), "1");
    assert!(g.header("content-type").starts_with("application/json"));
    let e = &g.events()[0];
    assert_eq!(
        e["topic"],
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/saldo-local/providers/Microsoft.EventGrid/topics/saldo-local"
    );
    assert_eq!(e["metadataVersion"], "1");
    assert_eq!(e["data"]["n"], e["id"]);
}

#[tokio::test]
async fn batching_never_waits_caps_count_and_size_and_sends_big_events_alone() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    let props = json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": rx.url, "maxEventsPerBatch": 3, "preferredBatchSizeInKilobytes": 2}}});
    assert_eq!(put_subscription(&emu, "batched", props).await.0, 201);
    let small: Vec<Value> = (0..10).map(|i| event(&format!("s{i}"), "t", "s")).collect();
    assert_eq!(publish(&emu, &Value::Array(small)).await.0, 200);
    wait_metric(&emu, "batched", "delivered", 10, 20).await;
    let mut sizes: Vec<usize> = rx.got().iter().map(|g| g.events().len()).collect();
    sizes.sort();
    assert_eq!(
        sizes,
        [1, 3, 3, 3],
        "10 events published together go as full batches of 3"
    );

    // A lone event goes at once (nothing waits for a batch to fill), and an event larger than
    // the preferred size goes alone.
    let mut big = event("big", "t", "s");
    big["data"] = json!("x".repeat(3000));
    let before = rx.got().len();
    assert_eq!(
        publish(
            &emu,
            &json!([event("a", "t", "s"), big, event("b", "t", "s")])
        )
        .await
        .0,
        200
    );
    wait_metric(&emu, "batched", "delivered", 13, 20).await;
    let got = rx.got()[before..].to_vec();
    for g in &got {
        let evs = g.events();
        if evs.iter().any(|e| e["id"] == "big") {
            assert_eq!(evs.len(), 1, "the big event goes alone");
        }
        let bytes = serde_json::to_vec(&g.body).unwrap().len();
        assert!(
            evs.len() == 1 || bytes <= 2048 + 2,
            "a batch of {} events is {bytes} bytes",
            evs.len()
        );
    }
}

fn dl_props(url: &str, extra: Value) -> Value {
    let mut p =
        json!({"destination": webhook(url), "deadLetterDestination": dead_letter("deadletter")});
    if let Value::Object(o) = extra {
        for (k, v) in o {
            p[k] = v;
        }
    }
    p
}

fn gaps(g: &[Got]) -> Vec<Duration> {
    g.windows(2).map(|w| w[1].at - w[0].at).collect()
}

fn counts(g: &[Got]) -> Vec<String> {
    g.iter().map(|x| x.header("aeg-delivery-count")).collect()
}

/// Azure's rules at `--time-scale 1000` (10 s becomes 10 ms): timing is checked only from below.
#[tokio::test]
async fn each_status_code_retries_dead_letters_or_drops_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--time-scale", "1000"]);
    let ms = Duration::from_millis;
    let mk = |status| async move { Receiver::start(status).await };

    let no_retry = [
        (400, "bad-request", true),
        (401, "unauthorized", false),
        (403, "forbidden", true),
        (413, "too-large", true),
    ];
    let mut no_retry_rx = Vec::new();
    for (status, name, with_dl) in no_retry {
        let rx = mk(status).await;
        let props = if with_dl {
            dl_props(&rx.url, json!({}))
        } else {
            json!({"destination": webhook(&rx.url)})
        };
        assert_eq!(put_subscription(&emu, name, props).await.0, 201);
        no_retry_rx.push((status, name, with_dl, rx));
    }
    let flaky = mk(200).await;
    flaky.script(&[(500, ms(0)), (500, ms(0))]);
    assert_eq!(
        put_subscription(&emu, "flaky", dl_props(&flaky.url, json!({})))
            .await
            .0,
        201
    );
    let busy = mk(200).await;
    busy.script(&[(503, ms(0))]);
    assert_eq!(
        put_subscription(&emu, "busy", dl_props(&busy.url, json!({})))
            .await
            .0,
        201
    );
    let req_timeout = mk(200).await;
    req_timeout.script(&[(408, ms(0))]);
    assert_eq!(
        put_subscription(
            &emu,
            "request-timeout",
            dl_props(&req_timeout.url, json!({}))
        )
        .await
        .0,
        201
    );
    let not_found = mk(200).await;
    not_found.script(&[(404, ms(0))]);
    assert_eq!(
        put_subscription(&emu, "not-found", dl_props(&not_found.url, json!({})))
            .await
            .0,
        201
    );
    let slow = mk(200).await;
    // The delivery timeout (30 s scaled, but never below 1 s) runs out on the first attempt.
    slow.script(&[(200, ms(2500))]);
    assert_eq!(
        put_subscription(&emu, "slow", dl_props(&slow.url, json!({})))
            .await
            .0,
        201
    );
    let failing = mk(500).await;
    assert_eq!(
        put_subscription(
            &emu,
            "max-attempts",
            dl_props(
                &failing.url,
                json!({"retryPolicy": {"maxDeliveryAttempts": 3}})
            )
        )
        .await
        .0,
        201
    );
    let doomed = mk(500).await;
    assert_eq!(
        put_subscription(
            &emu,
            "short-ttl",
            dl_props(
                &doomed.url,
                json!({"retryPolicy": {"eventTimeToLiveInMinutes": 1}})
            )
        )
        .await
        .0,
        201
    );

    assert_eq!(publish(&emu, &json!([event("e1", "t", "s")])).await.0, 200);

    // No-retry codes: one attempt, then dead-lettered (or dropped without a destination).
    for (status, name, with_dl, rx) in &no_retry_rx {
        let counter = if *with_dl { "deadLettered" } else { "dropped" };
        let m = wait_metric(&emu, name, counter, 1, 20).await;
        assert_eq!(
            (
                m["attempts"].as_u64(),
                m["retried"].as_u64(),
                m["pending"].as_u64()
            ),
            (Some(1), Some(0), Some(0)),
            "{status}: {m}"
        );
        assert_eq!(rx.got().len(), 1, "{status} is not retried");
    }

    // Retried codes: delays respect the schedule and the per-status minimums (scaled).
    wait_metric(&emu, "flaky", "delivered", 1, 20).await;
    let g = flaky.got();
    assert_eq!(counts(&g), ["0", "1", "2"]);
    let d = gaps(&g);
    assert!(
        d[0] >= ms(10) && d[1] >= ms(30),
        "schedule 10 s, 30 s (scaled): {d:?}"
    );
    wait_metric(&emu, "busy", "delivered", 1, 20).await;
    assert!(
        gaps(&busy.got())[0] >= ms(30),
        "503 waits at least 30 s (scaled)"
    );
    wait_metric(&emu, "request-timeout", "delivered", 1, 20).await;
    assert!(
        gaps(&req_timeout.got())[0] >= ms(120),
        "408 waits at least 2 min (scaled)"
    );
    wait_metric(&emu, "not-found", "delivered", 1, 20).await;
    assert_eq!(counts(&not_found.got()), ["0", "1"], "404 is retried");
    let m = wait_metric(&emu, "slow", "delivered", 1, 20).await;
    assert!(
        m["attempts"].as_u64().unwrap() >= 2,
        "the timed-out attempt was retried: {m}"
    );
    assert_eq!(counts(&slow.got())[..2], ["0", "1"]);

    // Out of attempts, out of time.
    let m = wait_metric(&emu, "max-attempts", "deadLettered", 1, 20).await;
    assert_eq!(m["attempts"], 3, "{m}");
    assert_eq!(failing.got().len(), 3);
    let m = wait_metric(&emu, "short-ttl", "deadLettered", 1, 30).await;
    assert_eq!(m["delivered"], 0, "{m}");

    // The blobs: layout and the added fields.
    let blobs = dead_letters(&emu.deadletter_dir());
    let find = |sub: &str| {
        blobs
            .iter()
            .find(|(p, _)| p.components().any(|c| c.as_os_str() == sub))
            .unwrap_or_else(|| panic!("no dead-letter blob for {sub} in {blobs:?}"))
            .clone()
    };
    for (sub, reason, attempts, status, outcome) in [
        (
            "BAD-REQUEST",
            "UndeliverableDueToHttpBadRequest",
            1,
            400,
            "BadRequest",
        ),
        (
            "FORBIDDEN",
            "UndeliverableDueToHttpForbidden",
            1,
            403,
            "Forbidden",
        ),
        (
            "TOO-LARGE",
            "UndeliverableDueToHttpRequestEntityTooLarge",
            1,
            413,
            "RequestEntityTooLarge",
        ),
        (
            "MAX-ATTEMPTS",
            "MaxDeliveryAttemptsExceeded",
            3,
            500,
            "GenericError",
        ),
    ] {
        let (path, v) = find(sub);
        let e = &v[0];
        assert_eq!(e["id"], "e1");
        assert_eq!(e["deadLetterReason"], reason, "{sub}");
        assert_eq!(e["deliveryAttempts"], attempts, "{sub}");
        assert_eq!(e["lastHttpStatusCode"], status, "{sub}");
        assert_eq!(e["lastDeliveryOutcome"], outcome, "{sub}");
        assert!(e["publishTime"].is_string());
        // <root>/deadletter/<SUB>/YYYY/M/D/H/<guid>.json, from the attempt time, not zero padded.
        let t =
            chrono::DateTime::parse_from_rfc3339(e["lastDeliveryAttemptTime"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
        use chrono::{Datelike, Timelike};
        let expected = emu
            .deadletter_dir()
            .join("deadletter")
            .join(sub)
            .join(format!(
                "{}/{}/{}/{}",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            ));
        assert_eq!(path.parent().unwrap(), expected);
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert!(uuid::Uuid::parse_str(stem).is_ok(), "{stem}");
    }
    let (_, v) = find("SHORT-TTL");
    assert_eq!(v[0]["deadLetterReason"], "TimeToLiveExceeded");
    // Usually after a few attempts; on a slow machine the 60 ms TTL may run out before the first.
    assert!(v[0]["deliveryAttempts"].is_u64());
    assert!(
        !blobs
            .iter()
            .any(|(p, _)| p.components().any(|c| c.as_os_str() == "UNAUTHORIZED")),
        "no destination: dropped"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // Created from the file: no handshake, so the endpoint may be down from the start.
    let file = dir.path().join("subs.json");
    let props = json!({"destination": webhook("http://127.0.0.1:9/api/eventgrid"), "retryPolicy": {"maxDeliveryAttempts": 2}, "deadLetterDestination": dead_letter("lost-and-found")});
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"value": [{"name": "down", "properties": props}]})).unwrap(),
    )
    .unwrap();
    let emu = Emulator::start(
        dir.path(),
        &[
            "--time-scale",
            "1000",
            "--subscriptions",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(publish(&emu, &json!([event("e1", "t", "s")])).await.0, 200);
    let m = wait_metric(&emu, "down", "deadLettered", 1, 20).await;
    assert_eq!(m["attempts"], 2, "{m}");
    let blobs = dead_letters(&emu.deadletter_dir().join("lost-and-found").join("DOWN"));
    assert_eq!(blobs.len(), 1);
    let e = &blobs[0].1[0];
    assert_eq!(
        (
            e["deadLetterReason"].as_str(),
            e["lastDeliveryOutcome"].as_str(),
            e["lastHttpStatusCode"].as_u64()
        ),
        (
            Some("MaxDeliveryAttemptsExceeded"),
            Some("SocketError"),
            Some(0)
        )
    );
}

#[tokio::test]
async fn a_stuck_subscriber_does_not_slow_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let stuck = Receiver::start(200).await;
    let healthy = Receiver::start(200).await;
    assert_eq!(
        put_subscription(&emu, "stuck", json!({"destination": webhook(&stuck.url)}))
            .await
            .0,
        201
    );
    assert_eq!(
        put_subscription(
            &emu,
            "healthy",
            json!({"destination": webhook(&healthy.url)})
        )
        .await
        .0,
        201
    );
    // Every answer of the stuck region takes 25 s (the timeout is 30 s): all its slots hang.
    stuck.script(&vec![(200, Duration::from_secs(25)); 200]);
    for r in 0..10 {
        let batch: Vec<Value> = (0..10)
            .map(|i| event(&format!("{r}-{i}"), "t", "s"))
            .collect();
        assert_eq!(publish(&emu, &Value::Array(batch)).await.0, 200);
    }
    wait_metric(&emu, "healthy", "delivered", 100, 20).await;
    let m = metrics(&emu, "stuck").await;
    assert!(
        m["pending"].as_u64().unwrap() >= 90,
        "the stuck subscription still holds its events: {m}"
    );
    assert!(
        stuck.got().len() <= 8,
        "at most the fixed number of deliveries in flight: {}",
        stuck.got().len()
    );
}

#[tokio::test]
async fn cloud_events_topic_handshake_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--input-schema", "CloudEventSchemaV1_0"]);
    let rx = Receiver::start(200).await;
    let (s, v) = put_subscription(&emu, "cloud", json!({"destination": webhook(&rx.url)})).await;
    assert_eq!(s, 201, "{v}");
    let ce = json!([{"id": "c1", "source": "/saldo/api", "specversion": "1.0", "type": "recordUpdated", "subject": "warehouse/1", "data": {"x": 1}}]);
    let r = client()
        .post(format!("{}?api-version=2018-01-01", emu.endpoint()))
        .header("aeg-sas-key", KEY)
        .header(
            "content-type",
            "application/cloudevents-batch+json; charset=utf-8",
        )
        .body(ce.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Event Grid schema events are not CloudEvents.
    let (s, _) = publish(&emu, &json!([event("x", "t", "s")])).await;
    assert_eq!(s, 400);
    wait_metric(&emu, "cloud", "delivered", 1, 20).await;
    let g = &rx.got()[0];
    assert!(
        g.header("content-type")
            .starts_with("application/cloudevents+json"),
        "{}",
        g.header("content-type")
    );
    assert_eq!(g.body["id"], "c1");
    assert_eq!(g.header("aeg-event-type"), "Notification");
}

/// After three failures in a row an endpoint is on probation (Forbidden: 5 min, here scaled by
/// 100 to 3 s): a new event waits for the probation to end even though the endpoint is fine again.
#[tokio::test]
async fn an_endpoint_that_keeps_failing_goes_on_probation() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--time-scale", "100"]);
    let rx = Receiver::start(403).await;
    assert_eq!(
        put_subscription(&emu, "probation", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    for i in 1..=3u64 {
        assert_eq!(
            publish(&emu, &json!([event(&format!("f{i}"), "t", "s")]))
                .await
                .0,
            200
        );
        wait_metric(&emu, "probation", "dropped", i, 20).await;
    }
    let third_failure = rx.got()[2].at;
    rx.set_default(200);
    assert_eq!(
        publish(&emu, &json!([event("after", "t", "s")])).await.0,
        200
    );
    wait_metric(&emu, "probation", "delivered", 1, 30).await;
    let delivered_at = rx.got()[3].at;
    assert!(
        delivered_at - third_failure >= Duration::from_millis(2900),
        "delivered {:?} after the third failure; probation is 3 s at this scale",
        delivered_at - third_failure
    );
}
