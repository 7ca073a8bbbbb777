//! The Entra path against a local fake of App Service's managed identity endpoint and a fake topic.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use saldo_core::events::EventGridEvent;
use saldo_publish::{Auth, ManagedIdentity, PublishError, Publisher};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Fake {
    /// Seconds of validity of the tokens handed out.
    lifetime: Arc<Mutex<i64>>,
    issued: Arc<Mutex<u32>>,
    seen_auth: Arc<Mutex<Vec<String>>>,
    topic_status: Arc<Mutex<u16>>,
}

async fn identity(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    if headers
        .get("X-IDENTITY-HEADER")
        .is_none_or(|v| v != "secret-header")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "missing X-IDENTITY-HEADER"})),
        );
    }
    assert_eq!(
        q.get("resource").map(String::as_str),
        Some("https://eventgrid.azure.net")
    );
    assert_eq!(q.get("api-version").map(String::as_str), Some("2019-08-01"));
    let mut n = f.issued.lock().unwrap();
    *n += 1;
    let expires = chrono::Utc::now().timestamp() + *f.lifetime.lock().unwrap();
    (
        StatusCode::OK,
        axum::Json(
            json!({"access_token": format!("token-{n}"), "expires_on": expires.to_string(), "resource": "https://eventgrid.azure.net", "token_type": "Bearer"}),
        ),
    )
}

async fn topic(State(f): State<Fake>, headers: HeaderMap) -> StatusCode {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    f.seen_auth.lock().unwrap().push(auth);
    StatusCode::from_u16(*f.topic_status.lock().unwrap()).unwrap()
}

async fn start(lifetime: i64) -> (Fake, String, ManagedIdentity) {
    let f = Fake::default();
    *f.lifetime.lock().unwrap() = lifetime;
    *f.topic_status.lock().unwrap() = 200;
    let app = Router::new()
        .route("/msi/token", get(identity))
        .route("/api/events", post(topic))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mi = ManagedIdentity {
        endpoint: format!("{base}/msi/token"),
        header: "secret-header".into(),
    };
    (f, format!("{base}/api/events"), mi)
}

fn ev() -> EventGridEvent<Value> {
    EventGridEvent {
        id: "1".into(),
        event_type: "t".into(),
        subject: "s".into(),
        event_time: chrono::Utc::now(),
        data: json!({}),
        data_version: "1.0".into(),
        metadata_version: None,
        topic: None,
    }
}

#[tokio::test]
async fn bearer_token_is_fetched_once_and_cached_until_near_expiry() {
    let (f, endpoint, mi) = start(3600).await;
    let p = Publisher::new(endpoint, Auth::Entra(mi));
    p.publish(&[ev()]).await.unwrap();
    p.clone().publish(&[ev()]).await.unwrap();
    assert_eq!(
        *f.issued.lock().unwrap(),
        1,
        "the token is cached (and shared by clones)"
    );
    assert_eq!(
        *f.seen_auth.lock().unwrap(),
        ["Bearer token-1", "Bearer token-1"]
    );

    // A 401 from the topic drops the cached token.
    *f.topic_status.lock().unwrap() = 401;
    assert!(matches!(
        p.publish(&[ev()]).await,
        Err(PublishError::Rejected { status: 401, .. })
    ));
    *f.topic_status.lock().unwrap() = 200;
    p.publish(&[ev()]).await.unwrap();
    assert_eq!(*f.issued.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_token_close_to_expiry_is_replaced() {
    // Valid for 60 s, which is inside the refresh margin: every publish needs a new one.
    let (f, endpoint, mi) = start(60).await;
    let p = Publisher::new(endpoint, Auth::Entra(mi));
    p.publish(&[ev()]).await.unwrap();
    p.publish(&[ev()]).await.unwrap();
    assert_eq!(*f.issued.lock().unwrap(), 2);
    assert_eq!(
        *f.seen_auth.lock().unwrap(),
        ["Bearer token-1", "Bearer token-2"]
    );
}

#[tokio::test]
async fn an_identity_endpoint_that_refuses_is_reported_as_unavailable() {
    let (f, endpoint, mut mi) = start(3600).await;
    mi.header = "wrong".into();
    let p = Publisher::new(endpoint, Auth::Entra(mi));
    let err = p.publish(&[ev()]).await.unwrap_err();
    assert!(
        matches!(&err, PublishError::Unavailable(m) if m.contains("managed identity")),
        "{err}"
    );
    assert!(
        f.seen_auth.lock().unwrap().is_empty(),
        "nothing is sent without a token"
    );
}
