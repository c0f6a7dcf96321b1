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

use super::create::{Route, created_view, dispatch, new_task, roll_back, route, store_and_dispatch, trace_of};
use super::{full_view, owned, quota};
use crate::api::{ApiError, AppState, auth};
use crate::domain::{
    CreateTask, EpochMillis, FieldError, NewTask, QueueMessage, Tenant, check_targets, now_millis, parse_create_value,
};
use crate::ports::{Created, DeliveryQueue, FieldSeal, Scheduler, TaskStore, TenantStore, UniqueKey};

/// The most tasks one batch may create.
pub const MAX_BATCH: usize = 100;

#[tracing::instrument(skip_all, fields(tenant, trace_id))]
pub async fn create_batch<S: TaskStore + TenantStore + FieldSeal, Q: DeliveryQueue, C: Scheduler>(
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
    // One trace for the whole batch: the request's.
    let trace = trace_of(&headers);
    for (i, item) in items.iter().enumerate() {
        let parsed =
            parse_create_value(item.clone(), now).and_then(|t| check_targets(&t.spec, &app.settings.guard).map(|()| t));
        match parsed {
            Ok(mut t) => {
                t.spec.trace = Some(trace.clone());
                valid.push((i, t));
            }
            Err(e) => {
                let e = e.prefixed(&format!("tasks[{i}]"));
                results[i] = json!({"index": i, "status": 400, "error": {"code": e.code, "message": e.message, "field": e.field}});
            }
        }
    }
    let slot_taken = if valid.is_empty() { false } else { quota::admit(&app, &tenant, valid.len() as u64).await? };
    // A slot taken here is either held by a task whose state was written (the
    // counter gives it back when the task ends or is discarded) or given back
    // here, whatever path the creation took.
    let reserved = if slot_taken { valid.len() as u64 } else { 0 };
    let mut held = 0u64;
    let outcome = create_admitted(&app, &tenant, valid, slot_taken, now, &mut results, &mut held).await;
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

/// A batch item's document when it could not be stored now.
fn unavailable(i: usize) -> Value {
    json!({"index": i, "status": 503, "error": {"code": "unavailable", "message": "try again shortly", "field": null}})
}

/// A batch item's document when its task was made.
fn created_doc(i: usize, task: &NewTask, now: EpochMillis) -> Value {
    json!({"index": i, "status": 201, "created": true, "task": created_view(task, now)})
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

/// Stores and dispatches the valid items of a batch (quotas already taken);
/// `held` counts the tasks whose state was written.
async fn create_admitted<S: TaskStore + TenantStore + FieldSeal, Q: DeliveryQueue, C: Scheduler>(
    app: &AppState<S, Q, C>,
    tenant: &Tenant,
    valid: Vec<(usize, CreateTask)>,
    slot_taken: bool,
    now: EpochMillis,
    results: &mut [Value],
    held: &mut u64,
) -> Result<(), ApiError> {
    let mut queued: Vec<(usize, NewTask)> = Vec::new();
    let mut scheduled: Vec<(usize, NewTask)> = Vec::new();
    for (i, input) in valid {
        let key = input.business_id.clone().map(UniqueKey::BusinessId);
        let mut task = new_task(&app.settings, tenant, input, now);
        task.slot_taken = slot_taken;
        app.store.seal_fields(&tenant.id, &mut task.spec).await?;
        let Some(k) = key else {
            match route(&app.settings, &task, now) {
                Route::Queue { .. } => queued.push((i, task)),
                _ => scheduled.push((i, task)),
            }
            continue;
        };
        // A business id names its task: a repeat answers the one already made
        // (looked for as a single create does: the key first, half a read unit).
        let looked = match app.store.may_exist(&task.id).await {
            Ok(true) => app.store.get(&task.id).await,
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        let found = match looked {
            Ok(found) => found.filter(|t| t.state.tenant == tenant.id),
            Err(e) => {
                results[i] = item_error(i, &e.into());
                continue;
            }
        };
        let created = match found {
            Some(t) => Ok(Created::Existing(t.state.id)),
            None => store_and_dispatch(app, &task, Some(&k), now).await,
        };
        results[i] = match created {
            Ok(Created::New) => {
                *held += 1;
                created_doc(i, &task, now)
            }
            Ok(Created::Existing(existing)) => match owned(app, tenant, existing.as_str()).await {
                Ok(found) => match full_view(app, &found).await {
                    Ok(view) => json!({"index": i, "status": 200, "created": false, "task": view}),
                    Err(e) => item_error(i, &e),
                },
                Err(e) => item_error(i, &e),
            },
            Err(e) => {
                tracing::error!(error = %e, index = i, "batch item not stored");
                item_error(i, &e)
            }
        };
    }
    // The tasks without a business id share one listing entry, written
    // before any of their states (beside the first chunk's messages); if it
    // cannot be, each state takes its own.
    let plain: Vec<&NewTask> = queued.iter().chain(&scheduled).map(|(_, t)| t).collect();
    let mut listing = (!plain.is_empty()).then_some(async {
        app.store.list_together(&plain).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, tasks = plain.len(), "listing group not written; tasks listed one by one");
            false
        })
    });
    let mut listed = false;
    // Queue-bound tasks: each chunk's messages first (SendMessageBatch calls), then
    // the tasks whose message went out, in one batched write. Chunk by chunk, a
    // message waits for its task a few calls at most (a sender that gets it
    // first claims in vain: a write unit).
    for chunk in queued.chunks(QUEUE_CHUNK) {
        let messages: Vec<_> = chunk
            .iter()
            .map(|(_, task)| {
                let Route::Queue { delay } = route(&app.settings, task, now) else {
                    unreachable!("routed to the queue")
                };
                (QueueMessage::deliver(&task.id, Some(task.flow_ref())), delay)
            })
            .collect();
        let sending = app.queue.enqueue_many(&messages);
        let sent = match listing.take() {
            Some(l) => {
                let (sent, l) = tokio::join!(sending, l);
                listed = l;
                sent
            }
            None => sending.await,
        };
        let not_sent = match sent {
            Ok(idx) => idx,
            Err(e) => {
                tracing::error!(error = %e, "batch enqueue failed");
                (0..messages.len()).collect()
            }
        };
        let mut sent = Vec::with_capacity(chunk.len());
        for (mi, (i, task)) in chunk.iter().enumerate() {
            if not_sent.contains(&mi) {
                results[*i] = unavailable(*i);
            } else {
                sent.push((*i, task.clone(), true));
            }
        }
        write_chunk(app, sent, listed, now, held, results).await;
    }
    if let Some(l) = listing.take() {
        listed = l.await;
    }
    // Scheduled ones are written, then handed to Scheduler one by one.
    let scheduled = scheduled.iter().map(|(i, t)| (*i, t.clone(), false)).collect();
    write_chunk(app, scheduled, listed, now, held, results).await;
    Ok(())
}

