//! Properties of request validation over generated input: it never panics,
//! and every rejection names a field that the input or the schema has.

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
    "flow_key",
    "success_codes",
    "success_codes[*]",
    "retry_codes",
    "retry_codes[*]",
    "signing",
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
            "intervals", "business_id", "flow_key", "success_codes", "retry_codes", "signing",
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
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), number(), text().prop_map(Value::from),];
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
        "signing": false,
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
