//! The library driven in process (how `saldo-stack` or a simulation can embed the topic).

mod common;

use common::*;
use saldo_eventgrid::{Config, spawn};
use saldo_publish::{Auth, Publisher};
use serde_json::json;

#[tokio::test]
async fn spawn_serves_the_same_topic_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        time_scale: 1000.0,
        ..Config::new(KEY, dir.path().join("data"), dir.path().join("dl"))
    };
    let running = spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let rx = Receiver::start(200).await;
    let props = serde_json::from_value(json!({"destination": webhook(&rx.url)})).unwrap();
    let (created, arm) = running
        .topic
        .put_subscription("in-proc", props, &running.url())
        .await
        .unwrap();
    assert!(created);
    assert_eq!(arm["name"], "in-proc");
    let ev = saldo_core::events::EventGridEvent {
        id: "1".into(),
        event_type: "recordUpdated".into(),
        subject: "warehouse/products/1".into(),
        event_time: chrono::Utc::now(),
        data: json!({"x": 1}),
        data_version: "1.0".into(),
        metadata_version: None,
        topic: None,
    };
    Publisher::new(running.endpoint(), Auth::Key(KEY.into()))
        .publish(&[ev])
        .await
        .unwrap();
    // The counter moves once the receiver's answer is back, a moment after it saw the event.
    wait_for(20, "delivery", || running.topic.metrics()["delivered"] == 1).await;
    assert_eq!(rx.event_count(), 1);
    let m = running.topic.metrics();
    assert_eq!(
        (
            m["accepted"].as_u64(),
            m["subscriptions"]["in-proc"]["delivered"].as_u64()
        ),
        (Some(1), Some(1)),
        "{m}"
    );
}

#[tokio::test]
async fn a_data_dir_serves_one_topic_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(KEY, dir.path().join("data"), dir.path().join("dl"));
    let first = saldo_eventgrid::Topic::open(config.clone()).await.unwrap();
    let err = saldo_eventgrid::Topic::open(config.clone())
        .await
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("another saldo-eventgrid"), "{err}");
    drop(first);
}
