//! The Event Grid error body: `{"error":{"code","message","details":[{"code","message"}]}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client. Every refusal changes nothing: errors are raised before any
/// state is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    /// Top-level code, e.g. `BadRequest`.
    pub code: &'static str,
    /// Detail code, e.g. `InputJsonInvalid`.
    pub detail: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &'static str,
        detail: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            detail,
            message: message.into(),
        }
    }
    pub fn bad_request(detail: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", detail, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "Unauthorized", "Unauthorized", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "RequestEntityTooLarge",
            message,
        )
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", "NotFound", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalServerError", "InternalServerError", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "code": self.code,
            "message": self.message,
            "details": [{"code": self.detail, "message": self.message}],
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}
