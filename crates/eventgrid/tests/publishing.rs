//! Publishing: every bad input gets the documented status and error body and delivers nothing;
//! keys, SAS tokens (ours and the official Python SDK's) are checked.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use saldo_publish::{Auth, Publisher, sas};
use serde_json::{Value, json};

async fn raw(
    emu: &Emulator,
    query: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{query}", emu.endpoint()))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn assert_error_body(v: &Value) {
    let e = &v["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string(),
        "error body: {v}"
    );
    assert!(
        e["details"][0]["code"].is_string() && e["details"][0]["message"].is_string(),
        "error body: {v}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_documented_status_and_nothing_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    let (s, v) = put_subscription(&emu, "all", json!({"destination": webhook(&rx.url)})).await;
    assert_eq!(s, 201, "{v}");

    let q = "?api-version=2018-01-01";
    let key = [("aeg-sas-key", KEY)];
    let good = serde_json::to_vec(&json!([event("ok", "t", "s")])).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut e = event("x", "t", "s");
        f(&mut e);
        serde_json::to_vec(&json!([e])).unwrap()
    };
    let expired = sas::generate(
        &emu.endpoint(),
        KEY,
        Utc::now() - chrono::Duration::minutes(1),
    )
    .unwrap();
    let forged = sas::generate(
        &emu.endpoint(),
        "Zm9yZ2VkLWtleQ==",
        Utc::now() + chrono::Duration::minutes(5),
    )
    .unwrap();
    let other_resource = sas::generate(
        "http://127.0.0.1:1/api/events",
        KEY,
        Utc::now() + chrono::Duration::minutes(5),
    )
    .unwrap();
    let huge = with(&|e| e["data"] = json!("x".repeat(1024 * 1024)));
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        Vec<u8>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            q,
            key.to_vec(),
            "application/json",
            b"[{\"id\":".to_vec(),
            400,
        ),
        (
            "not an array",
            q,
            key.to_vec(),
            "application/json",
            serde_json::to_vec(&event("x", "t", "s")).unwrap(),
            400,
        ),
        (
            "missing id",
            q,
            key.to_vec(),
            "application/json",
            with(&|e| {
                e.as_object_mut().unwrap().remove("id");
            }),
            400,
        ),
        (
            "missing eventTime",
            q,
            key.to_vec(),
            "application/json",
            with(&|e| {
                e.as_object_mut().unwrap().remove("eventTime");
            }),
            400,
        ),
        (
            "wrong topic",
            q,
            key.to_vec(),
            "application/json",
            with(&|e| e["topic"] = json!("/subscriptions/x/topics/other")),
            400,
        ),
        (
            "no api-version",
            "",
            key.to_vec(),
            "application/json",
            good.clone(),
            400,
        ),
        (
            "no credentials",
            q,
            vec![],
            "application/json",
            good.clone(),
            401,
        ),
        (
            "wrong key",
            q,
            vec![("aeg-sas-key", "d3Jvbmc=")],
            "application/json",
            good.clone(),
            401,
        ),
        (
            "expired SAS",
            q,
            vec![("aeg-sas-token", expired.as_str())],
            "application/json",
            good.clone(),
            401,
        ),
        (
            "forged SAS",
            q,
            vec![("aeg-sas-token", forged.as_str())],
            "application/json",
            good.clone(),
            401,
        ),
        (
            "SAS for another resource",
            q,
            vec![("aeg-sas-token", other_resource.as_str())],
            "application/json",
            good.clone(),
            401,
        ),
        ("oversized", q, key.to_vec(), "application/json", huge, 413),
        (
            "CloudEvents to an Event Grid schema topic",
            q,
            key.to_vec(),
            "application/cloudevents-batch+json",
            good.clone(),
            400,
        ),
    ];
    for (what, query, headers, ct, body, want) in cases {
        let (s, v) = raw(&emu, query, &headers, ct, body).await;
        assert_eq!(s, want, "{what}: {v}");
        assert_error_body(&v);
    }
    let too_many: Vec<Value> = (0..5001).map(|i| event(&i.to_string(), "t", "s")).collect();
    let (s, v) = publish(&emu, &Value::Array(too_many)).await;
    assert_eq!(s, 413, "5,001 events: {v}");

    // One good event afterwards: exactly it arrives, proving none of the above was delivered.
    let (s, _) = raw(&emu, q, &key, "application/json", good).await;
    assert_eq!(s, 200);
    wait_metric(&emu, "all", "delivered", 1, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].events()[0]["id"], "ok");
    let (_, m) = get_json(&emu, "/metrics").await;
    assert_eq!(m["accepted"], 1, "{m}");
}

