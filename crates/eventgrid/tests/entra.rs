//! Production's only publishing path, locally: the managed-identity endpoint stand-in
//! (`saldo-identity`) issues tokens, the emulator with local auth disabled accepts them and
//! refuses keys, and `saldo-publish` gets its token through the IDENTITY_ENDPOINT protocol.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{Value, json};

const HEADER: &str = "local-identity-header-for-tests";

struct Identity {
    _child: saldo_testkit::KillOnDrop,
    url: String,
}

impl Identity {
    fn start(dir: &Path, roles: &str) -> Identity {
        let mut child = Command::new(env!("CARGO_BIN_EXE_saldo-identity"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--header",
                HEADER,
                "--roles",
                roles,
            ])
            .arg("--key-file")
            .arg(dir.join("identity.key"))
            .arg("--public-key-file")
            .arg(dir.join("identity.pub"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start saldo-identity");
        let stdout = child.stdout.take().unwrap();
        let child = saldo_testkit::KillOnDrop(child);
        let url = format!(
            "{}/msi/token",
            saldo_testkit::first_line_url(stdout, Duration::from_secs(20))
        );
        Identity { _child: child, url }
    }

    async fn token_response(&self, resource: &str, header: Option<&str>) -> (u16, Value) {
        let mut req = client()
            .get(&self.url)
            .query(&[("resource", resource), ("api-version", "2019-08-01")]);
        if let Some(h) = header {
            req = req.header("X-IDENTITY-HEADER", h);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, resource: &str) -> String {
        let (s, v) = self.token_response(resource, Some(HEADER)).await;
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }
}

async fn publish_with(emu: &Emulator, name: &str, value: &str, id: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}?api-version=2018-01-01", emu.endpoint()))
        .header(name, value)
        .json(&json!([event(id, "t", "s")]))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn keyless_topic_takes_managed_identity_tokens_and_refuses_keys() {
    let dir = tempfile::tempdir().unwrap();
    let id_dir = dir.path().join("identity");
    std::fs::create_dir_all(&id_dir).unwrap();
    let identity = Identity::start(&id_dir, "EventGrid Data Sender");
    let public = id_dir.join("identity.pub");
    let emu = Emulator::start(
        dir.path(),
        &[
            "--entra-public-key-file",
            public.to_str().unwrap(),
            "--disable-local-auth",
        ],
    );
    let rx = Receiver::start(200).await;
    // The management API (standing for Azure Resource Manager) still takes the key.
    assert_eq!(
        put_subscription(&emu, "all", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );

    // The identity endpoint's protocol: the header is required, the answer has Azure's shape.
    let (s, _) = identity
        .token_response("https://eventgrid.azure.net", None)
        .await;
    assert_eq!(s, 401, "no X-IDENTITY-HEADER, no token");
    let (s, v) = identity
        .token_response("https://eventgrid.azure.net", Some(HEADER))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["resource"], "https://eventgrid.azure.net");
    let expires: i64 = v["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires > Utc::now().timestamp() + 3000, "{v}");

    // A good token publishes.
    let token = identity.token("https://eventgrid.azure.net").await;
    let (s, v) = publish_with(&emu, "Authorization", &format!("Bearer {token}"), "ok-1").await;
    assert_eq!(s, 200, "{v}");

    // Keys and SAS tokens are refused: local auth is disabled.
    let (s, v) = publish_with(&emu, "aeg-sas-key", KEY, "key-1").await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disableLocalAuth"),
        "{v}"
    );
    let sas = saldo_publish::sas::generate(
        &emu.endpoint(),
        KEY,
        Utc::now() + chrono::Duration::hours(1),
    )
    .unwrap();
    assert_eq!(
        publish_with(&emu, "aeg-sas-token", &sas, "sas-1").await.0,
        401
    );

    // A token for another resource is not a token for Event Grid.
    let vault = identity.token("https://vault.azure.net").await;
    let (s, v) = publish_with(&emu, "Authorization", &format!("Bearer {vault}"), "aud-1").await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("audience"),
        "{v}"
    );
    // A tampered token fails its signature.
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        publish_with(
            &emu,
            "Authorization",
            &format!("Bearer {tampered}"),
            "sig-1"
        )
        .await
        .0,
        401
    );

    // An identity without the EventGrid Data Sender role is authenticated but not authorised.
    drop(identity);
    let reader = Identity::start(&id_dir, "EventGrid Data Receiver");
    let token = reader.token("https://eventgrid.azure.net").await;
    let (s, v) = publish_with(&emu, "Authorization", &format!("Bearer {token}"), "role-1").await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("EventGrid Data Sender"),
        "{v}"
    );
    drop(reader);

    // saldo-publish (what the API and the workers use) gets its token through the protocol.
    let sender = Identity::start(&id_dir, "EventGrid Data Sender");
    let publisher = saldo_publish::Publisher::new(
        emu.endpoint(),
        saldo_publish::Auth::Entra(saldo_publish::ManagedIdentity {
            endpoint: sender.url.clone(),
            header: HEADER.into(),
        }),
    );
    let ev = saldo_core::events::EventGridEvent {
        id: "pub-1".into(),
        event_type: "t".into(),
        subject: "s".into(),
        event_time: Utc::now(),
        data: json!({"x": 1}),
        data_version: "1.0".into(),
        metadata_version: None,
        topic: None,
    };
    publisher.publish(&[ev]).await.unwrap();

    wait_for(30, "both accepted events delivered", || {
        rx.event_count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = rx
        .got()
        .iter()
        .flat_map(|g| g.events())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "only the two authorised events: {ids:?}");
    assert!(
        ids.contains(&"ok-1".to_string()) && ids.contains(&"pub-1".to_string()),
        "{ids:?}"
    );
}

#[tokio::test]
async fn local_auth_cannot_be_disabled_without_a_token_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_saldo-eventgrid"))
        .args(["--key", KEY, "--disable-local-auth"])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .arg("--deadletter-dir")
        .arg(dir.path().join("dl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody could publish"));
}
