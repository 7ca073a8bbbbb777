//! `saldo up --keyless`, production's auth path on the real stack: the topic has local auth
//! disabled, the API and every worker publish with tokens from the managed-identity stand-in
//! (IDENTITY_ENDPOINT / IDENTITY_HEADER, no SALDO_TOPIC_KEY), and a purchase completes.

use saldo_tests::{Options, TestStack};
use serde_json::json;

#[tokio::test]
async fn a_purchase_completes_with_managed_identity_tokens_only() {
    let s = TestStack::start(Options {
        keyless: true,
        ..Options::default()
    })
    .await
    .expect("the keyless stack starts");
    // The catalogue was seeded through the identity stand-in too (keys are refused).
    s.wait_for_catalogue().await.unwrap();
    s.wait_for_fleet().await.unwrap();
    let topic = s.manifest().topic.clone().unwrap();
    let identity = topic
        .identity
        .clone()
        .expect("a keyless stack records its identity endpoint");

    let before = s.stock(1).await.unwrap();
    let tx = s.order(json!([{"id": 1, "quantity": 2}])).await.unwrap();
    let outcome = s.outcome(&tx).await.unwrap();
    assert_eq!(outcome["status"], "completed", "{outcome}");
    saldo_tests::wait_for(
        std::time::Duration::from_secs(30),
        "the stock to fall by 2",
        || async { (s.stock(1).await.ok() == Some(before - 2)).then_some(()) },
    )
    .await
    .unwrap();

    // The key no longer publishes: Azure's answer for a topic with local auth disabled.
    let err = s.publish(&json!([])).await.unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("disableLocalAuth"),
        "{err}"
    );

    // A token for the wrong audience from the same identity endpoint is refused.
    let v: serde_json::Value = s
        .http
        .get(&identity.endpoint)
        .query(&[
            ("resource", "https://vault.azure.net"),
            ("api-version", "2019-08-01"),
        ])
        .header("X-IDENTITY-HEADER", &identity.header)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = s
        .http
        .post(format!("{}?api-version=2018-01-01", topic.endpoint))
        .bearer_auth(v["access_token"].as_str().unwrap())
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