#[tokio::test]
async fn keys_and_sas_tokens_in_every_documented_place() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    assert_eq!(
        put_subscription(&emu, "all", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    let body = |id: &str| serde_json::to_vec(&json!([event(id, "t", "s")])).unwrap();
    let token = sas::generate(
        &emu.endpoint(),
        KEY,
        Utc::now() + chrono::Duration::minutes(5),
    )
    .unwrap();
    // A token for the host covers every path under it.
    let host_token = sas::generate(
        &format!("{}/", emu.url),
        KEY,
        Utc::now() + chrono::Duration::minutes(5),
    )
    .unwrap();
    let q_key = format!(
        "?api-version=2018-01-01&aeg-sas-key={}",
        urlencoding::encode(KEY)
    );
    let auth = format!("SharedAccessSignature {token}");
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("?api-version=2018-01-01".into(), vec![("aeg-sas-key", KEY)]),
        (q_key, vec![]),
        (
            "?api-version=2018-01-01".into(),
            vec![("aeg-sas-token", token.as_str())],
        ),
        (
            "?api-version=2018-01-01".into(),
            vec![("Authorization", auth.as_str())],
        ),
        (
            "?api-version=2018-01-01".into(),
            vec![("aeg-sas-token", host_token.as_str())],
        ),
    ];
    let n = cases.len();
    for (i, (query, headers)) in cases.into_iter().enumerate() {
        let (s, v) = raw(
            &emu,
            &query,
            &headers,
            "application/json",
            body(&i.to_string()),
        )
        .await;
        assert_eq!(s, 200, "case {i}: {v}");
    }
    // The shared publisher, with a key and with SAS tokens it signs itself.
    let e = saldo_core_event("p1");
    Publisher::new(emu.endpoint(), Auth::Key(KEY.into()))
        .publish(&[e])
        .await
        .unwrap();
    let sas_pub = Publisher::new(
        emu.endpoint(),
        Auth::SasToken {
            key: KEY.into(),
            valid_for: Duration::from_secs(300),
        },
    );
    sas_pub.publish(&[saldo_core_event("p2")]).await.unwrap();
    let bad = Publisher::new(
        emu.endpoint(),
        Auth::SasToken {
            key: "Zm9yZ2VkLWtleQ==".into(),
            valid_for: Duration::from_secs(300),
        },
    );
    assert!(matches!(
        bad.publish(&[saldo_core_event("p3")]).await,
        Err(saldo_publish::PublishError::Rejected { status: 401, .. })
    ));
    wait_metric(&emu, "all", "delivered", n as u64 + 2, 20).await;
}

fn saldo_core_event(id: &str) -> saldo_core::events::EventGridEvent<Value> {
    saldo_core::events::EventGridEvent {
        id: id.into(),
        event_type: "t".into(),
        subject: "s".into(),
        event_time: Utc::now(),
        data: json!({"x": 1}),
        data_version: "1.0".into(),
        metadata_version: None,
        topic: None,
    }
}

/// Events sent by Microsoft's own Python SDK (`azure-eventgrid`), with `AzureKeyCredential` and
/// with a token from its `generate_sas`, are accepted; an expired SDK token is refused.
#[tokio::test]
async fn the_official_python_sdk_can_publish() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.saldo/tools-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: create it with `python3 -m venv .saldo/tools-venv && .saldo/tools-venv/bin/pip install -r tools/requirements-tools.txt` (or run ./dev)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    assert_eq!(
        put_subscription(&emu, "all", json!({"destination": webhook(&rx.url)}))
            .await
            .0,
        201
    );
    let script = r#"
import sys, datetime
from azure.core.credentials import AzureKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.eventgrid import EventGridPublisherClient, generate_sas
from azure.eventgrid import EventGridEvent
endpoint, key = sys.argv[1], sys.argv[2]
def ev(i):
    return EventGridEvent(subject="sdk/" + i, event_type="sdkEvent", data={"i": i}, data_version="1.0")
EventGridPublisherClient(endpoint, AzureKeyCredential(key)).send([ev("key")])
soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
token = generate_sas(endpoint, key, soon)
EventGridPublisherClient(endpoint, AzureSasCredential(token)).send([ev("sas")])
past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
try:
    EventGridPublisherClient(endpoint, AzureSasCredential(generate_sas(endpoint, key, past))).send([ev("expired")])
    print("expired token accepted")
    sys.exit(1)
except HttpResponseError as e:
    assert e.status_code == 401, e.status_code
print("ok")
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &emu.endpoint(), KEY])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "python SDK script failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(20, "both SDK events delivered", || rx.event_count() >= 2).await;
    let subjects: Vec<String> = rx
        .got()
        .iter()
        .flat_map(|g| g.events())
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.contains(&"sdk/key".to_string()) && subjects.contains(&"sdk/sas".to_string()),
        "{subjects:?}"
    );
    assert!(!subjects.contains(&"sdk/expired".to_string()));
}
