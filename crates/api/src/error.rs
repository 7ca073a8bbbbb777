//! The API's one error type: every failure a handler can meet, mapped to a status code and the
//! JSON body `{"error": {"code", "message"}}` (the shape Azure services use too).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON this endpoint takes.
    #[error("malformed request body: {0}")]
    MalformedJson(String),
    /// A value is out of range or inconsistent (zero quantity, duplicate line, bad id...).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Two lines name one product. The order conforms to the OpenAPI document (which cannot say
    /// "unique by id"), so this is 422, like every refusal of a schema-valid request.
    #[error("invalid {field}: product {id} appears twice; give one line per product")]
    DuplicateLine { field: String, id: u64 },
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    /// The key was used before for a different request (draft-ietf-httpapi-idempotency-key-header
    /// recommends 422 for this case and keeps 409 for a request still in flight; Saldo never
    /// answers 409 because a concurrent duplicate simply gets the same answer).
    #[error("Idempotency-Key {0:?} was already used for a different request")]
    IdempotencyKeyReused(String),
    #[error("product {0} does not exist")]
    ProductNotFound(u64),
    /// An order names products the warehouse does not hold (422: the request is well formed,
    /// but cannot be carried out).
    #[error("unknown products in the order: {0:?}")]
    UnknownProducts(Vec<u64>),
    #[error("transaction {0:?} is not known")]
    TransactionNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("sign in first: this endpoint needs role {0:?}")]
    Unauthenticated(&'static str),
    #[error("this endpoint needs role {0:?}")]
    Forbidden(&'static str),
    #[error("malformed x-ms-client-principal header: {0}")]
    MalformedPrincipal(String),
    /// Every worker node failed (stopped, slow or erroring); the details say how each failed.
    #[error("no worker node answered: {0}")]
    NoNodeAvailable(String),
    #[error("the event topic is unavailable, retry with the same Idempotency-Key: {0}")]
    TopicUnavailable(String),
    /// The topic refused our events: a configuration fault (key, endpoint), not the caller's.
    #[error("the event topic refused the command: {0}")]
    TopicRejected(String),
    #[error("the database is unavailable, retry later: {0}")]
    DatabaseUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `unknown_products`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson(_) | Invalid { .. } | MissingIdempotencyKey => StatusCode::BAD_REQUEST,
            IdempotencyKeyReused(_) | UnknownProducts(_) | DuplicateLine { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ProductNotFound(_) | TransactionNotFound(_) | RouteNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            // Credentials that cannot be read are no credentials: 401, as for a bad token.
            Unauthenticated(_) | MalformedPrincipal(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            NoNodeAvailable(_) | TopicUnavailable(_) | DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            TopicRejected(_) => StatusCode::BAD_GATEWAY,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson(_) => "malformed_json",
            Invalid { .. } => "invalid_request",
            DuplicateLine { .. } => "duplicate_line",
            MissingIdempotencyKey => "idempotency_key_missing",
            IdempotencyKeyReused(_) => "idempotency_key_reused",
            ProductNotFound(_) => "product_not_found",
            UnknownProducts(_) => "unknown_products",
            TransactionNotFound(_) => "transaction_not_found",
            RouteNotFound(_) => "not_found",
            MethodNotAllowed => "method_not_allowed",
            PayloadTooLarge(_) => "payload_too_large",
            Unauthenticated(_) => "unauthenticated",
            Forbidden(_) => "forbidden",
            MalformedPrincipal(_) => "malformed_principal",
            NoNodeAvailable(_) => "no_node_available",
            TopicUnavailable(_) => "topic_unavailable",
            TopicRejected(_) => "topic_rejected",
            DatabaseUnavailable(_) => "database_unavailable",
            Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), "{self}");
        } else {
            tracing::info!(code = self.code(), "{self}");
        }
        // Driver and internal errors are logged in full above, but not shown to the caller: they
        // name hosts and topology that a shopper has no use for.
        let message = match &self {
            ApiError::DatabaseUnavailable(_) => "the database is unavailable, retry later".into(),
            ApiError::Internal(_) => "internal error; it has been logged".into(),
            _ => self.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here is transient (a node, the topic or the database is away).
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
