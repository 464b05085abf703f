//! [`ApiError`]: the JSON error body and the mapping from call errors to statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::CallError;

/// An HTTP error: a status and `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: String,
    /// Explanation for humans.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let status = match &e {
            CallError::UnknownKind { .. } => StatusCode::NOT_FOUND,
            CallError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CallError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            CallError::Agent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CallError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            CallError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CallError::NotOwner { .. }
            | CallError::Moved { .. }
            | CallError::Unowned { .. }
            | CallError::Unavailable(_)
            | CallError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        let code = match &e {
            CallError::Agent(a) => a.code.clone(),
            other => other.code().to_string(),
        };
        let message = match &e {
            CallError::Agent(a) => a.message.clone(),
            other => other.to_string(),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (self.status, body).into_response()
    }
}
