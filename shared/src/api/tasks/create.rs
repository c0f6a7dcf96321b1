//! Creating one task: parse and check the request, take the rate and
//! active-task quotas, store it, then send it on its way (the queue with a
//! delay, a one-time schedule, or a cron schedule); a repeat of a business id
//! or idempotency key answers the task already made.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{full_view, owned, quota};
use crate::api::{ApiError, ApiSettings, AppState, auth, views};
use crate::domain::{
    CreateTask, EpochMillis, NewTask, QueueMessage, Schedule, TaskId, Tenant, TraceContext, check_targets, now_millis,
    parse_create_task, parse_idempotency_key,
};
use crate::ports::{Created, DeliveryQueue, FieldSeal, Scheduler, StoredTask, TaskStore, TenantStore, UniqueKey};

/// Where a new task goes.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Route {
    /// The delivery queue, invisible for `delay`.
    Queue { delay: Duration },
    /// A one-time schedule firing at `fire_at`, whose message waits `delay` more.
    ScheduleAt { fire_at: EpochMillis, delay: Duration },
    /// A recurring schedule.
    Cron,
}

pub(super) fn route(settings: &ApiSettings, task: &NewTask, now: EpochMillis) -> Route {
    match &task.schedule {
        Schedule::Cron(_) => Route::Cron,
        Schedule::Now => Route::Queue { delay: Duration::ZERO },
        Schedule::At { at } => {
            let wait_ms = (*at - now).max(0) as u64;
            if wait_ms <= settings.sqs_delay_max_s * 1000 {
                // Whole seconds, rounded up: never early (the sender defers any remainder).
                Route::Queue { delay: Duration::from_secs(wait_ms.div_ceil(1000)) }
            } else {
                let h = crate::domain::scheduler_handoff(*at, Duration::from_secs(settings.schedule_early_s));
                Route::ScheduleAt { fire_at: h.fire_at, delay: h.delay }
            }
        }
    }
}

/// The task to store; whether it goes to Scheduler is recorded on it (the
/// route [`dispatch`] takes at the same `now`), so a cancel knows.
pub(super) fn new_task(settings: &ApiSettings, tenant: &Tenant, input: CreateTask, now: EpochMillis) -> NewTask {
    let due_at = match &input.schedule {
        Schedule::Now => now,
        Schedule::At { at } => *at,
        Schedule::Cron(c) => c.next_after(now).unwrap_or(now),
    };
    // A business id names its task: the same one always maps to the same id.
    let id = match &input.business_id {
        Some(b) => TaskId::derive(&tenant.id, b),
        None => TaskId::generate(),
    };
    let mut task = NewTask {
        id,
        tenant: tenant.id.clone(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: input.business_id,
        created_at: now,
        due_at,
        on_scheduler: false,
        slot_taken: false,
    };
    task.on_scheduler = !matches!(route(settings, &task, now), Route::Queue { .. });
    task
}

/// The trace a create request belongs to: its `traceparent` (and
/// `tracestate`), or a new one when it has none or it cannot be parsed (as
/// W3C asks of a receiver: restart the trace, do not refuse the request).
pub(super) fn trace_of(headers: &HeaderMap) -> TraceContext {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (trace, refused) = TraceContext::from_headers(get("traceparent"), get("tracestate"));
    if refused {
        tracing::info!(trace_id = %trace.trace_id, "malformed traceparent; started a new trace");
    }
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    trace
}

fn unique_key(input: &CreateTask, headers: &HeaderMap) -> Result<Option<UniqueKey>, ApiError> {
    if let Some(b) = &input.business_id {
        return Ok(Some(UniqueKey::BusinessId(b.clone())));
    }
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v.to_str().unwrap_or("\u{0}");
            Ok(Some(UniqueKey::IdempotencyKey(parse_idempotency_key(k)?)))
        }
    }
}

/// Sends a stored task on its way (queue or schedule).
pub(super) async fn dispatch<S, Q: DeliveryQueue, C: Scheduler>(
    app: &AppState<S, Q, C>,
    task: &NewTask,
    now: EpochMillis,
) -> Result<(), ApiError> {
    match route(&app.settings, task, now) {
        Route::Queue { delay } => {
            app.queue.enqueue(&QueueMessage::deliver(&task.id, Some(task.flow_ref())), delay).await?
        }
        Route::ScheduleAt { fire_at, delay } => {
            let msg = QueueMessage::deliver(&task.id, Some(task.flow_ref()));
            app.scheduler.create_at(task.id.as_str(), fire_at, &msg, delay).await?
        }
        Route::Cron => {
            let Schedule::Cron(c) = &task.schedule else { unreachable!("routed as cron") };
            app.scheduler.create_cron(task.id.as_str(), c, &task.id).await?
        }
    }
    Ok(())
}

/// Stores a new task and sends it on its way. A task bound for the queue is
/// sent first and written after: no crash between the two can lose it (the
/// sender waits a moment for a task not written yet, and drops the message
/// of one never written). One handed to Scheduler is written first (the
/// reconciler watches it) and removed again if the hand-over fails.
pub(super) async fn store_and_dispatch<S: TaskStore + TenantStore, Q: DeliveryQueue, C: Scheduler>(
    app: &AppState<S, Q, C>,
    task: &NewTask,
    key: Option<&UniqueKey>,
    now: EpochMillis,
) -> Result<Created, ApiError> {
    if let Route::Queue { delay } = route(&app.settings, task, now) {
        app.queue.enqueue(&QueueMessage::deliver(&task.id, Some(task.flow_ref())), delay).await?;
        return Ok(app.store.create(task, key).await?);
    }
    let created = app.store.create(task, key).await?;
    if created == Created::New
        && let Err(e) = dispatch(app, task, now).await
    {
        roll_back(app, task, key).await;
        return Err(e);
    }
    Ok(created)
}

