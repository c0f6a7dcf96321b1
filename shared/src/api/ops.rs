//! Operator endpoints: replay failed tasks by filter (asynchronous,
//! resumable, cancellable) and purge finished tasks early.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, auth};
use crate::domain::{
    CodeMatch, EpochMillis, FieldError, QueueMessage, Replay, ReplayFilter, ReplayId, ReplayStatus, TaskStatus,
    TenantId, decode_document, format_millis, now_millis,
};
use crate::ports::{
    DeliveryLedger, DeliveryQueue, ListFilter, ReplayStore, Retried, StoredTask, TaskStore, TenantStore, Unit,
};
use crate::replays;

/// How many tasks a dry run examines at most.
const DRY_RUN_CAP: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayDto {
    status: Option<String>,
    host: Option<String>,
    since: Option<String>,
    until: Option<String>,
    code: Option<String>,
    rate: Option<u32>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeDto {
    status: String,
    before: String,
    #[serde(default)]
    dry_run: bool,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    Ok(decode_document(body)?)
}

fn time(field: &str, v: Option<&str>) -> Result<Option<EpochMillis>, ApiError> {
    v.map(|v| crate::domain::parse_time(field, v).map_err(ApiError::from)).transpose()
}

pub fn replay_view(r: &Replay) -> Value {
    json!({
        "id": r.id,
        "status": r.status,
        "filter": {
            "status": r.filter.status.as_str(),
            "host": r.filter.host,
            "since": r.filter.created_after.map(format_millis),
            "until": r.filter.created_before.map(format_millis),
            "code": r.filter.code.map(|c| match c {
                CodeMatch::Exact(c) => c.to_string(),
                CodeMatch::Class(c) => format!("{c}xx"),
            }),
        },
        "rate": r.rate,
        "replayed": r.replayed,
        "skipped": r.skipped,
        "errored": r.errored,
        "done": r.status != ReplayStatus::Running,
        "created_at": format_millis(r.created_at),
        "updated_at": format_millis(r.updated_at),
    })
}

pub async fn create_replay<S: ReplayStore + TaskStore + TenantStore, Q: DeliveryQueue, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let dto: ReplayDto = decode(&body)?;
    if dto.status.as_deref().is_some_and(|s| s != "failed") {
        return Err(
            FieldError::new("invalid", "status", "only failed tasks are replayed (status must be failed)").into()
        );
    }
    let code = dto
        .code
        .as_deref()
        .map(|c| {
            CodeMatch::parse(c).ok_or_else(|| {
                FieldError::new("invalid", "code", "code must be a status such as 503 or a class such as 5xx")
            })
        })
        .transpose()?;
    let rate = dto.rate.unwrap_or(50);
    if !(1..=1000).contains(&rate) {
        return Err(FieldError::new("invalid", "rate", "rate must be 1 to 1000 tasks per second").into());
    }
    let host = super::tasks::host_filter(dto.host.as_deref(), "host")?;
    let (since, until) = (time("since", dto.since.as_deref())?, time("until", dto.until.as_deref())?);
    super::tasks::time_window(since, until, "since", "until")?;
    let now = now_millis();
    let filter = ReplayFilter { status: TaskStatus::Failed, host, created_after: since, created_before: until, code };
    let replay = Replay::start(ReplayId::generate(), tenant.id.clone(), filter, rate, now);
    if dto.dry_run {
        let (matched, sample, complete) = replays::dry_run(&app.store, &replay, DRY_RUN_CAP).await?;
        let sample: Vec<&str> = sample.iter().map(|s| s.as_str()).collect();
        return Ok(
            Json(json!({"dry_run": true, "matched": matched, "complete": complete, "sample": sample})).into_response()
        );
    }
    app.store.put_replay(&replay).await?;
    replays::kick(&app.queue, &replay).await?;
    tracing::info!(replay_id = %replay.id, "replay started");
    super::audit::note_resource(format!("replays/{}", replay.id));
    Ok((StatusCode::ACCEPTED, Json(replay_view(&replay))).into_response())
}

async fn owned_replay<S: ReplayStore, Q, C>(
    app: &AppState<S, Q, C>,
    tenant: &TenantId,
    id: &str,
) -> Result<Replay, ApiError> {
    // A malformed id names no replay: 404 without a store call, as for any unknown id.
    let Ok(replay_id) = ReplayId::parse(id) else {
        return Err(ApiError::NotFound(format!("no replay {id}")));
    };
    app.store
        .get_replay(&replay_id)
        .await?
        .filter(|r| &r.tenant == tenant)
        .ok_or_else(|| ApiError::NotFound(format!("no replay {id}")))
}

pub async fn get_replay<S: ReplayStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    Ok(Json(replay_view(&owned_replay(&app, &tenant.id, &id).await?)))
}

