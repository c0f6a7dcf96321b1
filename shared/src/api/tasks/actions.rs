//! Changing a task: update its request, cancel it (and its schedule), retry
//! a failed task in a new round, pause and resume a cron task.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::Value;

use super::{full_view, owned, owned_by_business_id, reserve};
use crate::api::{ApiError, AppState, auth};
use crate::domain::{
    FieldError, QueueMessage, Schedule, SchedulerHold, TaskKind, TaskStatus, check_stored_size, check_target,
    now_millis, parse_patch,
};
use crate::ports::{
    Cancelled, DeliveryLedger, DeliveryQueue, FieldSeal, Retried, Scheduler, StoredTask, TaskStore, TenantStore,
};

async fn cancel_task<S: TaskStore + TenantStore, Q, C: Scheduler>(
    app: &AppState<S, Q, C>,
    task: StoredTask,
) -> Result<Json<Value>, ApiError> {
    let id = task.state.id.clone();
    match app.store.cancel(&id, now_millis()).await? {
        Cancelled::Done(before) => {
            let schedule = match before.scheduler {
                SchedulerHold::Schedule(name) => Some(name),
                SchedulerHold::Nothing => None,
                // Only for a task stored before the hand-over was recorded on
                // it: derived as it was then, from when it was created.
                SchedulerHold::Unrecorded => match &task.schedule {
                    Schedule::Cron(_) => Some(id.as_str().to_owned()),
                    Schedule::At { at } if *at - before.created_at > app.settings.sqs_delay_max_s as i64 * 1000 => {
                        Some(id.as_str().to_owned())
                    }
                    Schedule::At { .. } | Schedule::Now => None,
                },
            };
            if let Some(name) = schedule
                && let Err(e) = app.scheduler.delete(&name).await
            {
                // The task is cancelled either way: a firing finds it so and sends nothing.
                tracing::warn!(task_id = %id, error = %e, "could not delete the schedule of a cancelled task");
            }
            // Its active-task slot comes back through the stream counter.
            tracing::info!(task_id = %id, "task cancelled");
        }
        Cancelled::AlreadyFinal(status) => {
            return Err(ApiError::Conflict(format!("task {id} is already {}", status.as_str())));
        }
        Cancelled::Missing => return Err(ApiError::NotFound(format!("no task {id}"))),
    }
    let now_task = app.store.get(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no task {id}")))?;
    Ok(Json(full_view(app, &now_task).await?))
}

pub async fn cancel<S: TaskStore + TenantStore, Q, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned(&app, &tenant, &id).await?;
    cancel_task(&app, task).await
}

pub async fn cancel_by_business_id<S: TaskStore + TenantStore, Q, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(business_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned_by_business_id(&app, &tenant, &business_id).await?;
    cancel_task(&app, task).await
}

pub async fn update<S: TaskStore + TenantStore + FieldSeal, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned(&app, &tenant, &id).await?;
    let finished =
        |s: TaskStatus| ApiError::Conflict(format!("task {id} is already {}; it can no longer change", s.as_str()));
    if task.state.status.is_final() {
        return Err(finished(task.state.status));
    }
    let patch = parse_patch(&body)?;
    if let Some(url) = &patch.url {
        check_target(url, &app.settings.guard, "request.url")?;
    }
    let (mut spec, mut retry) = (task.spec.clone(), task.retry.clone());
    patch.apply(&mut spec, &mut retry);
    check_stored_size(&spec)?;
    // New secret values are sealed; those kept are sealed already.
    app.store.seal_fields(&tenant.id, &mut spec).await?;
    if !app.store.update_spec(&task.state.id, &spec, &retry, &task.schedule, now_millis()).await? {
        let now_status = app.store.get(&task.state.id).await?.map_or(TaskStatus::Cancelled, |t| t.state.status);
        return Err(finished(now_status));
    }
    tracing::info!(task_id = %task.state.id, "task updated");
    let updated = owned(&app, &tenant, &id).await?;
    Ok(Json(full_view(&app, &updated).await?))
}

/// Retries a failed task now: history kept, attempt numbering continues, the
/// retry policy starts a new round.
pub async fn retry<S: DeliveryLedger + TaskStore + TenantStore, Q: DeliveryQueue, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let run = crate::api::ops::retry_target(&body)?;
    let task = owned(&app, &tenant, &id).await?;
    if task.state.kind == TaskKind::Cron {
        let updated = crate::api::ops::retry_run(&app, &task, run).await?;
        return Ok(Json(full_view(&app, &updated).await?));
    }
    if run.is_some() {
        return Err(FieldError::new("invalid", "run", "only a cron task's runs are retried by run").into());
    }
    reserve(&app, &tenant, 1).await?;
    match app.store.retry_failed(&task.state.id, task.state.round_attempts(), now_millis()).await {
        Ok(Retried::Done) => {}
        Ok(Retried::NotFailed(status)) => {
            app.store.release_active(&tenant.id, 1).await?;
            return Err(ApiError::Conflict(format!("task {id} is {}; only failed tasks are retried", status.as_str())));
        }
        Ok(Retried::Missing) => {
            app.store.release_active(&tenant.id, 1).await?;
            return Err(ApiError::NotFound(format!("no task {id}")));
        }
        Err(e) => {
            app.store.release_active(&tenant.id, 1).await.ok();
            return Err(e.into());
        }
    }
    // The task is pending now; if this send fails, the reconciler enqueues it.
    if let Err(e) = app
        .queue
        .enqueue(&QueueMessage::deliver(&task.state.id, Some(task.spec.flow_ref(&task.state.tenant))), Duration::ZERO)
        .await
    {
        tracing::warn!(task_id = %task.state.id, error = %e, "retry not enqueued; the reconciler will");
    }
    tracing::info!(task_id = %task.state.id, "task retried");
    let updated = owned(&app, &tenant, &id).await?;
    Ok(Json(full_view(&app, &updated).await?))
}

async fn set_paused<S: TaskStore + TenantStore, Q, C: Scheduler>(
    app: &AppState<S, Q, C>,
    headers: &HeaderMap,
    id: &str,
    pause: bool,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(app, headers).await?;
    let task = owned(app, &tenant, id).await?;
    let Schedule::Cron(cron) = &task.schedule else {
        return Err(ApiError::Conflict(format!("task {id} is not a cron task; only cron tasks pause")));
    };
    let to = if pause { TaskStatus::Paused } else { TaskStatus::Active };
    if !app.store.set_cron_status(&task.state.id, to, now_millis()).await? {
        return Err(ApiError::Conflict(format!("task {id} is {}", task.state.status.as_str())));
    }
    app.scheduler.set_enabled(id, cron, &task.state.id, !pause).await?;
    let updated = owned(app, &tenant, id).await?;
    Ok(Json(full_view(app, &updated).await?))
}

pub async fn pause<S: TaskStore + TenantStore, Q, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&app, &headers, &id, true).await
}

pub async fn resume<S: TaskStore + TenantStore, Q, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&app, &headers, &id, false).await
}
