//! HTTP wiring: the routes, their OpenAPI description, and the request flows that combine the
//! rules ([`crate::commands`], [`crate::aggregate`]) with the adapters (fleet, store, topic).

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, body::Bytes};
use chrono::Utc;
use saldo_core::events::{EventGridEvent, ProductLine, RecordUpdated};
use saldo_core::views::{LedgerEntryView, LedgerPage, NodeStatusView, OutcomeView, ProductView};
use saldo_publish::PublishError;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::aggregate::{self, Accepted, FleetView, RecentView, Status, TransactionView};
use crate::commands::{self, Intent, OrderRequest, SetSaldoRequest, TransactionIdCheck};
use crate::contract::{OrderHeaders, ProductIdPath, RecentQuery, StockHeaders, TransactionIdPath};
use crate::error::{ApiError, ErrorBody, invalid};
use crate::fleet::{Answer, Auth, NodeError};
use crate::idempotency::{Insert, Record};
use crate::principal;

/// Largest request body; anything bigger is refused with 413 before it is read. A full order of
/// 100 lines is about 4 KB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that repeats the one given to an earlier request with the same key.
pub const REPLAYED: &str = "idempotent-replayed";
/// Which worker node answered a read (the demo shows failover with it).
pub const SERVED_BY: &str = "saldo-served-by";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Saldo shop API",
        description = "The webshop's API: live stock from the regional worker nodes, orders and \
            warehouse updates published as commands, transaction status and fleet health. Errors \
            are `{\"error\": {\"code\", \"message\"}}`: 400 when a request breaks this \
            document (types, bounds, patterns, required headers), 401/403 for the caller, 404 \
            for a resource that does not exist, 422 when a request conforms but cannot be \
            carried out (unknown products, a product on two lines, a key reused for a different \
            request), 413 for a body over 64 KiB, 503 with `Retry-After` when a dependency is \
            away. A method a route does not list is answered 404 with an empty body, as the \
            Azure Functions host does."
    ),
    // Referenced by name from `contract::order_lines`, so listed here.
    components(schemas(commands::OrderLine)),
    tags(
        (name = "shop", description = "Catalogue and orders"),
        (name = "warehouse", description = "Stock updates (role `warehouse`)"),
        (name = "fleet", description = "Transactions and nodes")
    )
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_products))
        .routes(routes!(get_product, put_product))
        .routes(routes!(post_order))
        .routes(routes!(get_transaction))
        .routes(routes!(list_transactions))
        .routes(routes!(get_nodes))
        .routes(routes!(get_openapi))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The API as an axum router, ready to serve.
