//! The API's one error type, rendered as `{"error": {"code", "message", "field"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::FieldError;
use crate::ports::{QueueError, ScheduleError, StoreError};

/// Every way a request can fail, by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Fix the input: 400 naming the field and rule.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Send a valid key: 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The key was valid but has expired: 401 `key_expired`.
    #[error("{0}")]
    KeyExpired(String),
    /// The key is valid but may not do this: 403.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The task's state does not allow it: 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A quota is exhausted: 429 with `Retry-After`.
    #[error("{message}")]
    TooMany { code: &'static str, message: String, retry_after_s: u64 },
    /// Try again later: a dependency is down; nothing was stored.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug: logged, answered 500 with no detail.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ApiError {
    /// Input the store refused is the request document's fault (400 `body`);
    /// handlers whose store input comes from elsewhere use [`ApiError::store_on`].
    fn from(e: StoreError) -> Self {
        Self::store_on(FieldError::DOCUMENT)(e)
    }
}

impl ApiError {
    /// Maps a store error of a call whose only caller-given input is `field`
    /// (e.g. a listing's `cursor`): refused input is a 400 naming it, never a
    /// 503 that invites the same request again.
    pub fn store_on(field: &'static str) -> impl Fn(StoreError) -> Self {
        move |e| match e {
            StoreError::Unavailable(_) => Self::Unavailable(Box::new(e)),
            StoreError::Invalid(source) => {
                tracing::warn!(field, error = %source, "the store refused the input");
                Self::Invalid(FieldError::new("invalid", field, format!("{field} was refused by the store: change it")))
            }
            StoreError::Permanent(_) | StoreError::Corrupt { .. } => Self::Internal(Box::new(e)),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// The `field` of an error about the request body as a whole.
pub(super) const DOCUMENT: &str = FieldError::DOCUMENT;

/// Every cause under `e`, outermost first, joined with `: `: the SDK's
/// own error ("store unavailable") says nothing of why; the root cause
/// (a refused connection, a throttling code) is at the end of the chain.
/// SDK and store errors name the operation and the service's answer, never
/// the request's headers or body, so no secret of a task reaches the log.
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(e.source(), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// The JSON error document.
fn error_body(code: &str, message: &str, field: Option<&str>) -> serde_json::Value {
    json!({"error": {"code": code, "message": message, "field": field}})
}

fn body(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (status, Json(error_body(code, message, field))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Invalid(f) => {
                let field = (!f.field.is_empty()).then_some(f.field.as_str());
                let status =
                    if f.code == "too_large" { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
                body(status, f.code, &f.message, field)
            }
            Self::Unauthorized(m) => {
                let mut r = body(StatusCode::UNAUTHORIZED, "unauthorized", m, Some("Authorization"));
                r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
                r
            }
            Self::KeyExpired(m) => {
                let mut r = body(StatusCode::UNAUTHORIZED, "key_expired", m, Some("Authorization"));
                r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
                r
            }
            Self::Forbidden(m) => body(StatusCode::FORBIDDEN, "forbidden", m, None),
            Self::NotFound(m) => body(StatusCode::NOT_FOUND, "not_found", m, None),
            Self::MethodNotAllowed(m) => body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m, None),
            Self::Conflict(m) => body(StatusCode::CONFLICT, "conflict", m, None),
            Self::TooLarge(m) => body(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m, None),
            Self::TooMany { code, message, retry_after_s } => {
                let mut r = body(StatusCode::TOO_MANY_REQUESTS, code, message, None);
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    r.headers_mut().insert("retry-after", v);
                }
                r
            }
            Self::Unavailable(_) => {
                tracing::error!(error = %self, causes = %cause_chain(&self), "dependency unavailable");
                let mut r = body(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again shortly", None);
                r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
                r
            }
            Self::Internal(_) => {
                tracing::error!(error = %self, causes = %cause_chain(&self), "internal error");
                body(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error", None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the table does not exist")]
    struct Cause;

    #[test]
    fn a_transient_store_error_is_a_503_to_try_again() {
        let resp = ApiError::from(StoreError::Unavailable(Box::new(Cause))).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    #[test]
    fn a_permanent_store_error_is_an_internal_error_not_an_invitation_to_retry() {
        let resp = ApiError::from(StoreError::Permanent(Box::new(Cause))).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!resp.headers().contains_key("retry-after"));
    }

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(e: ApiError) -> (StatusCode, String) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).json().finish();
        let status = tracing::subscriber::with_default(subscriber, || e.into_response().status());
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        (status, text)
    }

    #[test]
    fn an_unavailable_store_is_logged_with_its_whole_cause_chain() {
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused by 127.0.0.1:1");
        let sdk = QueueError(Box::new(root));
        let e = ApiError::from(StoreError::Unavailable(Box::new(sdk)));
        let (status, log) = logged(e);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let line: serde_json::Value = serde_json::from_str(log.trim()).expect("one JSON line");
        assert_eq!(
            line["fields"]["causes"],
            "store unavailable: delivery queue unavailable: connection refused by 127.0.0.1:1",
            "{log}"
        );
    }

    #[test]
    fn an_internal_error_is_logged_with_its_cause_and_answered_without_it() {
        let e = ApiError::from(StoreError::Corrupt { id: "tsk_1".into(), what: "no status".into() });
        let (status, log) = logged(e);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(log.contains("stored item for tsk_1 is malformed: no status"), "{log}");
    }
}
