//! The request document as a whole: JSON in, and serde's errors turned into
//! field errors (one code per rule: `invalid_json`, `required`,
//! `unknown_field`, `invalid`); also the one reading of a time field.

use serde_json::Value;

use super::FieldError;
use crate::domain::{EpochMillis, parse_rfc3339};

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

pub(super) fn decode_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, FieldError> {
    // serde would read a struct from an array too; the API's documents are objects.
    if !v.is_object() {
        return Err(FieldError::invalid(FieldError::DOCUMENT, "must be a JSON object"));
    }
    serde_path_to_error::deserialize(v).map_err(|e| serde_error(&e))
}

/// Turns a serde error into a field error: the path serde reached, plus the
/// field it names for missing or unknown fields.
pub(super) fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
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
