//! Parsing API input: bytes in, a valid domain value or a [`FieldError`]
//! naming the field and the rule out. Unknown fields are rejected so that a
//! typo never silently changes what is sent.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::schedule::parse_duration;
use super::{
    Auth, Body, CronSchedule, EpochMillis, HttpMethod, RequestSpec, ResponseRules, RetryPolicy, Schedule, TargetGuard,
    TargetUrl, parse_rfc3339,
};

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

const MAX_HEADERS: usize = 50;
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_BUSINESS_ID: usize = 128;
/// How far ahead a task may be scheduled.
pub const MAX_AHEAD: Duration = Duration::from_secs(366 * 86_400);
/// How far in the past an `at` may lie and still mean "now" (clock skew).
pub const PAST_GRACE: Duration = Duration::from_secs(60);
/// The longest wait a retry policy may ask for between two attempts.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(7 * 86_400);
/// Headers that describe one hop, not the message: the sender's HTTP client sets them.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDto {
    request: RequestDto,
    schedule: Option<ScheduleDto>,
    retry: Option<RetryDto>,
    business_id: Option<String>,
    success_codes: Option<Vec<u16>>,
    retry_codes: Option<Vec<u16>>,
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

/// Decodes a JSON request document into `T`, naming the field of any error.
/// The whole document is parsed first, so broken JSON is always reported as
/// such (`invalid_json`), never as a type error of a field read before it.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    decode_value(parse_document(bytes)?)
}

/// Parses a request body as JSON: broken JSON is `invalid_json` on the body.
pub fn parse_document(bytes: &[u8]) -> Result<Value, FieldError> {
    serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new("invalid_json", FieldError::DOCUMENT, format!("body is not valid JSON: {e}")))
}

/// Parses a time given as a query parameter or body field: RFC 3339, else
/// `invalid` on `field`.
pub fn parse_time(field: &str, text: &str) -> Result<EpochMillis, FieldError> {
    parse_rfc3339(text).ok_or_else(|| FieldError::new("invalid", field, format!("{field} must be an RFC 3339 time")))
}

fn decode_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, FieldError> {
    // serde would read a struct from an array too; the API's documents are objects.
    if !v.is_object() {
        return Err(FieldError::invalid(FieldError::DOCUMENT, "must be a JSON object"));
    }
    serde_path_to_error::deserialize(v).map_err(|e| serde_error(&e))
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
    };
    let business_id = dto.business_id.map(|b| parse_business_id(&b)).transpose()?;
    check_stored_size(&spec)?;
    Ok(CreateTask {
        spec,
        schedule: dto.schedule.map(|s| parse_schedule(s, now)).transpose()?.unwrap_or(Schedule::Now),
        retry: dto.retry.map(parse_retry).transpose()?.unwrap_or_default(),
        business_id,
    })
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
    if patch.is_empty() {
        return Err(FieldError::new(
            "required",
            FieldError::DOCUMENT,
            "nothing to change: give request fields or retry",
        ));
    }
    Ok(patch)
}

/// The most a stored request may take as JSON: DynamoDB refuses items over
/// 400 KB, and the request shares its item with the retry policy and schedule.
pub const MAX_STORED_REQUEST_BYTES: usize = 400_000;

/// Checks that a request fits in its stored item once serialised, whatever
/// each part's own limit let through (escaping grows a JSON or text body, and
/// credentials have no limit of their own); names the largest part.
pub fn check_stored_size(spec: &RequestSpec) -> Result<(), FieldError> {
    let total = json_len(spec);
    if total <= MAX_STORED_REQUEST_BYTES {
        return Ok(());
    }
    let parts = [
        ("request.body", json_len(&spec.body)),
        ("request.headers", json_len(&spec.headers)),
        ("request.auth", json_len(&spec.auth)),
        ("request.url", spec.url.as_str().len()),
    ];
    let field = parts.iter().max_by_key(|(_, n)| *n).map_or("request", |(f, _)| f);
    Err(FieldError::new(
        "too_large",
        field,
        format!(
            "the request takes {total} bytes once stored (escaping included), over the {MAX_STORED_REQUEST_BYTES} \
             bytes a task may hold; {field} is its largest part"
        ),
    ))
}

/// The length of a stored part as JSON.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

fn parse_codes(field: &str, codes: Option<Vec<u16>>) -> Result<Vec<u16>, FieldError> {
    let codes = codes.unwrap_or_default();
    if codes.len() > 50 || codes.iter().any(|c| !(100..=599).contains(c)) {
        return Err(FieldError::invalid(field, "must list at most 50 HTTP statuses (100 to 599)"));
    }
    Ok(codes)
}