/// Moves a replay between running and cancelled (optimistic, retried on a race).
async fn set_status<S: ReplayStore + TenantStore, Q: DeliveryQueue, C>(
    app: &AppState<S, Q, C>,
    headers: &HeaderMap,
    id: &str,
    to: ReplayStatus,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(app, headers).await?;
    loop {
        let mut r = owned_replay(app, &tenant.id, id).await?;
        match (r.status, to) {
            (ReplayStatus::Done, _) => return Err(ApiError::Conflict(format!("replay {id} is done"))),
            (from, to) if from == to => return Ok(Json(replay_view(&r))),
            _ => {}
        }
        r.status = to;
        r.version += 1;
        if to == ReplayStatus::Running {
            r.chain += 1;
        }
        r.updated_at = now_millis();
        if app.store.save_replay(&r).await? {
            if to == ReplayStatus::Running {
                replays::kick(&app.queue, &r).await?;
            }
            tracing::info!(replay_id = %id, status = ?to, "replay status changed");
            return Ok(Json(replay_view(&r)));
        }
    }
}

pub async fn cancel_replay<S: ReplayStore + TenantStore, Q: DeliveryQueue, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_status(&app, &headers, &id, ReplayStatus::Cancelled).await
}

pub async fn resume_replay<S: ReplayStore + TenantStore, Q: DeliveryQueue, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_status(&app, &headers, &id, ReplayStatus::Running).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDto {
    run: Option<String>,
}

/// The run a retry names in its (optional) body: `{"run": "<RFC 3339 scheduled time>"}`.
pub(super) fn retry_target(body: &[u8]) -> Result<Option<EpochMillis>, ApiError> {
    let dto: RetryDto = decode(body)?;
    time("run", dto.run.as_deref())
}

/// Retries a failed run of a cron task now (a DLQ redrive names the run):
/// history kept, attempt numbering continues, the retry policy starts a new
/// round. Runs hold no active-task slot, so none is reserved.
pub(super) async fn retry_run<S: DeliveryLedger + TaskStore, Q: DeliveryQueue, C>(
    app: &AppState<S, Q, C>,
    task: &StoredTask,
    run: Option<EpochMillis>,
) -> Result<StoredTask, ApiError> {
    let id = &task.state.id;
    let Some(run) = run else {
        return Err(FieldError::new(
            "required",
            "run",
            format!("task {id} is a cron task: name the failed run to retry (its scheduled time)"),
        )
        .into());
    };
    if task.state.status != TaskStatus::Active {
        return Err(ApiError::Conflict(format!(
            "task {id} is {}; its runs are retried while it is active",
            task.state.status.as_str()
        )));
    }
    let unit = Unit { task: id.clone(), run: Some(run) };
    match app.store.retry_run(&unit, task.retry.max_attempts(), now_millis()).await? {
        Retried::Done => {}
        Retried::NotFailed(status) => {
            return Err(ApiError::Conflict(format!(
                "run {} of task {id} is {}; only failed runs are retried",
                format_millis(run),
                status.as_str()
            )));
        }
        Retried::Missing => return Err(ApiError::NotFound(format!("task {id} has no run {}", format_millis(run)))),
    }
    // The run is pending now; if this send fails, the reconciler enqueues it.
    let msg = QueueMessage::deliver_run(id, Some(run), Some(task.spec.flow_ref(&task.state.tenant)));
    if let Err(e) = app.queue.enqueue(&msg, std::time::Duration::ZERO).await {
        tracing::warn!(task_id = %id, run, error = %e, "run retry not enqueued; the reconciler will");
    }
    tracing::info!(task_id = %id, run, "cron run retried");
    app.store.get(id).await?.ok_or_else(|| ApiError::NotFound(format!("no task {id}")))
}

/// Deletes (or, dry, counts) finished tasks of one status created before a
/// time, one page per call; the caller repeats with `next_cursor`.
pub async fn purge<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let dto: PurgeDto = decode(&body)?;
    let status = TaskStatus::parse(&dto.status).filter(|s| s.is_final()).ok_or_else(|| {
        FieldError::new("invalid", "status", "status must be succeeded, failed or cancelled (finished tasks only)")
    })?;
    let before = time("before", Some(&dto.before))?;
    let limit = dto.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(FieldError::new("invalid", "limit", "limit must be 1 to 500").into());
    }
    if dto.cursor.as_deref().is_some_and(|c| !super::tasks::valid_cursor(c, super::tasks::is_task_id)) {
        return Err(
            FieldError::new("invalid", "cursor", "cursor must be a next_cursor returned by the previous page").into()
        );
    }
    let filter = ListFilter { status: Some(status), created_before: before, ..ListFilter::default() };
    let page = app
        .store
        .list(&tenant.id, &filter, limit, dto.cursor.as_deref(), now_millis())
        .await
        .map_err(ApiError::store_on("cursor"))?;
    let mut purged = 0;
    if !dto.dry_run {
        for st in &page.items {
            if app.store.purge(&st.id).await? {
                purged += 1;
            }
        }
        tracing::info!(tenant = %tenant.id, purged, "tasks purged");
    }
    Ok(Json(json!({
        "dry_run": dto.dry_run,
        "matched": page.items.len(),
        "purged": purged,
        "next_cursor": page.cursor,
    })))
}