pub fn app(state: AppState) -> Router {
    let (router, doc) = routes().split_for_parts();
    let doc = Arc::new(
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes"),
    );
    router
        // The reconcile timer's invocation (not a public route, so not in the document).
        .route("/reconcile", axum::routing::post(crate::reconcile::invoke))
        .fallback(|uri: Uri| async move { ApiError::RouteNotFound(uri.path().to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(Extension(OpenApiJson(doc)))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(no_store))
        .layer(axum::middleware::from_fn(
            saldo_telemetry::http::trace_requests,
        ))
}

#[derive(Clone)]
struct OpenApiJson(Arc<String>);

/// Stock, transactions and fleet health change from second to second: no cache may keep them.
async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Schema-only mirror of `saldo_core::views::ProductView` (the core has no OpenAPI dependency).
#[derive(ToSchema)]
#[allow(dead_code)]
struct Product {
    #[schema(schema_with = crate::contract::product_id)]
    id: u64,
    /// EAN-13 code.
    #[schema(schema_with = crate::contract::product_id)]
    ean: u64,
    name: String,
    /// Units in stock.
    saldo: i64,
}

/// The answer to an accepted command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedView {
    pub transaction: String,
    /// Always `pending`: follow `Location` for the outcome.
    pub status: Status,
}

fn no_node(failures: Vec<(String, NodeError)>) -> ApiError {
    let detail: Vec<String> = failures
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect();
    ApiError::NoNodeAvailable(detail.join("; "))
}

fn served_by(url: &str) -> [(&'static str, HeaderValue); 1] {
    [(
        SERVED_BY,
        HeaderValue::from_str(url).unwrap_or(HeaderValue::from_static("?")),
    )]
}

/// List the catalogue with live stock.
#[utoipa::path(get, path = "/api/products", tag = "shop",
    responses(
        (status = 200, description = "Every product", body = Vec<Product>),
        (status = 503, description = "No worker node answered", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn list_products(State(s): State<AppState>) -> Result<Response, ApiError> {
    // A 404 for the whole list is not an answer: that node is misconfigured, so fail over.
    let (url, answer) = s
        .fleet
        .read::<Vec<ProductView>>("/api/products", false)
        .await
        .map_err(no_node)?;
    let Answer::Found(products) = answer else {
        unreachable!("404 fails over for lists")
    };
    Ok((served_by(&url), Json(products)).into_response())
}

/// One product with live stock.
#[utoipa::path(get, path = "/api/products/{id}", tag = "shop",
    params(ProductIdPath),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 400, description = "Not a product id (a whole number in the documented range)", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 503, description = "No worker node answered", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn get_product(
    State(s): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = commands::parse_product_id(&path_id(raw)?)?;
    let (url, p) = read_product(&s, id).await?;
    Ok((served_by(&url), Json(p)).into_response())
}

/// One product as a node has it, and the node that answered; an unknown one is a 404.
async fn read_product(s: &AppState, id: u64) -> Result<(String, ProductView), ApiError> {
    let (url, answer) = s
        .fleet
        .read::<ProductView>(&format!("/api/products/{id}"), true)
        .await
        .map_err(no_node)?;
    match answer {
        Answer::Found(p) => Ok((url, p)),
        Answer::NotFound => Err(ApiError::ProductNotFound(id)),
    }
}

/// Set a product's quantity (role `warehouse`). Publishes a command; answers at once.
#[utoipa::path(put, path = "/api/products/{id}", tag = "warehouse",
    params(ProductIdPath, StockHeaders),
    request_body = SetSaldoRequest,
    responses(
        (status = 202, description = "Accepted; `Location` is the transaction's status", body = AcceptedView,
            headers(("Location" = String, description = "/api/transactions/{id}"))),
        (status = 400, description = "Bad id, body or key", body = ErrorBody),
        (status = 401, description = "Not signed in, or a principal that cannot be read", body = ErrorBody),
        (status = 403, description = "Not in role `warehouse`", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Key reused for a different request", body = ErrorBody),
        (status = 502, description = "The topic refused the command (a configuration fault, logged)", body = ErrorBody),
        (status = 503, description = "Nodes, topic or database unavailable", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn put_product(
    State(s): State<AppState>,
    raw: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Who first: a shopper learns nothing about products or keys from this endpoint.
    let user = principal::require_role(&headers, principal::WAREHOUSE)?;
    let id = commands::parse_product_id(&path_id(raw)?)?;
    let req: SetSaldoRequest = parse_json(body)?;
    commands::validate_saldo(&req)?;
    let key = match idempotency_key(&headers)? {
        Some(k) => k,
        // Without a key every request is a new transaction; the API makes up a key so that the
        // command goes through the same record-then-publish path as every other.
        None => format!("saldo-generated-{}", uuid::Uuid::new_v4()),
    };
    let intent = Intent::SetSaldo {
        id,
        saldo: req.saldo,
    };
    accept(&s, &key, &intent, user.user_id, || async {
        let (_, p) = read_product(&s, id).await?;
        Ok((
            format!("warehouse/products/{id}"),
            vec![commands::saldo_line(&p, req.saldo)],
        ))
    })
    .await
}

/// Place an order. Publishes one command; answers at once with the transaction to follow.
#[utoipa::path(post, path = "/api/orders", tag = "shop",
    params(OrderHeaders),
    request_body = OrderRequest,
    responses(
        (status = 202, description = "Accepted; `Location` is the transaction's status", body = AcceptedView,
            headers(("Location" = String, description = "/api/transactions/{id}"))),
        (status = 400, description = "Missing or bad key, malformed JSON, quantities or lines out of bounds", body = ErrorBody),
        (status = 401, description = "A principal header that cannot be read", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Unknown products, a product on two lines, or key reused for a different order", body = ErrorBody),
        (status = 502, description = "The topic refused the command (a configuration fault, logged)", body = ErrorBody),
        (status = 503, description = "Nodes, topic or database unavailable; retry with the same key", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn post_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let user = principal::from_headers(&headers)?;
    let key = idempotency_key(&headers)?.ok_or(ApiError::MissingIdempotencyKey)?;
    let order: OrderRequest = parse_json(body)?;
    commands::validate_order(&order)?;
    let intent = Intent::order(&order);
    accept(&s, &key, &intent, user.and_then(|u| u.user_id), || async {
        let (_, answer) = s
            .fleet
            .read::<Vec<ProductView>>("/api/products", false)
            .await
            .map_err(no_node)?;
        let Answer::Found(catalogue) = answer else {
            unreachable!("404 fails over for lists")
        };
        Ok((
            "shop/orders".to_string(),
            commands::order_lines(&order, &catalogue)?,
        ))
    })
    .await
}

/// A path segment, or a 400 in the API's error shape when it does not decode (`%FF` is no UTF-8).
fn path_id(raw: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    raw.map(|Path(id)| id)
        .map_err(|e| invalid("id", format!("cannot be read: {}", e.body_text())))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY_BYTES),
        _ => ApiError::MalformedJson(e.body_text()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))?;
    commands::check_idempotency_key(key)?;
    Ok(Some(key.to_string()))
}

/// The one path every command takes:
/// 1. the key maps to its transaction id; if a record exists, the request must be the same
///    (else 422) and the first answer is repeated;
/// 2. otherwise the command is built (`lines` looks products up on a node) and the record is
///    stored BEFORE publishing, so a crash after publishing still finds it on retry;
/// 3. the event is published unless the record says it already was. A retry of an attempt that
///    died between steps 2 and 3 publishes the stored, identical event; a duplicate publication
///    (two concurrent retries) is harmless because workers deduplicate by event id.
async fn accept<F, Fut>(
    s: &AppState,
    key: &str,
    intent: &Intent,
    user_id: Option<String>,
    lines: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, Vec<ProductLine>), ApiError>>,
{
    let tx = commands::transaction_id(key);
    let hash = intent.fingerprint();
    let same_request = |r: Record| {
        if r.key == key && r.request_hash == hash {
            Ok(r)
        } else {
            Err(ApiError::IdempotencyKeyReused(key.to_string()))
        }
    };
    saldo_telemetry::http::record_transaction(&tx);
    let (record, replayed) = match s.store.get(&tx).await? {
        Some(r) => (same_request(r)?, true),
        None => {
            let (subject, products) = lines().await?;
            let traceparent = saldo_telemetry::current_traceparent();
            let event = commands::record_updated(&tx, subject, products, traceparent, Utc::now())?;
            let record = Record {
                transaction: tx.clone(),
                key: key.to_string(),
                request_hash: hash.clone(),
                event: serde_json::to_string(&event).expect("events serialize"),
                accepted_at: event.event_time.to_rfc3339(),
                published: false,
                user_id,
            };
            match s.store.insert(&record).await? {
                Insert::Inserted => (record, false),
                // A concurrent request with the same key stored first: answer as its replay.
                Insert::Exists => {
                    let r = s.store.get(&tx).await?.ok_or_else(|| {
                        ApiError::Internal(format!(
                            "record {tx} reported as existing but not found"
                        ))
                    })?;
                    (same_request(r)?, true)
                }
            }
        }
    };
    if !record.published {
        let event: EventGridEvent<RecordUpdated> = record.event()?;
        s.publisher.publish(&[event]).await.map_err(|e| match e {
            PublishError::Unavailable(m) => ApiError::TopicUnavailable(m),
            PublishError::Rejected { status, body } => {
                ApiError::TopicRejected(format!("{status}: {body}"))
            }
        })?;
        // The event is out; failing to note that only costs a harmless republish on a retry.
        if let Err(e) = s.store.mark_published(&tx).await {
            tracing::warn!(transaction = %tx, "published, but could not mark the record: {e}");
        }
        tracing::info!(transaction = %tx, replayed, "command published");
    }
    let mut resp = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/transactions/{tx}"))],
        Json(AcceptedView {
            transaction: tx,
            status: Status::Pending,
        }),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The newest transactions across the fleet: who recorded each, who executed it, takeovers.
#[utoipa::path(get, path = "/api/transactions", tag = "fleet",
    params(RecentQuery),
    responses(
        (status = 200, description = "Newest first", body = RecentView),
        (status = 400, description = "A limit that is not a whole number in range, or given twice", body = ErrorBody),
        (status = 503, description = "No node could be asked", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn list_transactions(
    State(s): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| invalid("query", e.body_text()))?;
    let mut limits = pairs.iter().filter(|(k, _)| k == "limit").map(|(_, v)| v);
    let raw = limits.next();
    if limits.next().is_some() {
        return Err(invalid("limit", "give it once"));
    }
    let limit = commands::parse_recent_limit(raw.map(String::as_str))?;
    let path = format!("/api/ledger?recent={limit}");
    let pages: Vec<(String, Result<Vec<LedgerEntryView>, String>)> = s
        .fleet
        .ask_all::<LedgerPage>(&path, Auth::FleetKey)
        .await
        .into_iter()
        .map(|(url, r)| {
            let r = match r {
                Ok(Answer::Found(page)) => Ok(page.entries),
                Ok(Answer::NotFound) => Err("no ledger".to_string()),
                Err(e) => Err(e.to_string()),
            };
            (url, r)
        })
        .collect();
    if pages.iter().all(|(_, r)| r.is_err()) {
        return Err(ApiError::NoNodeAvailable(
            pages
                .iter()
                .map(|(u, r)| format!("{u}: {}", r.as_ref().err().unwrap()))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    Ok(Json(aggregate::recent(&pages, limit)).into_response())
}

/// A transaction's status across the fleet.
#[utoipa::path(get, path = "/api/transactions/{id}", tag = "fleet",
    params(TransactionIdPath),
    responses(
        (status = 200, description = "pending, completed or rejected, with each node's view unless `nodes=false`", body = TransactionView),
        (status = 400, description = "Not a transaction id (empty, too long, control characters), or `nodes` not `true` or `false` or given twice", body = ErrorBody),
        (status = 404, description = "Neither this API nor any node knows it", body = ErrorBody),
        (status = 503, description = "Nobody could be asked", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds")))))]
async fn get_transaction(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let Query(pairs) = query.map_err(|e| invalid("query", e.body_text()))?;
    let with_nodes = commands::parse_nodes_flag(&pairs)?;
    if commands::check_transaction_id(&id)? == TransactionIdCheck::CannotExist {
        return Err(ApiError::TransactionNotFound(id));
    }
    if !with_nodes {
        return transaction_from_marker(&s, id).await;
    }
    let path = format!("/api/ledger/{}", urlencoding::encode(&id));
    let (answers, record) = tokio::join!(
        s.fleet.ask_all::<LedgerEntryView>(&path, Auth::FleetKey),
        s.store.get(&id)
    );
    let answers: Vec<aggregate::LedgerAnswer> = answers
        .into_iter()
        .map(|(url, r)| {
            let r = match r {
                Ok(Answer::Found(e)) if e.transaction == id => Ok(Some(e)),
                Ok(Answer::Found(e)) => {
                    Err(format!("answered for transaction {:?}", e.transaction))
                }
                Ok(Answer::NotFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            (url, r)
        })
        .collect();
    // The nodes' answers are enough when one of them knows the transaction.
    let known = answers.iter().any(|(_, r)| matches!(r, Ok(Some(_))));
    let accepted = accepted(record, known)?;
    match aggregate::transaction(&id, &answers, accepted.as_ref()) {
        Some(view) => Ok(Json(view).into_response()),
        None if answers.iter().all(|(_, r)| r.is_err()) => Err(ApiError::NoNodeAvailable(
            answers
                .iter()
                .map(|(u, r)| format!("{u}: {}", r.as_ref().err().unwrap()))
                .collect::<Vec<_>>()
                .join("; "),
        )),
        None => Err(ApiError::TransactionNotFound(id)),
    }
}

/// `GET /api/transactions/{id}?nodes=false`: the warehouse's marker through one node (with
/// failover) and the API's own record, two reads whatever the fleet's size.
async fn transaction_from_marker(s: &AppState, id: String) -> Result<Response, ApiError> {
    let path = format!("/api/outcomes/{}", urlencoding::encode(&id));
    let (marker, record) = tokio::join!(s.fleet.read::<OutcomeView>(&path, true), s.store.get(&id));
    let marker = match marker {
        Ok((_, Answer::Found(m))) if m.transaction == id => Some(m),
        Ok((url, Answer::Found(m))) => {
            return Err(ApiError::NoNodeAvailable(format!(
                "{url}: answered for transaction {:?}",
                m.transaction
            )));
        }
        Ok((_, Answer::NotFound)) => None,
        // Without the marker nobody can tell pending from done.
        Err(failures) => {
            return Err(ApiError::NoNodeAvailable(
                failures
                    .iter()
                    .map(|(u, e)| format!("{u}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
    };
    // The marker is the outcome; the record only adds when and what was accepted.
    let accepted = accepted(record, marker.is_some())?;
    match aggregate::from_marker(&id, marker.as_ref(), accepted.as_ref()) {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::TransactionNotFound(id)),
    }
}

/// What the API's idempotency record adds to a transaction's view. A record that could not be
/// read fails the request unless the transaction is `known_elsewhere` (a node or the marker).
fn accepted(
    record: Result<Option<Record>, ApiError>,
    known_elsewhere: bool,
) -> Result<Option<Accepted>, ApiError> {
    match record {
        Ok(Some(r)) => Ok(Some(Accepted {
            at: r.accepted_at().unwrap_or_else(Utc::now),
            lines: r.event()?.data.products,
            published: r.published,
        })),
        Ok(None) => Ok(None),
        Err(e) if known_elsewhere => {
            tracing::warn!("answering without the idempotency record: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The fleet: each node's region, readiness, heartbeat and counters, or why it is down.
#[utoipa::path(get, path = "/api/nodes", tag = "fleet",
    responses((status = 200, description = "Every configured node, up or down", body = FleetView)))]
async fn get_nodes(State(s): State<AppState>) -> Json<FleetView> {
    let answers = s
        .fleet
        .ask_all::<NodeStatusView>("/api/status", Auth::Anonymous)
        .await;
    let answers: Vec<(String, Result<NodeStatusView, String>)> = answers
        .into_iter()
        .map(|(url, r)| {
            let r = match r {
                Ok(Answer::Found(status)) => Ok(status),
                Ok(Answer::NotFound) => Err("answered 404 for /api/status".to_string()),
                Err(e) => Err(e.to_string()),
            };
            (url, r)
        })
        .collect();
    Json(aggregate::fleet(&answers, Utc::now()))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "fleet",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn get_openapi(Extension(OpenApiJson(doc)): Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.as_ref().clone(),
    )
        .into_response()
}