/// The longest credential accepted (a JWT of a few KiB fits; headers total 16 KiB).
const MAX_CREDENTIAL: usize = 8192;

/// Credentials become an `Authorization` header: a bearer token must be a
/// header-safe single word (visible ASCII, no spaces), basic credentials
/// free of control characters, the user name without `:` (it ends the name).
fn parse_auth(a: AuthDto) -> Result<Auth, FieldError> {
    let control = |s: &str| s.chars().any(char::is_control);
    match a {
        AuthDto::Bearer { token } => {
            if token.is_empty() || token.len() > MAX_CREDENTIAL || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FieldError::invalid(
                    "request.auth.token",
                    "must be 1 to 8192 visible ASCII characters (no spaces, tabs or line breaks)",
                ));
            }
            Ok(Auth::Bearer { token })
        }
        AuthDto::Basic { username, password } => {
            if username.len() > MAX_CREDENTIAL || username.contains(':') || control(&username) {
                return Err(FieldError::invalid(
                    "request.auth.username",
                    "must be at most 8192 bytes without `:` or control characters",
                ));
            }
            if password.len() > MAX_CREDENTIAL || control(&password) {
                return Err(FieldError::invalid(
                    "request.auth.password",
                    "must be at most 8192 bytes without control characters",
                ));
            }
            Ok(Auth::Basic { username, password })
        }
    }
}

fn parse_url(u: &str) -> Result<TargetUrl, FieldError> {
    TargetUrl::parse(u).map_err(|rule| FieldError::invalid("request.url", rule))
}

/// Refuses a URL whose host is an address the guard blocks (`field` names
/// it: `request.url`). Names pass: they are judged on what they resolve to
/// when the request is sent.
pub fn check_target(url: &TargetUrl, guard: &TargetGuard, field: &str) -> Result<(), FieldError> {
    guard.check_url(url.url()).map_err(|b| FieldError::new("blocked_address", field, format!("{field} is {b}")))
}

fn parse_timeout(t: Option<u64>) -> Result<Option<u64>, FieldError> {
    match t {
        Some(t) if !(1..=RequestSpec::MAX_TIMEOUT_MS).contains(&t) => {
            Err(FieldError::invalid("request.timeout_ms", "must be between 1 and 30000"))
        }
        t => Ok(t),
    }
}

/// Validates a business id: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
pub fn parse_business_id(b: &str) -> Result<String, FieldError> {
    let ok = !b.is_empty()
        && b.len() <= MAX_BUSINESS_ID
        && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"._:@-".contains(&c));
    if ok {
        Ok(b.to_owned())
    } else {
        Err(FieldError::invalid("business_id", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -"))
    }
}

/// Validates an `Idempotency-Key` header value: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(k: &str) -> Result<String, FieldError> {
    if !k.is_empty() && k.len() <= 255 && k.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(k.to_owned())
    } else {
        Err(FieldError::new(
            "invalid",
            "Idempotency-Key",
            "Idempotency-Key header must be 1 to 255 visible ASCII characters",
        ))
    }
}

fn parse_body(
    text: Option<String>,
    b64: Option<String>,
    json: Option<Value>,
    form: Option<Map<String, Value>>,
    headers: &mut Vec<(String, String)>,
) -> Result<Option<Body>, FieldError> {
    let given = [text.is_some(), b64.is_some(), json.is_some(), form.is_some()].iter().filter(|g| **g).count();
    if given > 1 {
        return Err(FieldError::invalid("request.body", "give only one of body, body_base64, json, form"));
    }
    let mut default_type = |ct: &str| {
        if !headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type".to_owned(), ct.to_owned()));
        }
    };
    let body = if let Some(t) = text {
        Some(Body::Text(t))
    } else if let Some(b) = b64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|_| FieldError::invalid("request.body_base64", "must be standard base64"))?;
        Some(Body::Bytes(bytes))
    } else if let Some(j) = json {
        default_type("application/json");
        Some(Body::Text(j.to_string()))
    } else if let Some(f) = form {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &f {
            let Value::String(v) = v else {
                return Err(FieldError::invalid(&format!("request.form.{k}"), "must be a string"));
            };
            ser.append_pair(k, v);
        }
        default_type("application/x-www-form-urlencoded");
        Some(Body::Text(ser.finish()))
    } else {
        None
    };
    if body.as_ref().is_some_and(|b| b.len() > RequestSpec::MAX_BODY_BYTES) {
        return Err(FieldError::new(
            "too_large",
            "request.body",
            "request body must be at most 262144 bytes (256 KiB)",
        ));
    }
    Ok(body)
}

