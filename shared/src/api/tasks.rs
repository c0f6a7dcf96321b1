//! Task endpoints: create (one or a batch), read, list, attempts, change,
//! cancel, pause and resume.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiSettings, AppState, auth, views};
use crate::domain::{
    CreateTask, EpochMillis, FieldError, NewTask, QueueMessage, Schedule, TaskId, TaskKind, TaskStatus, Tenant,
    check_stored_size, check_target, now_millis, parse_business_id, parse_create_task, parse_create_value,
    parse_idempotency_key, parse_patch,
};
use crate::ports::{
    Cancelled, Created, DeliveryQueue, ListFilter, Retried, Scheduler, StoredTask, TaskStore, TenantStore, UniqueKey,
};

/// The most tasks one batch may create.
pub const MAX_BATCH: usize = 100;
/// Page sizes of listings.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// How long a client should wait after hitting the active-task quota.
const ACTIVE_QUOTA_RETRY_S: u64 = 30;

/// Where a new task goes.
#[derive(Clone, Debug, PartialEq)]
enum Route {
    /// The delivery queue, invisible for `delay`.
    Queue { delay: Duration },
    /// A one-time schedule firing at `fire_at`, whose message waits `delay` more.
    ScheduleAt { fire_at: EpochMillis, delay: Duration },
    /// A recurring schedule.
    Cron,
}

fn route(settings: &ApiSettings, task: &NewTask, now: EpochMillis) -> Route {
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

fn new_task(tenant: &Tenant, input: CreateTask, now: EpochMillis) -> NewTask {
    let due_at = match &input.schedule {
        Schedule::Now => now,
        Schedule::At { at } => *at,
        Schedule::Cron(c) => c.next_after(now).unwrap_or(now),
    };
    NewTask {
        id: TaskId::generate(),
        tenant: tenant.id.clone(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: input.business_id,
        created_at: now,
        due_at,
    }
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

async fn check_rate<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, t: &Tenant, n: u64) -> Result<(), ApiError> {
    if app.store.take_rate(t, n, now_millis()).await? {
        Ok(())
    } else {
        Err(ApiError::TooMany {
            code: "rate_limited",
            message: format!("create rate quota of {} tasks per second exceeded", t.quotas.create_rate_per_second),
            retry_after_s: 1,
        })
    }
}

async fn reserve<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, t: &Tenant, n: u64) -> Result<(), ApiError> {
    if app.store.reserve_active(t, n).await? {
        Ok(())
    } else {
        Err(ApiError::TooMany {
            code: "quota_exceeded",
            message: format!("active task quota of {} exceeded", t.quotas.max_active_tasks),
            retry_after_s: ACTIVE_QUOTA_RETRY_S,
        })
    }
}

/// Sends a stored task on its way (queue or schedule).
async fn dispatch<S, Q: DeliveryQueue, C: Scheduler>(
    app: &AppState<S, Q, C>,
    task: &NewTask,
    now: EpochMillis,
) -> Result<(), ApiError> {
    match route(&app.settings, task, now) {
        Route::Queue { delay } => app.queue.enqueue(&QueueMessage::deliver(&task.id), delay).await?,
        Route::ScheduleAt { fire_at, delay } => {
            app.scheduler.create_at(task.id.as_str(), fire_at, &QueueMessage::deliver(&task.id), delay).await?
        }
        Route::Cron => {
            let Schedule::Cron(c) = &task.schedule else { unreachable!("routed as cron") };
            app.scheduler.create_cron(task.id.as_str(), c, &task.id).await?
        }
    }
    Ok(())
}

/// Undoes a stored task that could not be dispatched: nothing half-made stays.
/// (Its active-task slot comes back when the stream counter sees the delete.)
async fn roll_back<S: TaskStore + TenantStore, Q, C>(app: &AppState<S, Q, C>, task: &NewTask, key: Option<&UniqueKey>) {
    if let Err(e) = app.store.discard(task, key).await.map(|_| ()) {
        tracing::error!(task_id = %task.id, error = %e, "could not discard an undispatched task");
    }
}

pub(super) async fn full_view<S: TaskStore, Q, C>(app: &AppState<S, Q, C>, t: &StoredTask) -> Result<Value, ApiError> {
    let last = if t.state.attempts > 0 || t.state.kind == TaskKind::Cron {
        app.store.last_attempt(&t.state.id).await?
    } else {
        None
    };
    let runs = if t.state.kind == TaskKind::Cron { app.store.runs(&t.state.id, 10).await? } else { Vec::new() };
    Ok(views::task(t, last.as_ref(), &runs, now_millis()))
}

/// The task, if it exists and belongs to `tenant` (404 otherwise, either way).
async fn owned<S: TaskStore, Q, C>(app: &AppState<S, Q, C>, tenant: &Tenant, id: &str) -> Result<StoredTask, ApiError> {
    let missing = || ApiError::NotFound(format!("no task {id}"));
    let task_id = TaskId::parse(id).map_err(|_| missing())?;
    app.store.get(&task_id).await?.filter(|t| t.state.tenant == tenant.id).ok_or_else(missing)
}

async fn owned_by_business_id<S: TaskStore, Q, C>(
    app: &AppState<S, Q, C>,
    tenant: &Tenant,
    business_id: &str,
) -> Result<StoredTask, ApiError> {
    let missing = || ApiError::NotFound(format!("no task with business id {business_id}"));
    let bid = parse_business_id(business_id).map_err(|_| missing())?;
    let id = app.store.find_by_key(&tenant.id, &UniqueKey::BusinessId(bid)).await?.ok_or_else(missing)?;
    owned(app, tenant, id.as_str()).await
}

/// The view of a task just stored, built from what was written (no read back).
fn created_view(task: &NewTask, now: EpochMillis) -> Value {
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

#[tracing::instrument(skip_all, fields(tenant, task_id))]
pub async fn create<S: TaskStore + TenantStore, Q: DeliveryQueue, C: Scheduler>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    let now = now_millis();
    let input = parse_create_task(&body, now)?;
    check_target(&input.spec.url, &app.settings.guard, "request.url")?;
    let key = unique_key(&input, &headers)?;
    // Fast path for a repeat: only when the holder is readable (its creator
    // may be between the key and the task; the store's create waits for it).
    if let Some(k) = &key
        && let Some(existing) = app.store.find_by_key(&tenant.id, k).await?
        && let Some(found) = app.store.get(&existing).await?.filter(|t| t.state.tenant == tenant.id)
    {
        return Ok(replay_response(full_view(&app, &found).await?));
    }
    check_rate(&app, &tenant, 1).await?;
    reserve(&app, &tenant, 1).await?;
    let task = new_task(&tenant, input, now);
    tracing::Span::current().record("task_id", task.id.as_str());
    match app.store.create(&task, key.as_ref()).await {
        Ok(Created::New) => {}
        Ok(Created::Existing(existing)) => {
            app.store.release_active(&tenant.id, 1).await?;
            return Ok(replay_response(full_view(&app, &owned(&app, &tenant, existing.as_str()).await?).await?));
        }
        Err(e) => {
            app.store.release_active(&tenant.id, 1).await.ok();
            return Err(e.into());
        }
    }
    if let Err(e) = dispatch(&app, &task, now).await {
        roll_back(&app, &task, key.as_ref()).await;
        return Err(e);
    }
    tracing::info!(task_id = %task.id, host = task.spec.url.host(), kind = task.kind().as_str(), "task created");
    let view = created_view(&task, now_millis());
    let mut r = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.id)) {
        r.headers_mut().insert("location", loc);
    }
    Ok(r)
}

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
        let task = new_task(tenant, input, now);
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
                messages.push((QueueMessage::deliver(&task.id), delay));
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

