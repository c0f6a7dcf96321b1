//! Unit tests of request validation, by example.

use super::*;
use crate::domain::TargetGuard;

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
    let t =
        ok(r#"{"request":{"method":"GET","url":"http://h/","auth":{"type":"basic","username":"u","password":"p"}}}"#);
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
        (r#"{"request":{"method":"GET","url":"https://e.com"},"signing":"no"}"#.into(), "invalid", "signing"),
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
    let e = err(&serde_json::json!({"request": {"method": "POST", "url": "https://e.com", "body": big}}).to_string());
    assert_eq!((e.code, e.field.as_str()), ("too_large", "request.body"));
    let headers: Map<_, _> = (0..51).map(|i| (format!("x-h{i}"), Value::String("v".into()))).collect();
    let e =
        err(&serde_json::json!({"request": {"method": "GET", "url": "https://e.com", "headers": headers}}).to_string());
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
        RetryPolicy::Backoff { max_attempts: 6, initial_ms: 2_000, multiplier: 3.0, max_ms: 600_000, jitter: false }
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