fn parse_headers(map: Map<String, Value>) -> Result<Vec<(String, String)>, FieldError> {
    if map.len() > MAX_HEADERS {
        return Err(FieldError::invalid("request.headers", "may hold at most 50 headers"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(map.len());
    let mut total = 0;
    for (name, value) in map {
        let field = format!("request.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(FieldError::new("invalid", field, "header name must be an HTTP token"));
        }
        if HOP_BY_HOP.contains(&lower.as_str()) {
            return Err(FieldError::new(
                "invalid",
                field,
                format!("`{name}` is a hop-by-hop header that Courier sets itself"),
            ));
        }
        if lower.starts_with("courier-") {
            return Err(FieldError::new("invalid", field, "Courier-* headers are set by Courier"));
        }
        if !seen.insert(lower.clone()) {
            return Err(FieldError::new("invalid", field, "header given twice (names are case-insensitive)"));
        }
        let Value::String(value) = value else {
            return Err(FieldError::new("invalid", field, "header value must be a string"));
        };
        // Visible ASCII, space and tab only: no line breaks, controls or bytes a receiver may read differently.
        if !value.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b)) {
            return Err(FieldError::new(
                "invalid",
                field,
                "header value must be visible ASCII, spaces or tabs (no line breaks or control characters)",
            ));
        }
        if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
            return Err(FieldError::new("invalid", field, "header value must not start or end with a space or tab"));
        }
        total += lower.len() + value.len();
        out.push((lower, value));
    }
    if total > MAX_HEADER_BYTES {
        return Err(FieldError::invalid("request.headers", "must total at most 16384 bytes"));
    }
    Ok(out)
}