/// Messages sent per chunk of a batch's queue-bound tasks before their write.
const QUEUE_CHUNK: usize = 20;

/// Writes tasks in one batched write and fills in their results; a scheduled
/// one (`false`) is then handed to Scheduler. `listed`: their group lists them.
async fn write_chunk<S, Q, C>(
    app: &AppState<S, Q, C>,
    all: Vec<(usize, NewTask, bool)>,
    listed: bool,
    now: EpochMillis,
    held: &mut u64,
    results: &mut [Value],
) where
    S: TaskStore + TenantStore,
    Q: DeliveryQueue,
    C: Scheduler,
{
    if all.is_empty() {
        return;
    }
    let tasks: Vec<NewTask> = all.iter().map(|(_, t, _)| t.clone()).collect();
    let stored = match app.store.create_many(&tasks, listed).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "batch write failed");
            vec![false; tasks.len()]
        }
    };
    for ((i, task, is_queued), ok) in all.into_iter().zip(stored) {
        if !ok {
            // Part of it may be written (a spec without its state): remove what is.
            if discard_unstored(app, &task, None).await {
                *held += 1;
            }
            results[i] = unavailable(i);
        } else if !is_queued && dispatch(app, &task, now).await.is_err() {
            *held += 1;
            roll_back(app, &task, None).await;
            results[i] = unavailable(i);
        } else {
            *held += 1;
            results[i] = created_doc(i, &task, now);
        }
    }
}
