//! Creating up to [`MAX_BATCH`] tasks in one request: every item is checked
//! on its own and answered with its own status; valid items share one
//! quota check, one batch write and `SendMessageBatch` calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::create::{Route, check_rate, created_view, dispatch, new_task, roll_back, route};
use super::{full_view, owned, reserve};
use crate::api::{ApiError, AppState, auth};
use crate::domain::{
    CreateTask, EpochMillis, FieldError, NewTask, QueueMessage, Tenant, check_target, now_millis, parse_create_value,
};
use crate::ports::{Created, DeliveryQueue, Scheduler, TaskStore, TenantStore, UniqueKey};

/// The most tasks one batch may create.
pub const MAX_BATCH: usize = 100;

#[tracing::instrument(skip_all, fields(tenant))]
pub async fn create_batch<S: TaskStore + TenantStore, Q: DeliveryQueue, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    let now = now_millis();
    let doc = crate::domain::parse_document(&body)?;
    let Some(items) = doc.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("tasks")).and_then(Value::as_array)
    else {
        return Err(FieldError::new("invalid", "tasks", "body must be {\"tasks\": [ ... ]}").into());
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(FieldError::new("invalid", "tasks", "tasks must hold 1 to 100 tasks").into());
    }
    // Validate every item; per-item results keep their index.
    let mut results: Vec<Value> = vec![Value::Null; items.len()];
    let mut valid: Vec<(usize, CreateTask)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let parsed = parse_create_value(item.clone(), now)
            .and_then(|t| check_target(&t.spec.url, &app.settings.guard, "request.url").map(|()| t));
        match parsed {
            Ok(t) => valid.push((i, t)),
            Err(e) => {
                let e = e.prefixed(&format!("tasks[{i}]"));
                results[i] = json!({"index": i, "status": 400, "error": {"code": e.code, "message": e.message, "field": e.field}});
            }
        }
    }
    if !valid.is_empty() {
        check_rate(&app, &tenant, valid.len() as u64).await?;
        reserve(&app, &tenant, valid.len() as u64).await?;
    }
    // Every reserved slot is either held by a task whose state was written (the
    // counter gives it back when the task ends or is discarded) or given back
    // here, whatever path the creation took.
    let reserved = valid.len() as u64;
    let mut held = 0u64;
    let outcome = create_reserved(&app, &tenant, valid, now, &mut results, &mut held).await;
    if reserved > held
        && let Err(e) = app.store.release_active(&tenant.id, reserved - held).await
    {
        tracing::error!(error = %e, slots = reserved - held, "could not give back unused active-task slots");
    }
    outcome?;
    let created_n = results.iter().filter(|r| r["status"] == 201).count();
    tracing::info!(created = created_n, total = items.len(), "batch created");
    Ok((StatusCode::OK, Json(json!({"results": results, "created": created_n}))).into_response())
}

/// A batch item's error document.
fn item_error(i: usize, e: &ApiError) -> Value {
    let (status, code, message) = match e {
        ApiError::NotFound(m) => (404, "not_found", m.clone()),
        ApiError::Conflict(m) => (409, "conflict", m.clone()),
        _ => (503, "unavailable", "try again shortly".to_owned()),
    };
    json!({"index": i, "status": status, "error": {"code": code, "message": message, "field": null}})
}

/// Removes a task whose creation did not complete; `true` if its state had
/// been written (its slot then comes back through the counter).
async fn discard_unstored<S: TaskStore + TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    task: &NewTask,
    key: Option<&UniqueKey>,
) -> bool {
    match app.store.discard(task, key).await {
        Ok(existed) => existed,
        Err(e) => {
            tracing::error!(task_id = %task.id, error = %e, "could not discard a task whose creation failed");
            false
        }
    }
}

/// Stores and dispatches the valid items of a batch (slots already reserved);
/// `held` counts the tasks whose state was written.
async fn create_reserved<S: TaskStore + TenantStore, Q: DeliveryQueue, C: Scheduler>(
    app: &AppState<S, Q, C>,
    tenant: &Tenant,
    valid: Vec<(usize, CreateTask)>,
    now: EpochMillis,
    results: &mut [Value],
    held: &mut u64,
) -> Result<(), ApiError> {
    let unavailable = |i: usize| json!({"index": i, "status": 503, "error": {"code": "unavailable", "message": "try again shortly", "field": null}});
    let mut plain: Vec<(usize, NewTask)> = Vec::new();
    let mut created: Vec<(usize, NewTask, Option<UniqueKey>)> = Vec::new();
    for (i, input) in valid {
        let key = input.business_id.clone().map(UniqueKey::BusinessId);
        let task = new_task(&app.settings, tenant, input, now);
        match key {
            None => plain.push((i, task)),
            Some(k) => match app.store.create(&task, Some(&k)).await {
                Ok(Created::New) => {
                    *held += 1;
                    created.push((i, task, Some(k)));
                }
                Ok(Created::Existing(existing)) => {
                    results[i] = match owned(app, tenant, existing.as_str()).await {
                        Ok(found) => match full_view(app, &found).await {
                            Ok(view) => json!({"index": i, "status": 200, "created": false, "task": view}),
                            Err(e) => item_error(i, &e),
                        },
                        Err(e) => item_error(i, &e),
                    };
                }
                Err(e) => {
                    tracing::error!(error = %e, index = i, "batch item not stored");
                    if discard_unstored(app, &task, Some(&k)).await {
                        *held += 1;
                    }
                    results[i] = unavailable(i);
                }
            },
        }
    }
    let tasks: Vec<NewTask> = plain.iter().map(|(_, t)| t.clone()).collect();
    let stored = match app.store.create_many(&tasks).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "batch write failed");
            vec![false; tasks.len()]
        }
    };
    for ((i, task), ok) in plain.into_iter().zip(stored) {
        if ok {
            *held += 1;
            created.push((i, task, None));
        } else {
            // Part of it may be written (a state without its spec): remove what is.
            if discard_unstored(app, &task, None).await {
                *held += 1;
            }
            results[i] = unavailable(i);
        }
    }
    // Queue-bound tasks go out in SendMessageBatch calls; scheduled ones one by one.
    let mut queued: Vec<(usize, usize)> = Vec::new(); // (created index, message index)
    let mut messages = Vec::new();
    let mut failed: Vec<usize> = Vec::new();
    for (ci, (_, task, _)) in created.iter().enumerate() {
        match route(&app.settings, task, now) {
            Route::Queue { delay } => {
                queued.push((ci, messages.len()));
                messages.push((QueueMessage::deliver(&task.id, Some(task.flow_ref())), delay));
            }
            _ => {
                if dispatch(app, task, now).await.is_err() {
                    failed.push(ci);
                }
            }
        }
    }
    let not_sent = match app.queue.enqueue_many(&messages).await {
        Ok(idx) => idx,
        Err(e) => {
            tracing::error!(error = %e, "batch enqueue failed");
            (0..messages.len()).collect()
        }
    };
    failed.extend(queued.iter().filter(|(_, mi)| not_sent.contains(mi)).map(|(ci, _)| *ci));
    for (ci, (i, task, key)) in created.iter().enumerate() {
        if failed.contains(&ci) {
            roll_back(app, task, key.as_ref()).await;
            results[*i] = unavailable(*i);
        } else {
            results[*i] = json!({"index": i, "status": 201, "created": true, "task": created_view(task, now)});
        }
    }
    Ok(())
}
