//! The API's one error type, rendered as `{"error": {"code", "message", "field"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::FieldError;
use crate::ports::{QueueError, StoreError};

/// Every way a request can fail, by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Fix the input: 400 naming the field and rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Try again later: a dependency is down; nothing was stored.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug: logged, answered with a bare 500.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable(Box::new(e)),
            StoreError::Corrupt { .. } => Self::Internal(Box::new(e)),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

fn body(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message, "field": field}}))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Invalid(f) => {
                let field = (!f.field.is_empty()).then_some(f.field.as_str());
                body(StatusCode::BAD_REQUEST, f.code, &f.message, field)
            }
            Self::NotFound(m) => body(StatusCode::NOT_FOUND, "not_found", m, None),
            Self::MethodNotAllowed(m) => body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m, None),
            Self::Unavailable(source) => {
                tracing::error!(error = %self, source = %source, "dependency unavailable");
                let mut r = body(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again shortly", None);
                r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
                r
            }
            Self::Internal(source) => {
                tracing::error!(error = %self, source = %source, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
