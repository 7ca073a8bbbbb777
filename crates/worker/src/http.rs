//! The worker's HTTP surface: the routes of `functions-host/worker` (forwarded unchanged by the
//! Functions host) plus the timer invocations `POST /heartbeat` and `POST /sweep`.
//!
//! Status codes steer Event Grid: 200 only when every event of the delivery is durably in the
//! ledger; 400 for a delivery that can never succeed (dead-lettered at once, never retried); 503
//! when the database is unavailable or the node is starting (retried); 500 for anything else
//! unexpected (retried).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saldo_store::{Detail, Store, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::{Bus, Clock, Delivery, Node, NodeError, PeerClient};

/// Event Grid's limit per delivery request; bigger is never a valid delivery.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default and maximum page size of `GET /api/ledger`.
pub const DEFAULT_PAGE: usize = 100;

/// An error answer in Event Grid's own error shape.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalServerError",
    };
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// Seconds a client should wait after a contended write (`Retry-After`).
pub const CONTENDED_RETRY_AFTER_S: u32 = 1;

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        // Not an outage: the database is up and the write lost to others every time. 503 makes
        // Event Grid (and any client) retry; `Retry-After` says soon.
        StoreError::Contended(m) => {
            tracing::info!(error = %m, "write contended; asked the caller to retry");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, m);
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(CONTENDED_RETRY_AFTER_S),
            );
            r
        }
        StoreError::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

fn node_error(e: NodeError) -> Response {
    match e {
        NodeError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        NodeError::NotReady(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        NodeError::Store(e) => store_error(e),
        e @ (NodeError::Publish(_) | NodeError::Peer(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e @ NodeError::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The router. Generic over the node's parts so tests can drive it with any store.
pub fn app<S: Store, C: Clock, B: Bus, P: PeerClient>(node: Arc<Node<S, C, B, P>>) -> Router {
    Router::new()
        .route(
            "/api/eventgrid",
            post(eventgrid::<S, C, B, P>).options(eventgrid_options),
        )
        .route("/api/products", get(products::<S, C, B, P>))
        .route("/api/products/{id}", get(product::<S, C, B, P>))
        .route("/api/ledger", get(ledger::<S, C, B, P>))
        .route("/api/ledger/{id}", get(ledger_entry::<S, C, B, P>))
        .route("/api/outcomes/{id}", get(outcome::<S, C, B, P>))
        .route("/api/status", get(status::<S, C, B, P>))
        .route("/heartbeat", post(heartbeat::<S, C, B, P>))
        .route("/sweep", post(sweep::<S, C, B, P>))
        .layer(axum::middleware::from_fn(
            saldo_telemetry::http::trace_requests,
        ))
        .with_state(node)
}

type St<S, C, B, P> = State<Arc<Node<S, C, B, P>>>;

/// Runs `work` on its own task and waits for it, so that it finishes even when the caller gives
/// up. Event Grid (and the Functions host) time a request out and close the connection, which
/// drops the handler's future wherever it is: after a warehouse commit but before the outcome is
/// recorded, the counters counted or the completion published. Every such cut is repaired later
/// (the sweep adopts our own marker), but only later, and the work is already paid for; letting
/// it finish costs nothing. Bounded: a request waits for its task, so only requests whose caller
/// has gone leave one running, and each ends within the store's timeout.
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, NodeError>> + Send + 'static,
) -> Result<T, NodeError> {
    use tracing::Instrument;
    // The request's span goes along: the work stays in the purchase's trace.
    match tokio::spawn(work.instrument(tracing::Span::current())).await {
        Ok(r) => r,
        // A panic in the work (a broken invariant) answers 500 and Event Grid retries.
        Err(e) => Err(NodeError::Internal(Detail::caused_by(
            format!("the request's work ended abnormally: {e}"),
            e,
        ))),
    }
}

async fn eventgrid<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    req: Request,
) -> Response {
    // Read the body ourselves so that an oversized delivery is a 400 with a reason (it can
    // never succeed) rather than the framework's 413.
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("delivery larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("delivery is not JSON: {e}"),
            );
        }
    };
    let done = to_completion(async move { node.handle_delivery(&body).await }).await;
    match done {
        Ok(Delivery::Validation { code }) => {
            Json(json!({"validationResponse": code})).into_response()
        }
        Ok(Delivery::Accepted {
            new_commands,
            duplicates,
            outcomes,
            heartbeats,
            executed,
            quarantined,
        }) => Json(json!({
            "newCommands": new_commands, "duplicates": duplicates, "outcomes": outcomes,
            "heartbeats": heartbeats, "executed": executed, "quarantined": quarantined,
        }))
        .into_response(),
        Err(e) => {
            if matches!(e, NodeError::Invalid(_)) {
                tracing::warn!(error = %e, "refused a delivery");
            }
            node_error(e)
        }
    }
}

/// The CloudEvents webhook handshake (abuse protection): allow the requesting origin.
async fn eventgrid_options(headers: HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut().insert("WebHook-Allowed-Origin", origin);
    resp.headers_mut()
        .insert("WebHook-Allowed-Rate", HeaderValue::from_static("*"));
    resp
}

async fn products<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
) -> Response {
    match node.products().await {
        Ok(p) => Json(p).into_response(),
        Err(e) => store_error(e),
    }
}