/// Undoes a stored task that could not be dispatched: nothing half-made stays.
/// (Its active-task slot comes back when the stream counter sees the delete.)
pub(super) async fn roll_back<S: TaskStore + TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    task: &NewTask,
    key: Option<&UniqueKey>,
) {
    if let Err(e) = app.store.discard(task, key).await.map(|_| ()) {
        tracing::error!(task_id = %task.id, error = %e, "could not discard an undispatched task");
    }
}

/// The view of a task just stored, built from what was written (no read back).
pub(super) fn created_view(task: &NewTask, now: EpochMillis) -> Value {
    let stored = StoredTask {
        state: task.initial_state(),
        spec: task.spec.clone(),
        retry: task.retry.clone(),
        schedule: task.schedule.clone(),
    };
    let mut view = views::task(&stored, None, &[], now);
    view["created"] = Value::Bool(true);
    view
}

fn replay_response(mut view: Value) -> Response {
    view["created"] = Value::Bool(false);
    let mut r = (StatusCode::OK, Json(view)).into_response();
    r.headers_mut().insert("courier-idempotent-replay", HeaderValue::from_static("true"));
    r
}

#[tracing::instrument(skip_all, fields(tenant, task_id, trace_id))]
pub async fn create<S: TaskStore + TenantStore + FieldSeal, Q: DeliveryQueue, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    let now = now_millis();
    let mut input = parse_create_task(&body, now)?;
    check_targets(&input.spec, &app.settings.guard)?;
    input.spec.trace = Some(trace_of(&headers));
    let key = unique_key(&input, &headers)?;
    let mut task = new_task(&app.settings, &tenant, input, now);
    tracing::Span::current().record("task_id", task.id.as_str());
    // A repeat answers the task already made: a business id names it (half a
    // read unit to look, a read of the task only when it is there; one made a
    // moment ago that does not show yet is found by the create's conditional
    // write); an idempotency key is looked up (only a readable holder: its
    // creator may be between the key and the task; the store's create waits).
    let existing = match &key {
        Some(UniqueKey::BusinessId(_)) if app.store.may_exist(&task.id).await? => app.store.get(&task.id).await?,
        Some(UniqueKey::BusinessId(_)) => None,
        Some(k @ UniqueKey::IdempotencyKey(_)) => match app.store.find_by_key(&tenant.id, k).await? {
            Some(id) => app.store.get(&id).await?,
            None => None,
        },
        None => None,
    };
    if let Some(found) = existing.filter(|t| t.state.tenant == tenant.id) {
        return Ok(replay_response(full_view(&app, &found).await?));
    }
    // Secret values are stored sealed (the answer shows them masked either way).
    app.store.seal_fields(&tenant.id, &mut task.spec).await?;
    task.slot_taken = quota::admit(&app, &tenant, 1).await?;
    let created = store_and_dispatch(&app, &task, key.as_ref(), now).await;
    if task.slot_taken && !matches!(created, Ok(Created::New)) {
        app.store.release_active(&tenant.id, 1).await.ok();
    }
    if let Created::Existing(existing) = created? {
        return Ok(replay_response(full_view(&app, &owned(&app, &tenant, existing.as_str()).await?).await?));
    }
    tracing::info!(task_id = %task.id, host = task.spec.url.host(), kind = task.kind().as_str(), "task created");
    let view = created_view(&task, now_millis());
    let mut r = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.id)) {
        r.headers_mut().insert("location", loc);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RequestSpec, RetryPolicy, TenantId};

    fn task(schedule: Schedule) -> NewTask {
        NewTask {
            id: TaskId::generate(),
            tenant: TenantId::generate(),
            spec: RequestSpec::example(),
            retry: RetryPolicy::default(),
            schedule,
            business_id: None,
            created_at: 0,
            due_at: 0,
            on_scheduler: false,
            slot_taken: false,
        }
    }

    #[test]
    fn tasks_due_within_fifteen_minutes_go_to_sqs_and_later_ones_to_the_scheduler() {
        let s = ApiSettings {
            sqs_delay_max_s: 900,
            schedule_early_s: 60,
            admin_key: None,
            guard: Default::default(),
            flow_breaker: Default::default(),
        };
        assert_eq!(route(&s, &task(Schedule::Now), 0), Route::Queue { delay: Duration::ZERO });
        assert_eq!(route(&s, &task(Schedule::At { at: 90_500 }), 0), Route::Queue { delay: Duration::from_secs(91) });
        assert_eq!(route(&s, &task(Schedule::At { at: 900_000 }), 0), Route::Queue { delay: Duration::from_secs(900) });
        assert_eq!(
            route(&s, &task(Schedule::At { at: 3_600_000 }), 0),
            Route::ScheduleAt { fire_at: 3_540_000, delay: Duration::from_secs(60) }
        );
        assert_eq!(
            route(&s, &task(Schedule::At { at: 3_600_500 }), 0),
            Route::ScheduleAt { fire_at: 3_540_000, delay: Duration::from_secs(61) }
        );
    }
}
