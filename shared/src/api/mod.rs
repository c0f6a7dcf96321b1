//! The HTTP API: one axum [`Router`], served behind `lambda_http` by the
//! `api` function's `main`.
//!
//! Every `/v1` route but health and the OpenAPI document needs
//! `Authorization: Bearer <key>`: a tenant's API key for tasks, the admin key
//! for tenants and keys, either for flow policies. A tenant only ever sees its own tasks: another
//! tenant's task is answered 404, like a missing one.

pub mod audit;
mod auth;
pub use auth::{AuthCache, JWT_TENANT_HEADER};
mod console;
mod error;
mod flows;
mod metrics;
mod ops;
mod secrets;
mod tasks;
mod tenants;
#[cfg(test)]
mod test_world;
mod views;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

pub use audit::SourceIp;
pub use error::ApiError;
pub use tenants::create_tenant_with_key;

use crate::ports::{
    AuditLog, CountStore, DeliveryLedger, DeliveryQueue, EventSettings, FieldSeal, FlowPolicies, QueueDepths,
    ReplayStore, Scheduler, SigningSecrets, TaskStore, TenantStore,
};

/// The largest request body the API accepts (a task's body is at most 256 KiB
/// of that, more after JSON escaping; a batch of 100 small tasks fits).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route: (method, path). The router is built from the same handlers;
/// a test checks this list against the router and the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("POST", "/v1/tasks/batch"),
    ("GET", "/v1/tasks/{id}"),
    ("PATCH", "/v1/tasks/{id}"),
    ("DELETE", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/attempts"),
    ("POST", "/v1/tasks/{id}/retry"),
    ("POST", "/v1/tasks/{id}/pause"),
    ("POST", "/v1/tasks/{id}/resume"),
    ("GET", "/v1/stats"),
    ("POST", "/v1/tasks/purge"),
    ("POST", "/v1/replays"),
    ("GET", "/v1/replays/{id}"),
    ("DELETE", "/v1/replays/{id}"),
    ("POST", "/v1/replays/{id}/resume"),
    ("GET", "/v1/tasks/by-business-id/{business_id}"),
    ("DELETE", "/v1/tasks/by-business-id/{business_id}"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/{id}"),
    ("PATCH", "/v1/tenants/{id}"),
    ("POST", "/v1/tenants/{id}/keys"),
    ("DELETE", "/v1/tenants/{id}/keys/{key_id}"),
    ("GET", "/v1/keys/expiring"),
    ("GET", "/v1/flows"),
    ("GET", "/v1/flows/{key}"),
    ("PUT", "/v1/flows/{key}"),
    ("DELETE", "/v1/flows/{key}"),
    ("POST", "/v1/secrets"),
    ("GET", "/v1/secrets"),
    ("POST", "/v1/secrets/rotate"),
    ("DELETE", "/v1/secrets/{id}"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/metrics"),
    ("GET", "/admin"),
    ("GET", "/admin/console.js"),
    ("GET", "/admin/console.css"),
];

/// Routing settings the handlers need.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Tasks due within this many seconds go to SQS with `DelaySeconds`.
    pub sqs_delay_max_s: u64,
    /// A one-time schedule fires this long before the due time.
    pub schedule_early_s: u64,
    /// The admin key's hash (`None`: the admin API is off).
    pub admin_key: Option<crate::config::AdminKeyHash>,
    /// Literal target addresses the guard blocks are refused at create and change.
    pub guard: crate::domain::TargetGuard,
    /// The breaker of every key whose policy sets none (`COURIER_BREAKER_*`).
    pub flow_breaker: crate::domain::BreakerSettings,
}

impl ApiSettings {
    /// The API's share of the function's configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            sqs_delay_max_s: config.sqs_delay_max_s,
            schedule_early_s: config.schedule_early_s,
            admin_key: config.admin_key.clone(),
            guard: config.target_guard.clone(),
            flow_breaker: config.flow.breaker.clone(),
        }
    }
}

/// What every handler needs.
pub struct AppState<S, Q, C> {
    pub store: S,
    pub queue: Q,
    pub scheduler: C,
    pub settings: ApiSettings,
    /// This instance's create-rate windows (see [`tasks::quota`]).
    pub limits: tasks::quota::CreateLimits,
    /// This instance's recent key and tenant reads (see [`auth::AuthCache`]).
    pub auth_cache: auth::AuthCache,
}

