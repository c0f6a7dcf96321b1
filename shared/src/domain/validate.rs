//! Parsing a create-task request: bytes in, a valid [`CreateTask`] or a
//! [`FieldError`] naming the field and the rule out. Unknown fields are
//! rejected so that a typo never silently changes what is sent.

use std::collections::HashSet;

use serde::Deserialize;

use super::{Body, HttpMethod, RequestSpec, TargetUrl};

/// A validated create request.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateTask {
    pub spec: RequestSpec,
}

/// A rejected input: which field, which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Machine-readable rule: `invalid_json`, `required`, `invalid`, `unknown_field`, `too_large`…
    pub code: &'static str,
    /// Dotted path of the offending field (empty for the document itself).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code, field: field.into(), message: message.into() }
    }
}

/// Header limits.
const MAX_HEADERS: usize = 50;
const MAX_HEADER_VALUE: usize = 8 * 1024;
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
struct CreateTaskDto {
    request: RequestDto,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestDto {
    method: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    body: Option<String>,
    timeout_ms: Option<u64>,
}

/// Parses and validates a create-task request body.
pub fn parse_create_task(bytes: &[u8]) -> Result<CreateTask, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let dto: CreateTaskDto = serde_path_to_error::deserialize(de).map_err(|e| serde_error(&e))?;
    let r = dto.request;

    let method = match r.method.as_deref() {
        None => return Err(FieldError::new("required", "request.method", "request.method is required")),
        Some(m) => HttpMethod::parse(m).ok_or_else(|| {
            FieldError::new(
                "invalid",
                "request.method",
                format!("request.method must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS (got `{m}`)"),
            )
        })?,
    };
    let url = match r.url.as_deref() {
        None => {
            return Err(FieldError::new("required", "request.url", "request.url is required"));
        }
        Some(u) => TargetUrl::parse(u)
            .map_err(|rule| FieldError::new("invalid", "request.url", format!("request.url {rule}")))?,
    };
    let headers = parse_headers(r.headers.unwrap_or_default())?;
    let timeout_ms = match r.timeout_ms {
        None => RequestSpec::DEFAULT_TIMEOUT_MS,
        Some(t) if (1..=RequestSpec::MAX_TIMEOUT_MS).contains(&t) => t,
        Some(_) => {
            return Err(FieldError::new(
                "invalid",
                "request.timeout_ms",
                "request.timeout_ms must be between 1 and 30000",
            ));
        }
    };
    Ok(CreateTask { spec: RequestSpec { method, url, headers, body: r.body.map(Body::Text), timeout_ms } })
}

