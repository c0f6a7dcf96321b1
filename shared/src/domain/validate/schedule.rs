//! When and how often a task is sent: its schedule (delay, at, cron) and its
//! retry policy.

use std::time::Duration;

use serde_json::Value;

use super::{FieldError, RetryDto, ScheduleDto};
use crate::domain::{CronSchedule, EpochMillis, RetryPolicy, Schedule, parse_duration, parse_rfc3339};

/// How far ahead a task may be scheduled.
pub const MAX_AHEAD: Duration = Duration::from_secs(366 * 86_400);
/// How far in the past an `at` may lie and still mean "now" (clock skew).
pub const PAST_GRACE: Duration = Duration::from_secs(60);
/// The longest wait a retry policy may ask for between two attempts.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(7 * 86_400);

pub(super) fn parse_schedule(s: ScheduleDto, now: EpochMillis) -> Result<Schedule, FieldError> {
    let given = [s.delay.is_some(), s.at.is_some(), s.cron.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(FieldError::invalid("schedule", "needs exactly one of delay, at, cron"));
    }
    if s.timezone.is_some() && s.cron.is_none() {
        return Err(FieldError::invalid("schedule.timezone", "is only used with cron (at takes an RFC 3339 offset)"));
    }
    let max_ahead = MAX_AHEAD.as_millis() as i64;
    if let Some(d) = s.delay {
        let d = parse_duration(&d).map_err(|rule| FieldError::invalid("schedule.delay", rule))?;
        if d.as_millis() as i64 > max_ahead {
            return Err(FieldError::invalid("schedule.delay", "must be at most one year"));
        }
        return Ok(if d.is_zero() { Schedule::Now } else { Schedule::At { at: now + d.as_millis() as i64 } });
    }
    if let Some(at) = s.at {
        let at = parse_rfc3339(&at).ok_or_else(|| {
            FieldError::invalid("schedule.at", "must be an RFC 3339 time such as 2026-01-02T10:00:00Z")
        })?;
        if at > now + max_ahead {
            return Err(FieldError::invalid("schedule.at", "must be at most one year ahead"));
        }
        if at < now - PAST_GRACE.as_millis() as i64 {
            return Err(FieldError::invalid("schedule.at", "is in the past"));
        }
        return Ok(if at <= now { Schedule::Now } else { Schedule::At { at } });
    }
    let cron = s.cron.unwrap_or_default();
    let tz = s.timezone.unwrap_or_else(|| "UTC".to_owned());
    CronSchedule::parse(&cron, &tz, now).map(Schedule::Cron).map_err(|rule| {
        let field = if rule.contains("time zone") { "schedule.timezone" } else { "schedule.cron" };
        FieldError::invalid(field, rule)
    })
}

pub(super) fn parse_retry(r: RetryDto) -> Result<RetryPolicy, FieldError> {
    let wait = |field: &str, v: &Value| -> Result<u64, FieldError> {
        let d = parse_duration(v).map_err(|rule| FieldError::invalid(field, rule))?;
        if d > MAX_RETRY_WAIT {
            return Err(FieldError::invalid(field, "must be at most 7 days"));
        }
        Ok(d.as_millis() as u64)
    };
    if let Some(intervals) = r.intervals {
        if r.backoff.is_some() || r.max_attempts.is_some() {
            return Err(FieldError::invalid(
                "retry.intervals",
                "cannot be combined with backoff or max_attempts (the list sets the attempts)",
            ));
        }
        if intervals.len() >= RetryPolicy::MAX_ATTEMPTS as usize {
            return Err(FieldError::invalid("retry.intervals", "may hold at most 19 waits (20 attempts)"));
        }
        let intervals_ms = intervals
            .iter()
            .enumerate()
            .map(|(i, v)| wait(&format!("retry.intervals[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(RetryPolicy::Intervals { intervals_ms });
    }
    let RetryPolicy::Backoff { max_attempts, initial_ms, multiplier, max_ms, jitter } = RetryPolicy::default() else {
        unreachable!("the default policy is a backoff")
    };
    let max_attempts = r.max_attempts.unwrap_or(max_attempts);
    if !(1..=RetryPolicy::MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(FieldError::invalid("retry.max_attempts", "must be between 1 and 20"));
    }
    let Some(b) = r.backoff else {
        return Ok(RetryPolicy::Backoff { max_attempts, initial_ms, multiplier, max_ms, jitter });
    };
    let initial_ms = b.initial.as_ref().map(|v| wait("retry.backoff.initial", v)).transpose()?.unwrap_or(initial_ms);
    let max_ms = b.max.as_ref().map(|v| wait("retry.backoff.max", v)).transpose()?.unwrap_or(max_ms);
    let multiplier = b.multiplier.unwrap_or(multiplier);
    if !(1.0..=10.0).contains(&multiplier) {
        return Err(FieldError::invalid("retry.backoff.multiplier", "must be between 1 and 10"));
    }
    if initial_ms == 0 || max_ms < initial_ms {
        return Err(FieldError::invalid(
            "retry.backoff.max",
            "must be at least backoff.initial, which must be above 0",
        ));
    }
    let jitter = match b.jitter {
        None => jitter,
        Some(Value::Bool(j)) => j,
        Some(Value::String(s)) if s == "full" => true,
        Some(Value::String(s)) if s == "none" => false,
        Some(_) => return Err(FieldError::invalid("retry.backoff.jitter", "must be \"full\", \"none\" or a boolean")),
    };
    Ok(RetryPolicy::Backoff { max_attempts, initial_ms, multiplier, max_ms, jitter })
}