/// The whole API.
pub fn router<S, Q, C>(state: Arc<AppState<S, Q, C>>) -> Router
where
    S: TaskStore
        + TenantStore
        + DeliveryLedger
        + CountStore
        + ReplayStore
        + FlowPolicies
        + SigningSecrets
        + AuditLog
        + EventSettings
        + FieldSeal,
    Q: DeliveryQueue + QueueDepths,
    C: Scheduler,
{
    let audited = axum::middleware::from_fn_with_state(state.clone(), audit::track::<S, Q, C>);
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/whoami", get(whoami::<S, Q, C>))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/tasks", post(tasks::create::<S, Q, C>).get(tasks::list::<S, Q, C>))
        .route("/v1/tasks/batch", post(tasks::create_batch::<S, Q, C>))
        .route(
            "/v1/tasks/{id}",
            get(tasks::get_one::<S, Q, C>).patch(tasks::update::<S, Q, C>).delete(tasks::cancel::<S, Q, C>),
        )
        .route("/v1/tasks/{id}/attempts", get(tasks::attempts::<S, Q, C>))
        .route("/v1/tasks/{id}/retry", post(tasks::retry::<S, Q, C>))
        .route("/v1/tasks/{id}/pause", post(tasks::pause::<S, Q, C>))
        .route("/v1/tasks/{id}/resume", post(tasks::resume::<S, Q, C>))
        .route(
            "/v1/tasks/by-business-id/{business_id}",
            get(tasks::get_by_business_id::<S, Q, C>).delete(tasks::cancel_by_business_id::<S, Q, C>),
        )
        .route("/v1/stats", get(tasks::stats::<S, Q, C>))
        .route("/v1/tasks/purge", post(ops::purge::<S, Q, C>))
        .route("/v1/replays", post(ops::create_replay::<S, Q, C>))
        .route("/v1/replays/{id}", get(ops::get_replay::<S, Q, C>).delete(ops::cancel_replay::<S, Q, C>))
        .route("/v1/replays/{id}/resume", post(ops::resume_replay::<S, Q, C>))
        .route("/v1/tenants", post(tenants::create::<S, Q, C>).get(tenants::list::<S, Q, C>))
        .route("/v1/tenants/{id}", get(tenants::get_one::<S, Q, C>).patch(tenants::update::<S, Q, C>))
        .route("/v1/tenants/{id}/keys", post(tenants::create_key::<S, Q, C>))
        .route("/v1/tenants/{id}/keys/{key_id}", axum::routing::delete(tenants::revoke_key::<S, Q, C>))
        .route("/v1/keys/expiring", get(tenants::expiring_keys::<S, Q, C>))
        .route("/v1/flows", get(flows::list::<S, Q, C>))
        .route(
            "/v1/flows/{key}",
            get(flows::get_one::<S, Q, C>).put(flows::put::<S, Q, C>).delete(flows::delete::<S, Q, C>),
        )
        .route("/v1/secrets", post(secrets::create::<S, Q, C>).get(secrets::list::<S, Q, C>))
        .route("/v1/secrets/rotate", post(secrets::rotate::<S, Q, C>))
        .route("/v1/secrets/{id}", axum::routing::delete(secrets::revoke::<S, Q, C>))
        .route("/v1/audit", get(audit::list::<S, Q, C>))
        .route("/v1/metrics", get(metrics::metrics::<S, Q, C>))
        .route("/admin", get(console::page))
        .route("/admin/console.js", get(console::script))
        .route("/admin/console.css", get(console::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::map_response(json_errors))
        .layer(audited)
        .with_state(state)
}

/// Renders in the one JSON error shape every error response that did not
/// come from [`ApiError`]: axum's own extractor rejections, which are plain
/// text (the body limit's 413, a path segment that is not UTF-8, a body that
/// cannot be read). Their text becomes the message; the field is what they
/// are about.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    // Path rejections read "Invalid URL: Invalid UTF-8 in `id`"; name the parameter.
    let path_param = text.strip_prefix("Invalid URL: ").map(|rest| rest.split('`').nth(1).unwrap_or("path").to_owned());
    let (code, field) = match status.as_u16() {
        413 => ("too_large", Some(error::DOCUMENT.to_owned())),
        400 | 422 => ("invalid", Some(path_param.unwrap_or_else(|| error::DOCUMENT.to_owned()))),
        404 => ("not_found", None),
        405 => ("method_not_allowed", None),
        415 => ("unsupported_media_type", Some("Content-Type".to_owned())),
        s if s >= 500 => ("internal", None),
        _ => ("invalid", None),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    let doc = json!({"error": {"code": code, "message": message, "field": field}});
    axum::response::Response::from_parts(parts, axum::body::Body::from(doc.to_string()))
}

/// Who the key is: `{"caller": "admin"}` or the tenant (the console's
/// sign-in, which must tell the two apart without a failing request).
async fn whoami<S: TenantStore, Q, C>(
    axum::extract::State(app): axum::extract::State<Arc<AppState<S, Q, C>>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(match auth::caller(&app, &headers).await? {
        auth::Caller::Admin => serde_json::json!({"caller": "admin"}),
        auth::Caller::Tenant(t) => {
            serde_json::json!({"caller": "tenant", "tenant": {"id": t.id.as_str(), "name": t.name}})
        }
    }))
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}

#[cfg(test)]
mod tests;