async fn product<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("product id must be a non-negative integer, got {id:?}"),
        );
    };
    match node.product(id).await {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown product {id}")),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
    /// `?recent=N`: the newest N entries, newest first, instead of a feed page.
    recent: Option<usize>,
}

async fn ledger<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "after and limit must be non-negative integers",
        );
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, saldo_store::MAX_PAGE);
    if let Some(n) = q.recent {
        return match node.recent(n.clamp(1, saldo_store::MAX_PAGE)).await {
            Ok(page) => Json(page).into_response(),
            Err(e) => store_error(e),
        };
    }
    match node.feed(q.after.unwrap_or(0), limit).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_error(e),
    }
}

async fn ledger_entry<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    Path(id): Path<String>,
) -> Response {
    match node.ledger_entry(&id).await {
        Ok(Some(e)) => Json(e).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("transaction {id:?} is not in {}'s ledger", node.cfg.node),
        ),
        Err(e) => store_error(e),
    }
}

/// The warehouse's outcome of a transaction (its applied-marker), 404 while nobody has
/// executed it: one read, whichever node executed it (the API's cheap status poll).
async fn outcome<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    Path(id): Path<String>,
) -> Response {
    match node.outcome(&id).await {
        Ok(Some(o)) => Json(o).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("transaction {id:?} has no outcome in the warehouse"),
        ),
        Err(e) => store_error(e),
    }
}

async fn status<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
) -> Response {
    Json(node.status().await).into_response()
}

/// The custom handler's answer to a timer invocation.
fn invocation(status: StatusCode, logs: Vec<String>, value: Value) -> Response {
    (
        status,
        Json(json!({"Outputs": {}, "Logs": logs, "ReturnValue": value})),
    )
        .into_response()
}

fn invocation_error(e: NodeError) -> Response {
    let status = match &e {
        NodeError::Store(StoreError::Failed(_))
        | NodeError::Invalid(_)
        | NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    tracing::warn!(error = %e, "timer invocation failed");
    invocation(status, vec![e.to_string()], Value::Null)
}

async fn heartbeat<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    _body: Body,
) -> Response {
    match to_completion(async move { node.heartbeat().await }).await {
        Ok(()) => invocation(StatusCode::OK, vec![], Value::Null),
        Err(e) => invocation_error(e),
    }
}

async fn sweep<S: Store, C: Clock, B: Bus, P: PeerClient>(
    State(node): St<S, C, B, P>,
    _body: Body,
) -> Response {
    match to_completion(async move { node.sweep().await }).await {
        Ok(r) => invocation(
            StatusCode::OK,
            vec![format!(
                "executed {}, republished {}, repairs {:?}",
                r.executed, r.republished, r.repairs
            )],
            Value::Null,
        ),
        Err(e) => invocation_error(e),
    }
}
