//! Parsing API input: bytes in, a valid domain value or a [`FieldError`]
//! naming the field and the rule out. Unknown fields are rejected so that a
//! typo never silently changes what is sent. The document as a whole is read
//! in `document`, the request to send in `request`, when and how often in
//! `schedule`; this module holds the documents' shapes and puts them together.

mod document;
mod request;
mod schedule;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod stored_size;
#[cfg(test)]
mod tests;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Auth, Body, EpochMillis, HttpMethod, RequestSpec, ResponseRules, RetryPolicy, Schedule, TargetUrl};
use document::*;
pub use document::{decode, parse_document, parse_time};
use request::*;
pub use request::{check_stored_size, check_target, check_targets, parse_business_id, parse_idempotency_key};
use schedule::*;

/// A validated create request.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateTask {
    pub spec: RequestSpec,
    pub schedule: Schedule,
    pub retry: RetryPolicy,
    pub business_id: Option<String>,
}

/// A validated change to a task that has not finished: each `Some` replaces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchTask {
    pub url: Option<TargetUrl>,
    pub headers: Option<Vec<(String, String)>>,
    pub body: Option<Body>,
    pub auth: Option<Auth>,
    pub timeout_ms: Option<u64>,
    pub retry: Option<RetryPolicy>,
    pub flow_key: Option<String>,
}

impl PatchTask {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the change to a stored request and policy.
    pub fn apply(self, spec: &mut RequestSpec, retry: &mut RetryPolicy) {
        if let Some(u) = self.url {
            spec.url = u;
        }
        if let Some(h) = self.headers {
            spec.headers = h;
        }
        if let Some(b) = self.body {
            spec.body = Some(b);
        }
        if let Some(a) = self.auth {
            spec.auth = Some(a);
        }
        if let Some(t) = self.timeout_ms {
            spec.timeout_ms = t;
        }
        if let Some(r) = self.retry {
            *retry = r;
        }
        if let Some(k) = self.flow_key {
            spec.flow_key = Some(k);
        }
    }
}

/// A rejected input: which field, which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Machine-readable rule: `invalid_json`, `required`, `invalid`, `unknown_field`, `too_large`, `conflict`,
    /// `blocked_address`…
    pub code: &'static str,
    /// Dotted path of the offending field ([`FieldError::DOCUMENT`] for the
    /// document itself): never empty.
    pub field: String,
    pub message: String,
}

impl FieldError {
    /// The `field` of an error in the request document as a whole (not JSON,
    /// not an object, nothing to change).
    pub const DOCUMENT: &'static str = "body";

    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code, field: field.into(), message: message.into() }
    }

    fn invalid(field: &str, rule: impl std::fmt::Display) -> Self {
        Self::new("invalid", field, format!("{field} {rule}"))
    }

    /// The same error for a field nested under `prefix` (e.g. `tasks[3]`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() || self.field == Self::DOCUMENT {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDto {
    request: RequestDto,
    schedule: Option<ScheduleDto>,
    retry: Option<RetryDto>,
    business_id: Option<String>,
    flow_key: Option<String>,
    success_codes: Option<Vec<u16>>,
    retry_codes: Option<Vec<u16>>,
    signing: Option<bool>,
    callbacks: Option<CallbacksDto>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CallbacksDto {
    on_success: Option<String>,
    on_failure: Option<String>,
}

