//! The domain: what a task is, how a request is validated, how an outcome is
//! classified and how long to wait before the next attempt. Pure: no AWS
//! types, no I/O, unit-tested beside the code (big test modules in sibling files).

mod audit;
mod counts;
mod dead_letter;
mod events;
mod flow;
mod guard;
mod ids;
mod message;
mod outcome;
mod replay;
mod request;
mod retry;
mod schedule;
mod signing;
mod task;
mod tenant;
mod trace;
mod validate;

pub use audit::{Actor, AuditEntry, AuditOutcome, AuditQuery, actions as audit_actions, key_id_of};
pub use counts::{Activity, Deltas, MINUTE_MS, TenantDelta};
pub use dead_letter::DeadLetter;
pub use events::{BreakerEvent, BusEvent, CallbackKind, Callbacks, EventType, LifecycleEvent, callback_notice};
pub use flow::{
    BreakerPosition, BreakerSettings, BucketForm, BucketId, BucketWrite, Cas, FlowChange, FlowEvent, FlowKey,
    FlowPolicy, FlowRef, FlowShared, FlowSnapshot, HALVE_SPACING_MS, Hold, MAX_PARALLELISM, MIN_FACTOR, PolicyScope,
    RESTORE_AFTER_MS, Rate, Reservation, Tally, check_name as check_flow_name, halved, humanize, plan_bucket, restored,
    slot_at,
};
pub use guard::{AllowEntry, Blocked, InvalidAllowEntry, TargetGuard, TargetPolicy, blocked_range, is_loopback};
pub use ids::{InvalidId, KeyId, ReplayId, SecretId, TaskId, TenantId};
pub use message::QueueMessage;
pub use outcome::{MAX_RETRY_AFTER, Outcome, ReceiverHints, ResponseRules, classify_status, parse_retry_after};
pub use replay::{CodeMatch, Replay, ReplayFilter, ReplayStatus};
pub use request::{
    Auth, Body, HttpMethod, RequestSpec, SEALED_PREFIX, TargetUrl, is_secret_param, is_sensitive_header, mask_headers,
    mask_url, request_line,
};
pub use retry::RetryPolicy;
pub use schedule::{CronSchedule, Handoff, Schedule, parse_duration, scheduler_handoff};
pub use signing::{ROTATION_GRACE_MS, SecretInfo, SecretState, SigningSecret, signature_header, webhook_id};
pub use task::{Attempt, NewTask, SchedulerHold, TaskKind, TaskState, TaskStatus};
pub use tenant::{
    DEFAULT_KEY_LIFETIME_MS, KeyGrant, KeyInfo, MAX_KEY_LIFETIME_MS, NewApiKey, Quotas, Tenant, hash_key, same_secret,
};
pub use trace::TraceContext;
pub use validate::{
    CreateTask, FieldError, PatchTask, check_stored_size, check_target, check_targets, decode as decode_document,
    parse_business_id, parse_create_task, parse_create_value, parse_document, parse_idempotency_key, parse_patch,
    parse_time,
};

/// Milliseconds since the Unix epoch: the one time representation stored and
/// compared by Courier (formatted as RFC 3339 only at the API edge).
pub type EpochMillis = i64;

/// The current time in epoch milliseconds.
pub fn now_millis() -> EpochMillis {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as EpochMillis
}

/// Formats epoch milliseconds as an RFC 3339 UTC timestamp with millisecond precision.
pub fn format_millis(ms: EpochMillis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt).unwrap_or_default()
}

/// Reads an RFC 3339 time (any offset) as epoch milliseconds; `None` if it
/// is not one. Each caller names the field and the rule in its own error.
pub fn parse_rfc3339(text: &str) -> Option<EpochMillis> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as EpochMillis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_millis_as_rfc3339_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn rfc3339_times_read_as_epoch_millis_in_any_offset() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_rfc3339("2023-11-15T06:13:20.123+08:00"), Some(1_700_000_000_123));
        assert_eq!(parse_rfc3339("2023-11-14 22:13:20"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
