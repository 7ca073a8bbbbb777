//! SDK and wire fidelity (issue 14): the .NET SDK's SAS tokens, malformed vs badly signed
//! tokens, redirects, and subscription fields the emulator does not implement.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// .NET's `HttpUtility.UrlEncode`: spaces as '+', lower-case hex.
fn dotnet_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'*'
            | b'('
            | b')' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

/// What `EventGridPublisherClient.BuildSharedAccessSignature(endpoint, expiration, key)` builds:
/// `r=<enc endpoint>&e=<enc expiry, en-US DateTimeOffset>&s=<enc base64 HMAC-SHA256>`.
fn dotnet_sas(resource: &str, expiry: &str, key_b64: &str) -> String {
    use hmac::{Hmac, Mac};
    let unsigned = format!("r={}&e={}", dotnet_encode(resource), dotnet_encode(expiry));
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(unsigned.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("{unsigned}&s={}", dotnet_encode(&sig))
}

async fn publish_token(emu: &Emulator, token: &str, id: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}?api-version=2018-01-01", emu.endpoint()))
        .header("aeg-sas-token", token)
        .json(&json!([event(id, "t", "s")]))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn dotnet_sdk_sas_tokens_are_accepted_malformed_ones_are_400_bad_signatures_401() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let resource = format!("{}?api-version=2018-01-01", emu.endpoint());
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%-m/%-d/%Y %-I:%M:%S %p +00:00")
        .to_string();
    let token = dotnet_sas(&resource, &expiry, KEY);
    assert!(
        token.contains("+PM+%2b00%3a00") || token.contains("+AM+%2b00%3a00"),
        "{token}"
    );
    let (s, v) = publish_token(&emu, &token, "dotnet-1").await;
    assert_eq!(s, 200, "{token}: {v}");

    let (s, v) = publish_token(&emu, "r=only-a-resource", "bad-1").await;
    assert_eq!(s, 400, "a token that cannot be read: {v}");
    assert_eq!(v["error"]["code"], "BadRequest", "{v}");
    let (s, _) = publish_token(&emu, &dotnet_sas(&resource, "not a date", KEY), "bad-2").await;
    assert_eq!(s, 400, "an unreadable expiry");

    let other_key = base64::engine::general_purpose::STANDARD.encode("another-key-entirely");
    let (s, v) = publish_token(&emu, &dotnet_sas(&resource, &expiry, &other_key), "sig-1").await;
    assert_eq!(s, 401, "{v}");
}

#[tokio::test]
async fn a_redirect_is_a_failed_delivery_and_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &["--time-scale", "100"]);
    let target = Receiver::start(200).await;
    // A webhook that passes the handshake, then answers every delivery with 302 to `target`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/eventgrid", listener.local_addr().unwrap());
    let location = target.url.clone();
    let app = Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let location = location.clone();
            async move {
                if headers
                    .get("aeg-event-type")
                    .is_some_and(|v| v == "SubscriptionValidation")
                {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    return axum::Json(
                        json!({"validationResponse": v[0]["data"]["validationCode"]}),
                    )
                    .into_response();
                }
                (StatusCode::FOUND, [("Location", location)]).into_response()
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let props = json!({"destination": webhook(&url), "retryPolicy": {"maxDeliveryAttempts": 2}});
    assert_eq!(put_subscription(&emu, "redirecting", props).await.0, 201);
    assert_eq!(publish(&emu, &json!([event("r-1", "t", "s")])).await.0, 200);
    let m = wait_metric(&emu, "redirecting", "dropped", 1, 30).await;
    assert_eq!(m["delivered"], 0, "a 302 is not a delivery: {m}");
    assert_eq!(m["failedAttempts"], 2, "{m}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.event_count(), 0, "the redirect was followed");
}

#[tokio::test]
async fn subscription_fields_the_emulator_does_not_implement_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let rx = Receiver::start(200).await;
    let mut with_mappings = webhook(&rx.url);
    with_mappings["properties"]["deliveryAttributeMappings"] =
        json!([{"name": "x", "type": "Static", "properties": {"value": "1"}}]);
    let cases = [
        (
            "deliveryAttributeMappings",
            json!({"destination": with_mappings}),
        ),
        (
            "deliveryWithResourceIdentity",
            json!({"destination": webhook(&rx.url), "deliveryWithResourceIdentity": {"identity": {"type": "SystemAssigned"}, "destination": webhook(&rx.url)}}),
        ),
        (
            "expirationTimeUtc",
            json!({"destination": webhook(&rx.url), "expirationTimeUtc": "2030-01-01T00:00:00Z"}),
        ),
        (
            "enableAdvancedFilteringOnArrays",
            json!({"destination": webhook(&rx.url), "filter": {"enableAdvancedFilteringOnArrays": true}}),
        ),
        (
            "somethingNew",
            json!({"destination": webhook(&rx.url), "somethingNew": 1}),
        ),
    ];
    for (field, props) in cases {
        let (s, v) = put_subscription(&emu, "refused", props).await;
        assert_eq!(s, 400, "{field}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    assert_eq!(
        get_json(&emu, "/subscriptions/refused").await.0,
        404,
        "nothing was created"
    );

    // Dead-lettering with the topic's identity (what infra/ deploys) is honoured, and labels kept.
    let props = json!({
        "destination": webhook(&rx.url),
        "labels": ["region"],
        "deadLetterWithResourceIdentity": {"identity": {"type": "SystemAssigned"}, "deadLetterDestination": dead_letter("letters")},
    });
    let (s, v) = put_subscription(&emu, "with-identity", props).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["properties"]["labels"], json!(["region"]));
    // A GET answer can be PUT back as it is (read-only fields are accepted).
    let (_, got) = get_json(&emu, "/subscriptions/with-identity").await;
    let mut back = got["properties"].clone();
    back["destination"]["properties"]["endpointUrl"] = json!(rx.url);
    let (s, v) = put_subscription(&emu, "with-identity", back).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn changing_a_subscriptions_endpoint_validates_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(dir.path(), &[]);
    let old = Receiver::start(200).await;
    let bad = Receiver::start(200).await;
    bad.set_handshake(Handshake::Status(403));
    let new = Receiver::start(200).await;
    assert_eq!(
        put_subscription(&emu, "moving", json!({"destination": webhook(&old.url)}))
            .await
            .0,
        201
    );
    // A new endpoint that fails the handshake is refused, and the subscription is unchanged.
    let (s, v) = put_subscription(&emu, "moving", json!({"destination": webhook(&bad.url)})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["details"][0]["code"], "SubscriptionValidationFailed",
        "{v}"
    );
    assert_eq!(publish(&emu, &json!([event("m-1", "t", "s")])).await.0, 200);
    wait_for(20, "the old endpoint still gets events", || {
        old.event_count() == 1
    })
    .await;
    assert_eq!(bad.event_count(), 0);
    // One that passes takes over.
    let (s, v) = put_subscription(&emu, "moving", json!({"destination": webhook(&new.url)})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(publish(&emu, &json!([event("m-2", "t", "s")])).await.0, 200);
    wait_for(20, "the new endpoint gets the next event", || {
        new.event_count() == 1
    })
    .await;
    assert_eq!(old.event_count(), 1);
}
