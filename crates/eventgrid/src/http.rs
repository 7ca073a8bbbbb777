//! The HTTP surface: publishing, the management API, metrics, the validationUrl and health.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth;
use crate::error::ApiError;
use crate::schema::{self, MAX_BYTES};
use crate::subscription::Properties;
use crate::topic::Topic;

/// Management bodies are small; anything bigger is refused.
const MAX_MANAGEMENT_BODY: usize = 64 * 1024;

pub fn app(topic: Arc<Topic>) -> Router {
    // The management API and metrics need the topic key: checked once, for every route of this
    // router, so that no handler can forget it.
    let management = Router::new()
        .route("/subscriptions", get(list))
        .route(
            "/subscriptions/{name}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .route("/subscriptions/{name}/metrics", get(sub_metrics))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            topic.clone(),
            require_key,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // Publishing checks its key itself: a missing api-version is answered first, as Azure does.
        .route("/api/events", axum::routing::post(publish))
        .route("/eventsubscriptions/{name}/validate", get(validate))
        .merge(management)
        .fallback(|| async { ApiError::not_found("no such resource on this topic") })
        // Bodies are read with explicit limits below, so the documented 413 body is answered.
        .layer(DefaultBodyLimit::disable())
        .with_state(topic)
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string()
}

/// Checks a request's credentials: `publishing` takes what the topic's publish policy allows
/// (Entra tokens, and keys unless local auth is disabled); the management API stands for Azure
/// Resource Manager, where the deployer is trusted, and takes the topic key (choice: keyless
/// stacks still create their subscriptions with it, as a deployment does with its own identity).
fn authorize(
    topic: &Topic,
    headers: &HeaderMap,
    uri: &Uri,
    publishing: bool,
) -> Result<(), ApiError> {
    let full = format!(
        "http://{}{}",
        host(headers),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    auth::check(
        headers,
        uri.query().unwrap_or(""),
        &full,
        &if publishing {
            topic.publish_policy()
        } else {
            auth::Policy::key_only(topic.key())
        },
        chrono::Utc::now(),
    )
}

async fn require_key(
    State(topic): State<Arc<Topic>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    authorize(&topic, req.headers(), req.uri(), false)?;
    Ok(next.run(req).await)
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(format!(
            "the request is larger than {limit} bytes"
        )));
    }
    axum::body::to_bytes(body, limit + 1).await.map_err(|e| {
        ApiError::too_large(format!(
            "the request body could not be read within {limit} bytes: {e}"
        ))
    })
}

async fn publish(
    State(topic): State<Arc<Topic>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let query = uri.query().unwrap_or("");
    if !query
        .split('&')
        .any(|p| p.starts_with("api-version=") && p.len() > "api-version=".len())
    {
        return Err(ApiError::bad_request(
            "MissingApiVersionParameter",
            "the api-version query parameter (2018-01-01) is required",
        ));
    }
    authorize(&topic, &headers, &uri, true)?;
    let bytes = read_body(body, &headers, MAX_BYTES).await?;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let events = schema::parse_body(&bytes, content_type, topic.input_schema(), topic.topic_id())?;
    // 429 means one thing, as in Azure: the topic's publish rate was exceeded.
    topic.check_rate(events.len(), bytes.len())?;
    topic.publish(events).await?;
    Ok(StatusCode::OK)
}

async fn list(State(topic): State<Arc<Topic>>) -> Result<Response, ApiError> {
    Ok(axum::Json(topic.list_subscriptions()).into_response())
}

async fn get_one(
    State(topic): State<Arc<Topic>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = topic
        .get_subscription(&name)
        .ok_or_else(|| ApiError::not_found(format!("no subscription {name:?}")))?;
    Ok(axum::Json(v).into_response())
}

async fn put_one(
    State(topic): State<Arc<Topic>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, MAX_MANAGEMENT_BODY).await?;
    #[derive(serde::Deserialize)]
    struct Resource {
        properties: Properties,
    }
    let resource: Resource = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "InvalidRequestContent",
            format!("the subscription body is not valid: {e}"),
        )
    })?;
    let base = format!("http://{}", host(&headers));
    let (created, arm) = topic
        .put_subscription(&name, resource.properties, &base)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(arm)).into_response())
}

async fn delete_one(
    State(topic): State<Arc<Topic>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    topic.delete_subscription(&name).await?;
    Ok(StatusCode::OK)
}

async fn sub_metrics(
    State(topic): State<Arc<Topic>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = topic
        .subscription_metrics(&name)
        .ok_or_else(|| ApiError::not_found(format!("no subscription {name:?}")))?;
    Ok(axum::Json(v).into_response())
}

async fn metrics(State(topic): State<Arc<Topic>>) -> Result<Response, ApiError> {
    Ok(axum::Json(topic.metrics()).into_response())
}

#[derive(serde::Deserialize)]
struct ValidateQuery {
    id: String,
}

/// The validationUrl: the code in it is the credential, as in Azure (no key needed).
async fn validate(
    State(topic): State<Arc<Topic>>,
    Path(name): Path<String>,
    Query(q): Query<ValidateQuery>,
) -> Result<&'static str, ApiError> {
    if topic.validate_manually(&q.id) {
        tracing::info!(subscription = %name, "subscription validated through its validationUrl");
        Ok("Webhook successfully validated as a subscription endpoint.")
    } else {
        Err(ApiError::not_found("unknown or expired validation code"))
    }
}