fn parse_schedule(s: ScheduleDto, now: EpochMillis) -> Result<Schedule, FieldError> {
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

fn parse_retry(r: RetryDto) -> Result<RetryPolicy, FieldError> {
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

/// Turns a serde error into a field error: the path serde reached, plus the
/// field it names for missing or unknown fields.
fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let at = |p: &str| if p.is_empty() { FieldError::DOCUMENT.to_owned() } else { p.to_owned() };
    let inner = e.inner();
    let msg = inner.to_string();
    // serde_path_to_error's path ends at the parent for a missing field and
    // at the field itself for an unknown one.
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    if inner.is_syntax() || inner.is_eof() {
        return FieldError::new("invalid_json", FieldError::DOCUMENT, format!("body is not valid JSON: {msg}"));
    }
    if msg.starts_with("missing field") {
        let f = join(&quoted(&msg).unwrap_or_default());
        return FieldError::new("required", f.clone(), format!("{f} is required"));
    }
    if msg.starts_with("unknown field") {
        // The path already ends at the unknown field; its name may hold backticks.
        let f = if path.is_empty() { quoted(&msg).unwrap_or_default() } else { path };
        let f = if f.is_empty() { FieldError::DOCUMENT.to_owned() } else { f };
        return FieldError::new("unknown_field", f.clone(), format!("{f} is not a known field"));
    }
    let clean = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    let message = if path.is_empty() { format!("body: {clean}") } else { format!("{path}: {clean}") };
    FieldError::new("invalid", at(&path), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMillis = 1_800_000_000_000;

    fn ok(body: &str) -> CreateTask {
        parse_create_task(body.as_bytes(), NOW).expect("valid")
    }

    fn err(body: &str) -> FieldError {
        parse_create_task(body.as_bytes(), NOW).expect_err("should be rejected")
    }

    #[test]
    fn accepts_a_minimal_request_with_defaults() {
        let t = ok(r#"{"request":{"method":"post","url":"https://example.com/h"}}"#);
        assert_eq!(t.spec.method, HttpMethod::Post);
        assert_eq!(t.spec.timeout_ms, 10_000);
        assert!(t.spec.headers.is_empty());
        assert_eq!(t.spec.body, None);
        assert_eq!(t.schedule, Schedule::Now);
        assert_eq!(t.retry, RetryPolicy::default());
    }

    #[test]
    fn json_and_form_bodies_set_their_content_type_unless_given() {
        let t = ok(r#"{"request":{"method":"POST","url":"http://h/x","json":{"a":[1,2]}}}"#);
        assert_eq!(t.spec.body, Some(Body::Text(r#"{"a":[1,2]}"#.into())));
        assert_eq!(t.spec.headers, vec![("content-type".to_owned(), "application/json".to_owned())]);
        let t = ok(r#"{"request":{"method":"POST","url":"http://h/x","form":{"a":"1 2","b":"&"}}}"#);
        assert_eq!(t.spec.body, Some(Body::Text("a=1+2&b=%26".into())));
        assert_eq!(t.spec.headers[0].1, "application/x-www-form-urlencoded");
        let t = ok(
            r#"{"request":{"method":"POST","url":"http://h/x","headers":{"Content-Type":"application/vnd+json"},"json":1}}"#,
        );
        assert_eq!(t.spec.headers, vec![("content-type".to_owned(), "application/vnd+json".to_owned())]);
        let t = ok(r#"{"request":{"method":"POST","url":"http://h/x","body_base64":"AAEC/w=="}}"#);
        assert_eq!(t.spec.body, Some(Body::Bytes(vec![0, 1, 2, 255])));
    }

    #[test]
    fn auth_is_parsed_and_masked() {
        let t = ok(
            r#"{"request":{"method":"GET","url":"http://h/","auth":{"type":"basic","username":"u","password":"p"}}}"#,
        );
        let auth = t.spec.auth.expect("auth");
        assert_eq!(auth.header_value(), "Basic dTpw");
        assert_eq!(auth.masked()["password"], "***");
        assert!(!format!("{auth:?}").contains("\"p\""));
    }

    #[test]
    fn schedules_resolve_delays_and_times() {
        let t = ok(r#"{"request":{"method":"GET","url":"http://h/"},"schedule":{"delay":"90s"}}"#);
        assert_eq!(t.schedule, Schedule::At { at: NOW + 90_000 });
        // NOW is 2027-01-15T08:00:00Z; 18:00 at +08:00 is two hours later.
        let t = ok(r#"{"request":{"method":"GET","url":"http://h/"},"schedule":{"at":"2027-01-15T18:00:00+08:00"}}"#);
        assert_eq!(t.schedule, Schedule::At { at: NOW + 7_200_000 });
        // Within the grace, a time just past means now.
        let t = ok(r#"{"request":{"method":"GET","url":"http://h/"},"schedule":{"at":"2027-01-15T07:59:30Z"}}"#);
        assert_eq!(t.schedule, Schedule::Now);
        let t = ok(
            r#"{"request":{"method":"GET","url":"http://h/"},"schedule":{"cron":"0 10 * * *","timezone":"Asia/Shanghai"}}"#,
        );
        assert!(matches!(t.schedule, Schedule::Cron(c) if c.timezone == "Asia/Shanghai"));
    }

    #[test]
    fn names_the_field_and_rule_of_each_rejection() {
        let past = "2020-01-01T00:00:00Z";
        let far = "2099-01-01T00:00:00Z";
        let cases: Vec<(String, &str, &str)> = vec![
            ("{".into(), "invalid_json", "body"),
            ("[]".into(), "invalid", "body"),
            ("{}".into(), "required", "request"),
            (r#"{"request":{"url":"https://e.com"}}"#.into(), "required", "request.method"),
            (r#"{"request":{"method":"GET"}}"#.into(), "required", "request.url"),
            (r#"{"request":{"method":"FETCH","url":"https://e.com"}}"#.into(), "invalid", "request.method"),
            (r#"{"request":{"method":"GET","url":"ftp://e.com"}}"#.into(), "invalid", "request.url"),
            (r#"{"request":{"method":"GET","url":42}}"#.into(), "invalid", "request.url"),
            (r#"{"request":{"method":"GET","url":"https://e.com","verb":1}}"#.into(), "unknown_field", "request.verb"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"extra":1}"#.into(), "unknown_field", "extra"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"Host":"x"}}}"#.into(), "invalid", "request.headers.Host"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"bad name":"x"}}}"#.into(), "invalid", "request.headers.bad name"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"a":1}}}"#.into(), "invalid", "request.headers.a"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"a":"x\ny"}}}"#.into(), "invalid", "request.headers.a"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"Courier-Attempt":"9"}}}"#.into(), "invalid", "request.headers.Courier-Attempt"),
            (r#"{"request":{"method":"GET","url":"https://e.com","timeout_ms":0}}"#.into(), "invalid", "request.timeout_ms"),
            (r#"{"request":{"method":"GET","url":"https://e.com","timeout_ms":30001}}"#.into(), "invalid", "request.timeout_ms"),
            (r#"{"request":{"method":"GET","url":"https://e.com","body":"a","json":{}}}"#.into(), "invalid", "request.body"),
            (r#"{"request":{"method":"GET","url":"https://e.com","body_base64":"@@"}}"#.into(), "invalid", "request.body_base64"),
            (r#"{"request":{"method":"GET","url":"https://e.com","form":{"a":1}}}"#.into(), "invalid", "request.form.a"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"digest"}}}"#.into(), "invalid", "request.auth.type"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"bearer"}}}"#.into(), "required", "request.auth.token"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{}}"#.into(), "invalid", "schedule"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"delay":"5y"}}"#.into(), "invalid", "schedule.delay"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"delay":"400d"}}"#.into(), "invalid", "schedule.delay"),
            (format!(r#"{{"request":{{"method":"GET","url":"https://e.com"}},"schedule":{{"at":"{past}"}}}}"#), "invalid", "schedule.at"),
            (format!(r#"{{"request":{{"method":"GET","url":"https://e.com"}},"schedule":{{"at":"{far}"}}}}"#), "invalid", "schedule.at"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"at":"tomorrow"}}"#.into(), "invalid", "schedule.at"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"delay":"5s","at":"2027-01-01T00:00:00Z"}}"#.into(), "invalid", "schedule"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"cron":"* * *"}}"#.into(), "invalid", "schedule.cron"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"cron":"0 1 * * *","timezone":"Nowhere/City"}}"#.into(), "invalid", "schedule.timezone"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"schedule":{"delay":"5s","timezone":"UTC"}}"#.into(), "invalid", "schedule.timezone"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"max_attempts":21}}"#.into(), "invalid", "retry.max_attempts"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"max_attempts":0}}"#.into(), "invalid", "retry.max_attempts"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"intervals":["1m"],"max_attempts":3}}"#.into(), "invalid", "retry.intervals"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"intervals":["1m","8d"]}}"#.into(), "invalid", "retry.intervals[1]"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"backoff":{"multiplier":0.5}}}"#.into(), "invalid", "retry.backoff.multiplier"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry":{"backoff":{"jitter":"some"}}}"#.into(), "invalid", "retry.backoff.jitter"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"business_id":""}"#.into(), "invalid", "business_id"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"business_id":"a/b"}"#.into(), "invalid", "business_id"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"success_codes":[99]}"#.into(), "invalid", "success_codes"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"retry_codes":["404"]}"#.into(), "invalid", "retry_codes[0]"),
            (r#"{"request":{"method":"GET","url":"https://e.com","follow_redirects":"yes"}}"#.into(), "invalid", "request.follow_redirects"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"bearer","token":"abc\ndef"}}}"#.into(), "invalid", "request.auth.token"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"bearer","token":"abc def"}}}"#.into(), "invalid", "request.auth.token"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"bearer","token":""}}}"#.into(), "invalid", "request.auth.token"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"bearer","token":"tökén"}}}"#.into(), "invalid", "request.auth.token"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"basic","username":"a:b","password":"p"}}}"#.into(), "invalid", "request.auth.username"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"basic","username":"a\r","password":"p"}}}"#.into(), "invalid", "request.auth.username"),
            (r#"{"request":{"method":"GET","url":"https://e.com","auth":{"type":"basic","username":"a","password":"p\u0000"}}}"#.into(), "invalid", "request.auth.password"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X-Foo":"a\u0000b"}}}"#.into(), "invalid", "request.headers.X-Foo"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X-Foo":"a\rb"}}}"#.into(), "invalid", "request.headers.X-Foo"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X-Foo":" padded"}}}"#.into(), "invalid", "request.headers.X-Foo"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X-Foo":"padded\t"}}}"#.into(), "invalid", "request.headers.X-Foo"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X-Foo":"é"}}}"#.into(), "invalid", "request.headers.X-Foo"),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"X:Foo":"v"}}}"#.into(), "invalid", "request.headers.X:Foo"),
        ];
        for (body, code, field) in &cases {
            let e = err(body);
            assert_eq!((e.code, e.field.as_str()), (*code, *field), "for {body}: {e:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn rejects_oversized_bodies_and_too_many_headers() {
        let big = "a".repeat(RequestSpec::MAX_BODY_BYTES + 1);
        let e =
            err(&serde_json::json!({"request": {"method": "POST", "url": "https://e.com", "body": big}}).to_string());
        assert_eq!((e.code, e.field.as_str()), ("too_large", "request.body"));
        let headers: Map<_, _> = (0..51).map(|i| (format!("x-h{i}"), Value::String("v".into()))).collect();
        let e =
            err(&serde_json::json!({"request": {"method": "GET", "url": "https://e.com", "headers": headers}})
                .to_string());
        assert_eq!(e.field, "request.headers");
    }

    #[test]
    fn retry_policies_parse_with_defaults() {
        let t = ok(r#"{"request":{"method":"GET","url":"http://h/"},"retry":{"intervals":["1m","5m","30m","2h"]}}"#);
        assert_eq!(t.retry, RetryPolicy::Intervals { intervals_ms: vec![60_000, 300_000, 1_800_000, 7_200_000] });
        let t = ok(r#"{"request":{"method":"GET","url":"http://h/"},"retry":{"intervals":[]}}"#);
        assert_eq!(t.retry.max_attempts(), 1);
        let t = ok(
            r#"{"request":{"method":"GET","url":"http://h/"},"retry":{"max_attempts":6,"backoff":{"initial":"2s","multiplier":3,"max":"10m","jitter":"none"}}}"#,
        );
        assert_eq!(
            t.retry,
            RetryPolicy::Backoff {
                max_attempts: 6,
                initial_ms: 2_000,
                multiplier: 3.0,
                max_ms: 600_000,
                jitter: false
            }
        );
    }

    #[test]
    fn header_safe_credentials_and_header_values_are_accepted() {
        let t = ok(
            r#"{"request":{"method":"GET","url":"http://h/","headers":{"X-A":"a b\tc"},"auth":{"type":"bearer","token":"eyJ.a-b_c~d+e/f=="}}}"#,
        );
        assert_eq!(t.spec.auth.map(|a| a.header_value()), Some("Bearer eyJ.a-b_c~d+e/f==".into()));
        let t = ok(
            r#"{"request":{"method":"GET","url":"http://h/","auth":{"type":"basic","username":"zoë","password":"p:w d"}}}"#,
        );
        assert!(t.spec.auth.is_some());
        let e = parse_patch(br#"{"request":{"auth":{"type":"bearer","token":"a\nb"}}}"#).expect_err("newline");
        assert_eq!((e.code, e.field.as_str()), ("invalid", "request.auth.token"));
    }

    #[test]
    fn a_literal_address_the_guard_blocks_is_refused_naming_the_url() {
        let guard = TargetGuard::default();
        let url = |s: &str| TargetUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        for blocked in [
            "http://127.0.0.1:8080/",
            "http://127.1:8080/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
        ] {
            let e = check_target(&url(blocked), &guard, "request.url").expect_err(blocked);
            assert_eq!((e.code, e.field.as_str()), ("blocked_address", "request.url"), "{blocked}");
            assert!(e.message.contains("blocked: "), "{}", e.message);
        }
        for allowed in ["https://hooks.example.com/x", "http://localhost:8080/", "http://93.184.216.34/"] {
            assert_eq!(check_target(&url(allowed), &guard, "request.url"), Ok(()), "{allowed}");
        }
        let local = TargetGuard::new(super::super::TargetPolicy::LocalOnly, vec![]);
        assert_eq!(check_target(&url("http://127.0.0.1:9/"), &local, "request.url"), Ok(()));
        assert!(check_target(&url("http://93.184.216.34/"), &local, "request.url").is_err());
    }

    #[test]
    fn a_patch_needs_something_to_change() {
        assert_eq!(parse_patch(b"{}").expect_err("empty").code, "required");
        let p = parse_patch(br#"{"request":{"url":"https://new.example.com/x","timeout_ms":500}}"#).expect("valid");
        assert_eq!(p.url.map(|u| u.as_str().to_owned()), Some("https://new.example.com/x".into()));
        assert_eq!(p.timeout_ms, Some(500));
        assert_eq!(parse_patch(br#"{"request":{"method":"GET"}}"#).expect_err("no method").field, "request.method");
    }
}

/// Properties of request validation over generated input: it never panics,
/// and every rejection names a field that the input or the schema has.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::test_runner::Config;
    use serde_json::json;

    use super::*;

    const NOW: EpochMillis = 1_800_000_000_000;

    /// Every field path the create and patch schemas know; `*` is any one
    /// segment (a header or form name, an array index).
    const SCHEMA: &[&str] = &[
        "request",
        "request.method",
        "request.url",
        "request.headers",
        "request.headers.*",
        "request.body",
        "request.body_base64",
        "request.json",
        "request.form",
        "request.form.*",
        "request.auth",
        "request.auth.type",
        "request.auth.username",
        "request.auth.password",
        "request.auth.token",
        "request.timeout_ms",
        "request.follow_redirects",
        "schedule",
        "schedule.delay",
        "schedule.at",
        "schedule.cron",
        "schedule.timezone",
        "retry",
        "retry.max_attempts",
        "retry.backoff",
        "retry.backoff.initial",
        "retry.backoff.multiplier",
        "retry.backoff.max",
        "retry.backoff.jitter",
        "retry.intervals",
        "retry.intervals[*]",
        "business_id",
        "success_codes",
        "success_codes[*]",
        "retry_codes",
        "retry_codes[*]",
    ];

    /// Whether `field` is a schema path. Header and form names may hold dots,
    /// so a `*` after those maps swallows the rest.
    fn in_schema(field: &str) -> bool {
        SCHEMA.iter().any(|p| match p.split_once('*') {
            None => *p == field,
            Some((head, "")) if head.ends_with('.') => field.len() > head.len() && field.starts_with(head),
            Some((head, tail)) => field
                .strip_prefix(head)
                .and_then(|rest| rest.strip_suffix(tail))
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())),
        })
    }

    /// Every path of a JSON document, spelt as errors spell them.
    fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    out.push(p.clone());
                    paths(child, &p, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let p = format!("{at}[{i}]");
                    out.push(p.clone());
                    paths(child, &p, out);
                }
            }
            _ => {}
        }
    }

    /// The property itself: a rejection names a field, the document or a path
    /// of the schema or of the input, and says something.
    fn names_a_field(e: &FieldError, input: Option<&Value>) -> Result<(), TestCaseError> {
        prop_assert!(!e.field.is_empty(), "no field: {e:?}");
        prop_assert!(!e.message.is_empty(), "no message: {e:?}");
        let mut known = Vec::new();
        if let Some(v) = input {
            paths(v, "", &mut known);
        }
        prop_assert!(
            e.field == FieldError::DOCUMENT || in_schema(&e.field) || known.contains(&e.field),
            "field `{}` is neither in the schema nor in the input: {e:?}",
            e.field
        );
        Ok(())
    }

    /// Strings with anything in them: control characters, quotes, unicode.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
            prop::sample::select(vec![
                "",
                "GET",
                "post",
                "https://e.invalid/x",
                "http://[::1]:1/",
                "ftp://x",
                "90s",
                "-5s",
                "1e400",
                "2027-01-15T18:00:00Z",
                "0 10 * * *",
                "Asia/Shanghai",
                "full",
                "basic",
                "bearer",
                "a\nb",
                "\u{0}",
                "\u{202e}",
                "😀",
                "%00",
                "\\u0000",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "request", "method", "url", "headers", "body", "body_base64", "json", "form", "auth", "type",
                "username", "password", "token", "timeout_ms", "follow_redirects", "schedule", "delay", "at",
                "cron", "timezone", "retry", "max_attempts", "backoff", "initial", "multiplier", "max", "jitter",
                "intervals", "business_id", "success_codes", "retry_codes",
            ])
            .prop_map(str::to_owned),
            1 => text(),
        ]
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![0i64, 1, -1, 99, 100, 599, 600, 30_000, 30_001, i64::MAX, i64::MIN])
                .prop_map(Value::from),
        ]
    }

    /// Any JSON value, a few levels deep, biased to the schema's own keys.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            number(),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A create body using every part of the schema.
    fn full_body() -> Value {
        json!({
            "request": {
                "method": "POST",
                "url": "https://hooks.invalid/x?y=1",
                "headers": {"x-trace": "t1", "content-type": "application/json"},
                "json": {"a": [1, 2], "b": "c"},
                "auth": {"type": "bearer", "token": "t0k"},
                "timeout_ms": 500,
                "follow_redirects": false,
            },
            "schedule": {"delay": "90s"},
            "retry": {"max_attempts": 3, "backoff": {"initial": "1s", "multiplier": 2, "max": "1m", "jitter": "full"}},
            "business_id": "order-1",
            "success_codes": [200, 202],
            "retry_codes": [404],
        })
    }

    /// Replaces (or with `None` removes) the value at `path` of `doc`.
    fn set_at(doc: &mut Value, path: &[String], to: Option<Value>) {
        let Some((last, parents)) = path.split_last() else { return };
        let mut at = doc;
        for p in parents {
            at = match at {
                Value::Object(m) => match m.get_mut(p) {
                    Some(v) => v,
                    None => return,
                },
                _ => return,
            };
        }
        if let Value::Object(m) = at {
            match to {
                Some(v) => {
                    m.insert(last.clone(), v);
                }
                None => {
                    m.remove(last);
                }
            }
        }
    }

    /// The object paths of the full body, as key lists.
    fn body_paths() -> Vec<Vec<String>> {
        fn walk(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if let Value::Object(m) = v {
                for (k, child) in m {
                    at.push(k.clone());
                    out.push(at.clone());
                    walk(child, at, out);
                    at.pop();
                }
            }
        }
        let mut out = Vec::new();
        walk(&full_body(), &mut Vec::new(), &mut out);
        out
    }

    /// Raw JSON tokens a `Value` cannot hold: numbers past every Rust type,
    /// escapes of control characters, lone surrogates, deep nesting.
    fn raw_token() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "0.0000000000000000000000000001",
            "-0",
            "\"\\u0000\\u001f\\u007f\"",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "\"\\u202e\\ufeff\"",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            "{\"\":{\"\":{\"\":null}}}",
            "tru",
            "\"unterminated",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(Config { cases: 1_000, ..Config::default() })]

        #[test]
        fn any_json_document_is_accepted_or_rejected_naming_a_field(doc in value()) {
            let bytes = serde_json::to_vec(&doc).expect("a Value serialises");
            if let Err(e) = parse_create_task(&bytes, NOW) {
                names_a_field(&e, Some(&doc))?;
            }
            if let Err(e) = parse_patch(&bytes) {
                names_a_field(&e, Some(&doc))?;
            }
        }

        #[test]
        fn any_document_under_request_is_accepted_or_rejected_naming_a_field(
            request in prop::collection::btree_map(key(), value(), 0..8),
        ) {
            let doc = json!({"request": Value::Object(request.into_iter().collect())});
            if let Err(e) = parse_create_value(doc.clone(), NOW) {
                names_a_field(&e, Some(&doc))?;
            }
        }

        #[test]
        fn a_valid_body_with_one_field_changed_is_accepted_or_rejected_naming_a_field(
            path in prop::sample::select(body_paths()),
            to in prop::option::weighted(0.9, value()),
        ) {
            let mut doc = full_body();
            set_at(&mut doc, &path, to);
            let bytes = serde_json::to_vec(&doc).expect("a Value serialises");
            if let Err(e) = parse_create_task(&bytes, NOW) {
                names_a_field(&e, Some(&doc))?;
            }
        }

        #[test]
        fn a_valid_body_with_a_raw_token_spliced_in_never_panics_and_names_a_field(
            path in prop::sample::select(body_paths()),
            token in raw_token(),
        ) {
            let mut doc = full_body();
            set_at(&mut doc, &path, Some(Value::from("__HOLE__")));
            let text = doc.to_string().replacen("\"__HOLE__\"", &token, 1);
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            if let Err(e) = parse_create_task(text.as_bytes(), NOW) {
                names_a_field(&e, parsed.as_ref())?;
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_name_the_document(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            if let Err(e) = parse_create_task(&bytes, NOW) {
                names_a_field(&e, parsed.as_ref())?;
            }
        }
    }

    #[test]
    fn the_full_body_is_valid_and_the_checker_knows_its_fields() {
        let doc = full_body();
        parse_create_task(doc.to_string().as_bytes(), NOW).expect("the full body is valid");
        assert!(in_schema("request.headers.x.y") && in_schema("retry.intervals[3]") && in_schema("request.url"));
        assert!(!in_schema("request.nope") && !in_schema("retry.intervals[x]") && !in_schema("request.headers."));
    }
}

#[cfg(test)]
mod stored_size {
    use serde_json::json;

    use super::*;

    const NOW: EpochMillis = 1_800_000_000_000;

    fn parse(doc: &Value) -> Result<CreateTask, FieldError> {
        parse_create_task(doc.to_string().as_bytes(), NOW)
    }

    #[test]
    fn every_part_at_its_own_limit_still_fits_in_one_item() {
        // 256 KiB of bytes (stored as base64) plus 16 KiB of headers of quotes (escaped).
        let b64 = base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; RequestSpec::MAX_BODY_BYTES]);
        let headers: Map<String, Value> =
            (0..4).map(|i| (format!("x-h{i}"), Value::from("\"".repeat(4_090)))).collect();
        let url = format!("https://e.invalid/{}", "a".repeat(TargetUrl::MAX_LEN - 20));
        let t = parse(&json!({"request": {"method": "PUT", "url": url, "headers": headers, "body_base64": b64}}))
            .expect("the documented maxima together are accepted");
        assert!(serde_json::to_vec(&t.spec).expect("json").len() <= MAX_STORED_REQUEST_BYTES);
    }

    #[test]
    fn a_json_body_that_escaping_grows_past_the_item_limit_is_too_large_naming_the_body() {
        // 87,000 empty strings: 261,000 bytes as sent, ~435,000 once escaped into the stored request.
        let doc = json!({"request": {"method": "POST", "url": "https://e.invalid/", "json": vec![""; 87_000]}});
        let e = parse(&doc).expect_err("too large once stored");
        assert_eq!((e.code, e.field.as_str()), ("too_large", "request.body"), "{e:?}");
    }

    #[test]
    fn a_credential_too_large_to_store_is_refused_naming_it() {
        // Credentials are capped at 8 KiB each, so none reaches the item limit.
        let doc = json!({"request": {"method": "GET", "url": "https://e.invalid/",
            "auth": {"type": "basic", "username": "u", "password": "p".repeat(MAX_STORED_REQUEST_BYTES)}}});
        let e = parse(&doc).expect_err("too large to store");
        assert_eq!((e.code, e.field.as_str()), ("invalid", "request.auth.password"), "{e:?}");
    }
}