pub async fn get_one<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned(&app, &tenant, &id).await?;
    Ok(Json(full_view(&app, &task).await?))
}

pub async fn get_by_business_id<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(business_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned_by_business_id(&app, &tenant, &business_id).await?;
    Ok(Json(full_view(&app, &task).await?))
}

/// Parses `limit` and `cursor` plus the extra parameters `allowed`; anything else is a 400.
fn query_params(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) && k != "limit" && k != "cursor" {
            return Err(
                FieldError::new("unknown_field", k.clone(), format!("`{k}` is not a query parameter here")).into()
            );
        }
    }
    Ok(pairs)
}

fn limit_of(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    match pairs.iter().find(|(k, _)| k == "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| FieldError::new("invalid", "limit", "limit must be an integer from 1 to 100").into()),
    }
}

fn time_param(pairs: &[(String, String)], name: &str) -> Result<Option<EpochMillis>, ApiError> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| crate::domain::parse_time(name, v).map_err(ApiError::from))
        .transpose()
}

/// The longest `host` filter (a DNS name is at most 253 characters).
pub(super) const MAX_HOST_FILTER: usize = 253;

/// A `cursor` must be a `next_cursor` this API handed out: base64url text
/// (the store's start key) that `fits`; anything else is refused here, before
/// it reaches the store as a start key it cannot use.
fn cursor_param(pairs: &[(String, String)], fits: impl Fn(&str) -> bool) -> Result<Option<&str>, ApiError> {
    let Some((_, c)) = pairs.iter().find(|(k, _)| k == "cursor") else { return Ok(None) };
    if valid_cursor(c, fits) {
        Ok(Some(c.as_str()))
    } else {
        Err(FieldError::new("invalid", "cursor", "cursor must be a next_cursor returned by the previous page").into())
    }
}

/// Whether `c` is base64url (no padding) of at most 256 bytes of text that `fits`.
pub(super) fn valid_cursor(c: &str, fits: impl Fn(&str) -> bool) -> bool {
    use base64::Engine;
    c.len() <= 344
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .is_some_and(|text| fits(&text))
}

