//! Reading tasks: one task (by id or business id), a filtered listing, the
//! tenant's counts and a task's attempts, with the query parameters they
//! share (limit, cursor, time window, host).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{full_view, owned, owned_by_business_id};
use crate::api::{ApiError, AppState, auth, views};
use crate::domain::{EpochMillis, FieldError, MINUTE_MS, TaskId, TaskStatus, format_millis, now_millis};
use crate::ports::{CountStore, ListFilter, QueueDepth, QueueDepths, TaskStore, TenantStore};

/// Page sizes of listings.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub async fn get_one<S: TaskStore + TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    // `?include=body` adds the request's body (the console's expander).
    let mut with_body = false;
    for (k, v) in url::form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("include", "body") => with_body = true,
            ("include", _) => return Err(FieldError::new("invalid", "include", "include must be `body`").into()),
            (k, _) => {
                return Err(FieldError::new("unknown_field", k, format!("`{k}` is not a query parameter here")).into());
            }
        }
    }
    let task = owned(&app, &tenant, &id).await?;
    let mut view = full_view(&app, &task).await?;
    if with_body {
        let (body, encoding) = match &task.spec.body {
            None => (Value::Null, Value::Null),
            Some(crate::domain::Body::Text(t)) => (json!(t), json!("text")),
            Some(crate::domain::Body::Bytes(b)) => {
                use base64::Engine;
                (json!(base64::engine::general_purpose::STANDARD.encode(b)), json!("base64"))
            }
        };
        view["request"]["body"] = body;
        view["request"]["body_encoding"] = encoding;
    }
    Ok(Json(view))
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
pub(in crate::api) fn valid_cursor(c: &str, fits: impl Fn(&str) -> bool) -> bool {
    use base64::Engine;
    c.len() <= 344
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .is_some_and(|text| fits(&text))
}

/// A task listing's cursor names the last task of the previous page: its
/// listing sort key (the shape of a task id, with `#` and its 3-digit place
/// when it is listed by a batch's group) and its id.
pub(in crate::api) fn is_task_id(text: &str) -> bool {
    // A partial page's cursor names the sort key it stopped at twice.
    let listing_key = |k: &str| {
        let k = match k.split_once('#') {
            Some((key, place)) if place.len() == 3 && place.bytes().all(|b| b.is_ascii_digit()) => key,
            Some(_) => return false,
            None => k,
        };
        TaskId::parse(k).is_ok()
    };
    let (sort_key, id) = text.split_once(' ').unwrap_or((text, text));
    listing_key(sort_key) && listing_key(id)
}

/// A listing's time window must not end before it starts (the store would
/// refuse the range as a key condition).
pub(in crate::api) fn time_window(
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

pub(in crate::api) fn host_filter(host: Option<&str>, field: &'static str) -> Result<Option<String>, ApiError> {
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
/// Minutes of activity `GET /v1/stats` returns: the last hour.
const ACTIVITY_MINUTES: i64 = 60;

pub async fn stats<S: CountStore + TenantStore, Q: QueueDepths, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    let counts: serde_json::Map<String, Value> =
        app.store.counts(&tenant.id).await?.into_iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
    let now = now_millis();
    let since = now - now.rem_euclid(MINUTE_MS) - (ACTIVITY_MINUTES - 1) * MINUTE_MS;
    let activity = app.store.activity(&tenant.id, since).await?;
    let per_minute: Vec<Value> = (0..ACTIVITY_MINUTES)
        .map(|i| {
            let minute = since + i * MINUTE_MS;
            let a = activity.iter().find(|(m, _)| *m == minute).map(|(_, a)| *a).unwrap_or_default();
            json!({"minute": format_millis(minute), "delivered": a.delivered, "retried": a.retried, "failed": a.failed})
        })
        .collect();
    // The queues are shared by every tenant: only the admin (acting as a
    // tenant, as the console does) sees their depths.
    let queues = if auth::acts_as_tenant(&headers) {
        let q = app.queue.queue_stats().await?;
        let depth = |d: QueueDepth| json!({"visible": d.visible, "in_flight": d.in_flight, "delayed": d.delayed});
        json!({"delivery": depth(q.delivery), "dlq": depth(q.dlq)})
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "counts": counts,
        "active_tasks": tenant.active,
        "max_active_tasks": tenant.quotas.max_active_tasks,
        "per_minute": per_minute,
        "queues": queues,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_cursor_names_a_sort_key_of_a_task_or_of_a_groups_member() {
        let id = TaskId::generate();
        for ok in [format!("{id} {id}"), format!("{id}#007 {id}"), format!("{id}#007 {id}#007"), id.to_string()] {
            assert!(is_task_id(&ok), "{ok}");
        }
        for bad in [format!("{id}#7 {id}"), format!("{id}#abc {id}"), format!("{id}#0071 {id}"), format!("x {id}")] {
            assert!(!is_task_id(&bad), "{bad}");
        }
    }
}
