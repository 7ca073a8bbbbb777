//! The `saldo-api` binary: settings from the environment, the listening line, serving.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

use saldo_testkit::KillOnDrop as Killed;

fn api_command(node: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_saldo-api"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SALDO_NODES", format!("{node}/, "))
        .env("SALDO_FLEET_KEY", FLEET_KEY)
        // The database is reached lazily: reads work without it.
        .env(
            "SALDO_MONGODB_URI",
            "mongodb://127.0.0.1:1/?directConnection=true",
        )
        .env("SALDO_TOPIC_ENDPOINT", "http://127.0.0.1:1/api/events")
        .env("SALDO_TOPIC_KEY", TOPIC_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn the_binary_listens_on_the_custom_handler_port() {
    let node = FakeNode::start("n0", Mode::Healthy).await;
    let mut child = Killed(
        api_command(&node.url)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", "0")
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let url = saldo_testkit::first_line_url(stdout, Duration::from_secs(30));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = reqwest::Client::new();
    let (status, body) = read(
        http.get(format!("{url}/api/products/1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["name"].as_str()),
        (200, Some("Orange"))
    );
    let (status, doc) = read(
        http.get(format!("{url}/api/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    assert!(doc["paths"]["/api/orders"]["post"].is_object());
}

#[test]
fn the_binary_refuses_to_start_without_nodes() {
    let out = api_command("http://127.0.0.1:1")
        .env("SALDO_NODES", " , ")
        .arg("--port")
        .arg("0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SALDO_NODES"), "{err}");
}
