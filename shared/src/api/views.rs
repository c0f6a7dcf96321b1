//! JSON views of stored values: times as RFC 3339, secrets masked (headers,
//! credentials, URL userinfo and secret-looking query parameters).

use serde_json::{Value, json};

use crate::domain::{
    Attempt, EpochMillis, FlowPolicy, KeyInfo, RetryPolicy, Schedule, TaskState, Tenant, format_millis, mask_headers,
    mask_url,
};
use crate::ports::StoredTask;

/// The full task: state, request (masked), schedule, retry, last attempt and,
/// for cron tasks, recent runs.
pub fn task(t: &StoredTask, last_attempt: Option<&Attempt>, runs: &[TaskState], now: EpochMillis) -> Value {
    let s = &t.state;
    let headers: serde_json::Map<String, Value> =
        mask_headers(&t.spec.headers).into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let next_run_at = match &t.schedule {
        Schedule::Cron(c) if s.status == crate::domain::TaskStatus::Active => c.next_after(now),
        Schedule::Cron(_) => None,
        _ => s.due_at,
    };
    let mut v = json!({
        "id": s.id.as_str(),
        "kind": s.kind.as_str(),
        "status": s.effective_status(now).as_str(),
        "business_id": s.business_id,
        "created_at": format_millis(s.created_at),
        "updated_at": format_millis(s.updated_at),
        "next_run_at": next_run_at.map(format_millis),
        "attempts": s.attempts,
        "max_attempts": s.max_attempts,
        "failure_reason": s.failure_reason,
        "request": {
            "method": t.spec.method.as_str(),
            "url": t.spec.url.masked(),
            "headers": headers,
            "auth": t.spec.auth.as_ref().map(|a| a.masked()),
            "body_size": t.spec.body.as_ref().map_or(0, |b| b.len()),
            "timeout_ms": t.spec.timeout_ms,
            "follow_redirects": t.spec.follow_redirects,
        },
        "success_codes": t.spec.rules.success_codes,
        "retry_codes": t.spec.rules.retry_codes,
        "flow_key": t.spec.flow_key,
        "signing": !t.spec.unsigned,
        "trace_id": t.spec.trace.as_ref().map(|tr| tr.trace_id.as_str()),
        "schedule": schedule(&t.schedule),
        "retry": retry(&t.retry),
        "last_attempt": last_attempt.map(attempt),
    });
    if matches!(t.schedule, Schedule::Cron(_)) {
        v["runs"] = Value::Array(runs.iter().map(|r| run(r, now)).collect());
    }
    v["callbacks"] = callbacks(t);
    v["callback_of"] = s
        .business_id
        .as_deref()
        .and_then(crate::domain::CallbackKind::parse_business_id)
        .map_or(Value::Null, |(parent, kind)| json!({"task_id": parent.as_str(), "kind": kind.as_str()}));
    v
}

/// A task's callbacks: each URL (masked) and, once the task ended that way,
/// the id of the callback task made for it.
fn callbacks(t: &StoredTask) -> Value {
    use crate::domain::{CallbackKind, TaskStatus};
    let c = &t.spec.callbacks;
    if c.is_empty() {
        return Value::Null;
    }
    let s = &t.state;
    let task = |kind: CallbackKind, when: TaskStatus| {
        (s.status == when).then(|| kind.task_id(&s.tenant, &s.id).as_str().to_owned())
    };
    json!({
        "on_success": c.on_success.as_ref().map(|u| u.masked()),
        "on_failure": c.on_failure.as_ref().map(|u| u.masked()),
        "on_success_task": c.on_success.as_ref().and_then(|_| task(CallbackKind::Success, TaskStatus::Succeeded)),
        "on_failure_task": c.on_failure.as_ref().and_then(|_| task(CallbackKind::Failure, TaskStatus::Failed)),
    })
}

/// A task in a listing: state only.
pub fn summary(s: &TaskState, now: EpochMillis) -> Value {
    let line = s.request_line.as_deref().and_then(|l| l.split_once(' '));
    json!({
        "id": s.id.as_str(),
        "kind": s.kind.as_str(),
        "status": s.effective_status(now).as_str(),
        "business_id": s.business_id,
        "host": s.host,
        "method": line.map(|(m, _)| m),
        "url": line.map(|(_, u)| u),
        "created_at": format_millis(s.created_at),
        "updated_at": format_millis(s.updated_at),
        "next_run_at": s.due_at.map(format_millis),
        "attempts": s.attempts,
        "max_attempts": s.max_attempts,
        "failure_reason": s.failure_reason,
    })
}

fn run(r: &TaskState, now: EpochMillis) -> Value {
    json!({
        "scheduled_time": r.run.map(format_millis),
        "status": r.effective_status(now).as_str(),
        "attempts": r.attempts,
        "next_attempt_at": r.due_at.filter(|_| !r.status.is_final()).map(format_millis),
        "failure_reason": r.failure_reason,
    })
}

fn schedule(s: &Schedule) -> Value {
    match s {
        Schedule::Now => json!({"kind": "now"}),
        Schedule::At { at } => json!({"kind": "at", "at": format_millis(*at)}),
        Schedule::Cron(c) => json!({"kind": "cron", "cron": c.expression, "timezone": c.timezone}),
    }
}

fn retry(r: &RetryPolicy) -> Value {
    match r {
        RetryPolicy::Backoff { max_attempts, initial_ms, multiplier, max_ms, jitter } => json!({
            "max_attempts": max_attempts,
            "backoff": {"initial_ms": initial_ms, "multiplier": multiplier, "max_ms": max_ms,
                        "jitter": if *jitter { "full" } else { "none" }},
        }),
        RetryPolicy::Intervals { intervals_ms } => {
            json!({"max_attempts": r.max_attempts(), "intervals_ms": intervals_ms})
        }
    }
}

fn header_map(h: &[(String, String)]) -> Value {
    Value::Object(h.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub fn attempt(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "run": a.run.map(format_millis),
        "started_at": format_millis(a.started_at),
        "request": {
            "method": a.method,
            // Masked when recorded; masked again for attempts recorded before masking existed.
            "url": mask_url(&a.url),
            "headers": header_map(&a.request_headers),
            "body_size": a.request_body_size,
        },
        "response_headers": header_map(&a.response_headers),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "outcome": a.outcome.as_str(),
        "response_body": a.response_body,
        "error": a.error,
        "next_delay_ms": a.next_delay_ms,
    })
}

/// `limits`: the tenant's delivery limits (the flow policy on its key).
pub fn tenant(t: &Tenant, keys: &[KeyInfo], limits: Option<&FlowPolicy>) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "enabled": t.enabled,
        "active_tasks": t.active,
        "quotas": {
            "max_active_tasks": t.quotas.max_active_tasks,
            "create_rate_per_second": t.quotas.create_rate_per_second,
            "delivery_rate": limits.and_then(|p| p.rate).map(|r| r.to_string()),
            "delivery_parallelism": limits.and_then(|p| p.parallelism),
        },
        "created_at": format_millis(t.created_at),
        "keys": keys.iter().map(key).collect::<Vec<_>>(),
    })
}

/// An API key as listed: never the key itself.
pub fn key(k: &KeyInfo) -> Value {
    json!({
        "id": k.id,
        "created_at": format_millis(k.created_at),
        "revoked_at": k.revoked_at.map(format_millis),
        "expires_at": k.expires_at.map(format_millis),
    })
}
