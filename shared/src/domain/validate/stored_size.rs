//! The stored-size limit of a request, at its edge.

use base64::Engine;
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
    let headers: Map<String, Value> = (0..4).map(|i| (format!("x-h{i}"), Value::from("\"".repeat(4_090)))).collect();
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