/// A task's callback URLs (`callbacks.on_success`, `callbacks.on_failure`);
/// a cron task has none (its runs end, it does not).
fn parse_callbacks(dto: Option<CallbacksDto>, cron: bool) -> Result<super::Callbacks, FieldError> {
    let Some(dto) = dto else { return Ok(super::Callbacks::default()) };
    let url = |field: &str, u: Option<String>| {
        u.map(|u| TargetUrl::parse(&u).map_err(|rule| FieldError::invalid(field, rule))).transpose()
    };
    let callbacks = super::Callbacks {
        on_success: url("callbacks.on_success", dto.on_success)?,
        on_failure: url("callbacks.on_failure", dto.on_failure)?,
    };
    if cron && !callbacks.is_empty() {
        return Err(FieldError::invalid("callbacks", "a cron task cannot have callbacks (its runs end, it does not)"));
    }
    Ok(callbacks)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestDto {
    method: Option<String>,
    url: Option<String>,
    headers: Option<Map<String, Value>>,
    body: Option<String>,
    body_base64: Option<String>,
    json: Option<Value>,
    form: Option<Map<String, Value>>,
    auth: Option<AuthDto>,
    timeout_ms: Option<u64>,
    follow_redirects: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum AuthDto {
    Basic { username: String, password: String },
    Bearer { token: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleDto {
    delay: Option<Value>,
    at: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDto {
    max_attempts: Option<u32>,
    backoff: Option<BackoffDto>,
    intervals: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffDto {
    initial: Option<Value>,
    multiplier: Option<f64>,
    max: Option<Value>,
    jitter: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchDto {
    request: Option<PatchRequestDto>,
    retry: Option<RetryDto>,
    flow_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRequestDto {
    url: Option<String>,
    headers: Option<Map<String, Value>>,
    body: Option<String>,
    body_base64: Option<String>,
    json: Option<Value>,
    form: Option<Map<String, Value>>,
    auth: Option<AuthDto>,
    timeout_ms: Option<u64>,
}

/// Parses and validates a create-task request body at time `now`.
pub fn parse_create_task(bytes: &[u8], now: EpochMillis) -> Result<CreateTask, FieldError> {
    create_from(decode(bytes)?, now)
}

/// Parses one task of a batch (already JSON).
pub fn parse_create_value(v: Value, now: EpochMillis) -> Result<CreateTask, FieldError> {
    create_from(decode_value(v)?, now)
}

fn create_from(dto: CreateDto, now: EpochMillis) -> Result<CreateTask, FieldError> {
    let r = dto.request;
    let method = match r.method.as_deref() {
        None => return Err(FieldError::new("required", "request.method", "request.method is required")),
        Some(m) => HttpMethod::parse(m).ok_or_else(|| {
            FieldError::invalid(
                "request.method",
                format!("must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS (got `{m}`)"),
            )
        })?,
    };
    let url = match r.url.as_deref() {
        None => return Err(FieldError::new("required", "request.url", "request.url is required")),
        Some(u) => parse_url(u)?,
    };
    let mut headers = parse_headers(r.headers.unwrap_or_default())?;
    let body = parse_body(r.body, r.body_base64, r.json, r.form, &mut headers)?;
    let spec = RequestSpec {
        method,
        url,
        headers,
        body,
        auth: r.auth.map(parse_auth).transpose()?,
        timeout_ms: parse_timeout(r.timeout_ms)?.unwrap_or(RequestSpec::DEFAULT_TIMEOUT_MS),
        follow_redirects: r.follow_redirects.unwrap_or(false),
        rules: ResponseRules {
            success_codes: parse_codes("success_codes", dto.success_codes)?,
            retry_codes: parse_codes("retry_codes", dto.retry_codes)?,
        },
        flow_key: dto.flow_key.map(|k| parse_flow_key(&k)).transpose()?,
        unsigned: dto.signing == Some(false),
        trace: None,
        callbacks: super::Callbacks::default(),
    };
    let mut spec = spec;
    let business_id = dto.business_id.map(|b| parse_business_id(&b)).transpose()?;
    let schedule = dto.schedule.map(|s| parse_schedule(s, now)).transpose()?.unwrap_or(Schedule::Now);
    spec.callbacks = parse_callbacks(dto.callbacks, matches!(schedule, Schedule::Cron(_)))?;
    check_stored_size(&spec)?;
    Ok(CreateTask { spec, schedule, retry: dto.retry.map(parse_retry).transpose()?.unwrap_or_default(), business_id })
}

/// A task's `flow_key` name.
fn parse_flow_key(k: &str) -> Result<String, FieldError> {
    super::check_flow_name(k).map_err(|m| FieldError::new("invalid", "flow_key", m))?;
    Ok(k.to_owned())
}

/// Parses a PATCH body.
pub fn parse_patch(bytes: &[u8]) -> Result<PatchTask, FieldError> {
    let dto: PatchDto = decode(bytes)?;
    let mut patch = PatchTask::default();
    if let Some(r) = dto.request {
        patch.url = r.url.as_deref().map(parse_url).transpose()?;
        let mut headers = r.headers.map(parse_headers).transpose()?;
        let mut scratch = Vec::new();
        patch.body = parse_body(r.body, r.body_base64, r.json, r.form, headers.as_mut().unwrap_or(&mut scratch))?;
        patch.headers = headers;
        patch.auth = r.auth.map(parse_auth).transpose()?;
        patch.timeout_ms = parse_timeout(r.timeout_ms)?;
    }
    patch.retry = dto.retry.map(parse_retry).transpose()?;
    patch.flow_key = dto.flow_key.map(|k| parse_flow_key(&k)).transpose()?;
    if patch.is_empty() {
        return Err(FieldError::new(
            "required",
            FieldError::DOCUMENT,
            "nothing to change: give request fields, retry or flow_key",
        ));
    }
    Ok(patch)
}
