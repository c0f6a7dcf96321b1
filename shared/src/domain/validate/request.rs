//! The request a task sends: URL, headers, body, auth, timeout, and the
//! limits that keep a stored request within its item.

use std::collections::HashSet;

use base64::Engine;
use serde_json::{Map, Value};

use super::{AuthDto, FieldError};
use crate::domain::{Auth, Body, RequestSpec, TargetGuard, TargetUrl};

pub(super) const MAX_HEADERS: usize = 50;
pub(super) const MAX_HEADER_BYTES: usize = 16 * 1024;
pub(super) const MAX_BUSINESS_ID: usize = 128;
/// Headers that describe one hop, not the message: the sender's HTTP client sets them.
pub(super) const HOP_BY_HOP: [&str; 9] = [
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
pub(super) fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

pub(super) fn parse_codes(field: &str, codes: Option<Vec<u16>>) -> Result<Vec<u16>, FieldError> {
    let codes = codes.unwrap_or_default();
    if codes.len() > 50 || codes.iter().any(|c| !(100..=599).contains(c)) {
        return Err(FieldError::invalid(field, "must list at most 50 HTTP statuses (100 to 599)"));
    }
    Ok(codes)
}

/// The longest credential accepted (a JWT of a few KiB fits; headers total 16 KiB).
pub(super) const MAX_CREDENTIAL: usize = 8192;

/// Credentials become an `Authorization` header: a bearer token must be a
/// header-safe single word (visible ASCII, no spaces), basic credentials
/// free of control characters, the user name without `:` (it ends the name).
pub(super) fn parse_auth(a: AuthDto) -> Result<Auth, FieldError> {
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

pub(super) fn parse_url(u: &str) -> Result<TargetUrl, FieldError> {
    TargetUrl::parse(u).map_err(|rule| FieldError::invalid("request.url", rule))
}

/// Refuses a URL whose host is an address the guard blocks (`field` names
/// it: `request.url`). Names pass: they are judged on what they resolve to
/// when the request is sent.
pub fn check_target(url: &TargetUrl, guard: &TargetGuard, field: &str) -> Result<(), FieldError> {
    guard.check_url(url.url()).map_err(|b| FieldError::new("blocked_address", field, format!("{field} is {b}")))
}

/// [`check_target`] for every URL a new task names: its request's and its callbacks'.
pub fn check_targets(spec: &crate::domain::RequestSpec, guard: &TargetGuard) -> Result<(), FieldError> {
    check_target(&spec.url, guard, "request.url")?;
    if let Some(u) = &spec.callbacks.on_success {
        check_target(u, guard, "callbacks.on_success")?;
    }
    if let Some(u) = &spec.callbacks.on_failure {
        check_target(u, guard, "callbacks.on_failure")?;
    }
    Ok(())
}

pub(super) fn parse_timeout(t: Option<u64>) -> Result<Option<u64>, FieldError> {
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

pub(super) fn parse_body(
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

pub(super) fn parse_headers(map: Map<String, Value>) -> Result<Vec<(String, String)>, FieldError> {
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
