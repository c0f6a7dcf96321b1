//! JSON views of stored values: times as RFC 3339, secrets masked.

use serde_json::{Value, json};

use crate::domain::{Attempt, format_millis, mask_headers};
use crate::ports::StoredTask;

pub fn task(t: &StoredTask, last_attempt: Option<&Attempt>) -> Value {
    let s = &t.state;
    let headers: serde_json::Map<String, Value> =
        mask_headers(&t.spec.headers).into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    json!({
        "id": s.id.as_str(),
        "status": s.status.as_str(),
        "created_at": format_millis(s.created_at),
        "updated_at": format_millis(s.updated_at),
        "next_run_at": s.due_at.map(format_millis),
        "attempts": s.attempts,
        "max_attempts": s.max_attempts,
        "failure_reason": s.failure_reason,
        "request": {
            "method": t.spec.method.as_str(),
            "url": t.spec.url.as_str(),
            "headers": headers,
            "body_size": t.spec.body.as_ref().map_or(0, |b| b.len()),
            "timeout_ms": t.spec.timeout_ms,
        },
        "retry": t.retry,
        "last_attempt": last_attempt.map(attempt),
    })
}

pub fn attempt(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "started_at": format_millis(a.started_at),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "outcome": a.outcome.as_str(),
        "response_body": a.response_body,
        "error": a.error,
        "next_delay_ms": a.next_delay_ms,
    })
}