/// A task listing's cursor names the last task of the previous page.
pub(super) fn is_task_id(text: &str) -> bool {
    TaskId::parse(text).is_ok()
}

/// A listing's time window must not end before it starts (the store would
/// refuse the range as a key condition).
pub(super) fn time_window(
    after: Option<EpochMillis>,
    before: Option<EpochMillis>,
    after_name: &'static str,
    before_name: &str,
) -> Result<(), ApiError> {
    match (after, before) {
        (Some(a), Some(b)) if a > b => {
            Err(FieldError::new("invalid", after_name, format!("{after_name} must not be later than {before_name}"))
                .into())
        }
        _ => Ok(()),
    }
}

pub(super) fn host_filter(host: Option<&str>, field: &'static str) -> Result<Option<String>, ApiError> {
    match host {
        Some(h) if h.is_empty() || h.len() > MAX_HOST_FILTER => {
            Err(FieldError::new("invalid", field, format!("{field} must be a host name of 1 to 253 characters")).into())
        }
        h => Ok(h.map(str::to_owned)),
    }
}

pub async fn list<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let pairs = query_params(raw.as_deref(), &["status", "host", "created_after", "created_before"])?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let status = get("status")
        .map(|s| {
            TaskStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                FieldError::new("invalid", "status", format!("status must be one of {}", all.join(", ")))
            })
        })
        .transpose()?;
    let filter = ListFilter {
        status,
        host: host_filter(get("host"), "host")?,
        created_after: time_param(&pairs, "created_after")?,
        created_before: time_param(&pairs, "created_before")?,
        code: None,
    };
    time_window(filter.created_after, filter.created_before, "created_after", "created_before")?;
    let limit = limit_of(&pairs)?;
    let cursor = cursor_param(&pairs, is_task_id)?;
    let now = now_millis();
    let page = app.store.list(&tenant.id, &filter, limit, cursor, now).await.map_err(ApiError::store_on("cursor"))?;
    let tasks: Vec<Value> = page.items.iter().map(|s| views::summary(s, now)).collect();
    Ok(Json(json!({"tasks": tasks, "next_cursor": page.cursor})))
}

/// The tenant's task counts by status (kept by the stream counter, so they
/// lag changes by about a second) and its active-task quota use.
pub async fn stats<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let counts: serde_json::Map<String, Value> =
        app.store.counts(&tenant.id).await?.into_iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
    Ok(Json(json!({
        "counts": counts,
        "active_tasks": tenant.active,
        "max_active_tasks": tenant.quotas.max_active_tasks,
    })))
}

pub async fn attempts<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let task = owned(&app, &tenant, &id).await?;
    let pairs = query_params(raw.as_deref(), &[])?;
    let limit = limit_of(&pairs)?;
    // An attempts cursor names the last attempt's sort key.
    let cursor = cursor_param(&pairs, |t| t.starts_with("ATTEMPT#") && t.len() <= 64)?;
    let page = app.store.attempts(&task.state.id, limit, cursor).await.map_err(ApiError::store_on("cursor"))?;
    let items: Vec<Value> = page.items.iter().map(views::attempt).collect();
    Ok(Json(json!({"attempts": items, "next_cursor": page.cursor})))
}

async fn cancel_task<S: TaskStore + TenantStore, Q, C: Scheduler>(
    app: &AppState<S, Q, C>,
    task: StoredTask,
) -> Result<Json<Value>, ApiError> {
    let id = task.state.id.clone();
    match app.store.cancel(&id, now_millis()).await? {
        Cancelled::Done(before) => {
            let scheduled = match &task.schedule {
                Schedule::Cron(_) => true,
                Schedule::At { at } => *at - before.created_at > app.settings.sqs_delay_max_s as i64 * 1000,
                Schedule::Now => false,
            };
            if scheduled && let Err(e) = app.scheduler.delete(id.as_str()).await {
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

pub async fn update<S: TaskStore + TenantStore, Q, C>(
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
pub async fn retry<S: TaskStore + TenantStore, Q: DeliveryQueue, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let run = super::ops::retry_target(&body)?;
    let task = owned(&app, &tenant, &id).await?;
    if task.state.kind == TaskKind::Cron {
        let updated = super::ops::retry_run(&app, &task, run).await?;
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
    if let Err(e) = app.queue.enqueue(&QueueMessage::deliver(&task.state.id), Duration::ZERO).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RequestSpec, RetryPolicy};

    fn task(schedule: Schedule) -> NewTask {
        NewTask {
            id: TaskId::generate(),
            tenant: "t".into(),
            spec: RequestSpec::example(),
            retry: RetryPolicy::default(),
            schedule,
            business_id: None,
            created_at: 0,
            due_at: 0,
        }
    }

    #[test]
    fn tasks_due_within_fifteen_minutes_go_to_sqs_and_later_ones_to_the_scheduler() {
        let s = ApiSettings { sqs_delay_max_s: 900, schedule_early_s: 60, admin_key: None, guard: Default::default() };
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
