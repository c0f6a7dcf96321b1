//! The HTTP API: one axum [`Router`] behind `lambda_http`.

mod error;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

pub use error::ApiError;

use crate::domain::{NewTask, QueueMessage, RetryPolicy, TaskId, now_millis, parse_create_task};
use crate::ports::{DeliveryQueue, TaskStore};

/// The largest request body the API accepts (the task's own body included).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// What every handler needs.
pub struct AppState<S, Q> {
    pub store: S,
    pub queue: Q,
    /// The tenant tasks are created under.
    pub tenant: String,
}

/// The whole API.
pub fn router<S: TaskStore, Q: DeliveryQueue>(state: Arc<AppState<S, Q>>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tasks", post(create_task::<S, Q>))
        .route("/v1/tasks/{id}", get(get_task::<S, Q>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}

#[tracing::instrument(skip_all)]
async fn create_task<S: TaskStore, Q: DeliveryQueue>(
    State(app): State<Arc<AppState<S, Q>>>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let input = parse_create_task(&body)?;
    let now = now_millis();
    let task = NewTask {
        id: TaskId::generate(),
        tenant: app.tenant.clone(),
        spec: input.spec,
        retry: RetryPolicy::default(),
        created_at: now,
        due_at: now,
    };
    tracing::Span::current().record("task_id", task.id.as_str());
    app.store.create(&task).await?;
    if let Err(e) = app.queue.enqueue(&QueueMessage::deliver(&task.id), Duration::ZERO).await {
        // Not accepted: undo the write so nothing half-made stays behind.
        if let Err(undo) = app.store.discard(&task.id).await {
            tracing::error!(task_id = %task.id, error = %undo, "could not discard an unqueued task");
        }
        return Err(e.into());
    }
    tracing::info!(task_id = %task.id, host = task.spec.url.host(), "task created");
    let stored = app.store.get(&task.id).await?.ok_or_else(|| ApiError::NotFound("task vanished".into()))?;
    Ok((StatusCode::CREATED, Json(views::task(&stored, None))))
}

async fn get_task<S: TaskStore, Q: DeliveryQueue>(
    State(app): State<Arc<AppState<S, Q>>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let missing = || ApiError::NotFound(format!("no task {id}"));
    let task_id = TaskId::parse(&id).map_err(|_| missing())?;
    let stored = app.store.get(&task_id).await?.filter(|t| t.state.tenant == app.tenant).ok_or_else(missing)?;
    let last = if stored.state.attempts > 0 { app.store.last_attempt(&task_id).await? } else { None };
    Ok(Json(views::task(&stored, last.as_ref())))
}

/// Runs the API function: builds its clients and serves the router through
/// `lambda_http` until the runtime stops.
pub async fn run(config: crate::Config, sdk: &aws_config::SdkConfig) -> Result<(), lambda_http::Error> {
    let state = Arc::new(AppState {
        store: crate::dynamo::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            &config.table,
            config.retention_days,
        ),
        queue: crate::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url, &config.dlq_url),
        tenant: config.default_tenant.clone(),
    });
    lambda_http::run(router(state)).await
}