fn parse_headers(map: serde_json::Map<String, serde_json::Value>) -> Result<Vec<(String, String)>, FieldError> {
    if map.len() > MAX_HEADERS {
        return Err(FieldError::new("invalid", "request.headers", "request.headers may hold at most 50 headers"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(map.len());
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
        if !seen.insert(lower.clone()) {
            return Err(FieldError::new("invalid", field, "header given twice (names are case-insensitive)"));
        }
        let serde_json::Value::String(value) = value else {
            return Err(FieldError::new("invalid", field, "header value must be a string"));
        };
        if value.len() > MAX_HEADER_VALUE || http::HeaderValue::from_str(&value).is_err() {
            return Err(FieldError::new(
                "invalid",
                field,
                "header value must be visible ASCII or spaces, at most 8192 bytes",
            ));
        }
        out.push((lower, value));
    }
    Ok(out)
}

/// Turns a serde error into a field error: the path serde reached, plus the
/// field it names for missing or unknown fields.
fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
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
        return FieldError::new("invalid_json", "", format!("body is not valid JSON: {msg}"));
    }
    if msg.starts_with("missing field") {
        let f = join(&quoted(&msg).unwrap_or_default());
        return FieldError::new("required", f.clone(), format!("{f} is required"));
    }
    if msg.starts_with("unknown field") {
        let f = join(&quoted(&msg).unwrap_or_default());
        return FieldError::new("unknown_field", f.clone(), format!("{f} is not a known field"));
    }
    let clean = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    let field = if path.is_empty() { String::new() } else { path };
    let message = if field.is_empty() { clean } else { format!("{field}: {clean}") };
    FieldError::new("invalid", field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> FieldError {
        parse_create_task(body.as_bytes()).expect_err("should be rejected")
    }

    #[test]
    fn accepts_a_minimal_request_with_defaults() {
        let t = parse_create_task(br#"{"request":{"method":"post","url":"https://example.com/h"}}"#).expect("valid");
        assert_eq!(t.spec.method, HttpMethod::Post);
        assert_eq!(t.spec.timeout_ms, 10_000);
        assert!(t.spec.headers.is_empty());
        assert_eq!(t.spec.body, None);
    }

    #[test]
    fn keeps_headers_lowercased_and_the_body() {
        let t = parse_create_task(
            br#"{"request":{"method":"PUT","url":"http://h/x","headers":{"X-Id":"1"},"body":"hi","timeout_ms":500}}"#,
        )
        .expect("valid");
        assert_eq!(t.spec.headers, vec![("x-id".to_owned(), "1".to_owned())]);
        assert_eq!(t.spec.body, Some(Body::Text("hi".into())));
        assert_eq!(t.spec.timeout_ms, 500);
    }

    #[test]
    fn names_the_field_and_rule_of_each_rejection() {
        let cases: &[(&str, &str, &str)] = &[
            ("{", "invalid_json", ""),
            ("[]", "invalid", ""),
            ("{}", "required", "request"),
            (r#"{"request":{"url":"https://e.com"}}"#, "required", "request.method"),
            (r#"{"request":{"method":"GET"}}"#, "required", "request.url"),
            (r#"{"request":{"method":"FETCH","url":"https://e.com"}}"#, "invalid", "request.method"),
            (r#"{"request":{"method":"GET","url":"ftp://e.com"}}"#, "invalid", "request.url"),
            (r#"{"request":{"method":"GET","url":42}}"#, "invalid", "request.url"),
            (r#"{"request":{"method":"GET","url":"https://e.com","verb":1}}"#, "unknown_field", "request.verb"),
            (r#"{"request":{"method":"GET","url":"https://e.com"},"extra":1}"#, "unknown_field", "extra"),
            (
                r#"{"request":{"method":"GET","url":"https://e.com","headers":{"Host":"x"}}}"#,
                "invalid",
                "request.headers.Host",
            ),
            (
                r#"{"request":{"method":"GET","url":"https://e.com","headers":{"bad name":"x"}}}"#,
                "invalid",
                "request.headers.bad name",
            ),
            (r#"{"request":{"method":"GET","url":"https://e.com","headers":{"a":1}}}"#, "invalid", "request.headers.a"),
            (
                r#"{"request":{"method":"GET","url":"https://e.com","headers":{"a":"x\ny"}}}"#,
                "invalid",
                "request.headers.a",
            ),
            (r#"{"request":{"method":"GET","url":"https://e.com","timeout_ms":0}}"#, "invalid", "request.timeout_ms"),
            (
                r#"{"request":{"method":"GET","url":"https://e.com","timeout_ms":30001}}"#,
                "invalid",
                "request.timeout_ms",
            ),
        ];
        for (body, code, field) in cases {
            let e = err(body);
            assert_eq!((e.code, e.field.as_str()), (*code, *field), "for {body}: {e:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn rejects_more_than_fifty_headers() {
        let headers: serde_json::Map<_, _> =
            (0..51).map(|i| (format!("x-h{i}"), serde_json::Value::String("v".into()))).collect();
        let body = serde_json::json!({"request": {"method": "GET", "url": "https://e.com", "headers": headers}});
        let e = err(&body.to_string());
        assert_eq!(e.field, "request.headers");
    }
}
