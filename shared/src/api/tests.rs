//! Router-level tests: the route list against the router and the OpenAPI
//! document, and the answers given before any handler runs.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;

use super::*;

/// A router on the in-memory fakes: every request here is answered before
/// any store call (routing, or 401 without a key), and a test that reached
/// one would see an empty store, not a network error.
fn offline_router() -> Router {
    router(Arc::new(AppState {
        store: crate::testing::FakeStore::new(),
        queue: crate::testing::FakeQueue::default(),
        scheduler: crate::testing::FakeScheduler::default(),
        limits: Default::default(),
        auth_cache: Default::default(),
        settings: ApiSettings {
            sqs_delay_max_s: 900,
            schedule_early_s: 60,
            admin_key: None,
            guard: Default::default(),
            flow_breaker: Default::default(),
        },
    }))
}

fn spec_routes() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let routes: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(spec_routes(), routes);
}

#[tokio::test]
async fn every_listed_route_is_served_and_other_methods_are_not() {
    let app = offline_router();
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        let concrete = path
            .replace("{id}", "tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3")
            .replace("{business_id}", "order-1")
            .replace("{key_id}", "k1");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).expect("method"))
                .uri(&concrete)
                .body(Body::empty())
                .expect("request");
            let status = app.clone().oneshot(req).await.expect("response").status();
            let listed = ROUTES.contains(&(method, path));
            if listed {
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is listed but answered {status}"
                );
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not listed");
            }
        }
    }
}

/// Sends one request to the offline router; returns status and the JSON body.
async fn answer(method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value, String) {
    let req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri)
        .body(Body::from(body))
        .expect("request");
    let resp = offline_router().oneshot(req).await.expect("response");
    let status = resp.status();
    let ct = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let doc = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {uri}: body is not JSON ({e})"));
    (status, doc, ct)
}

#[tokio::test]
async fn every_rejection_before_a_handler_is_the_json_error_shape_naming_what_it_is_about() {
    // (method, uri, body, status, code, field)
    type Case = (&'static str, &'static str, Vec<u8>, u16, &'static str, Option<&'static str>);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/tasks", vec![b' '; MAX_REQUEST_BYTES + 1], 413, "too_large", Some("body")),
        ("POST", "/v1/tasks/batch", vec![b'{'; MAX_REQUEST_BYTES + 1], 413, "too_large", Some("body")),
        ("GET", "/v1/tasks/%FF%FE", vec![], 400, "invalid", Some("id")),
        ("GET", "/v1/tenants/%C3%28/keys", vec![], 405, "method_not_allowed", None),
        ("DELETE", "/v1/tenants/t/keys/%FF", vec![], 400, "invalid", Some("key_id")),
        ("GET", "/v2/nothing", vec![], 404, "not_found", None),
        ("PUT", "/v1/tasks", vec![], 405, "method_not_allowed", None),
    ];
    for (method, uri, body, status, code, field) in cases {
        let (got, doc, ct) = answer(method, uri, body).await;
        assert_eq!(got.as_u16(), status, "{method} {uri}: {doc}");
        assert_eq!(ct, "application/json", "{method} {uri}");
        assert_eq!(doc["error"]["code"], code, "{method} {uri}: {doc}");
        assert_eq!(doc["error"]["field"].as_str(), field, "{method} {uri}: {doc}");
        assert!(doc["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {uri}: {doc}");
    }
}

#[tokio::test]
async fn task_routes_need_a_bearer_key() {
    let app = offline_router();
    // The console's page and files are public: its script signs in with a key.
    let public = |p: &str| p.ends_with("health") || p.ends_with("openapi.json") || p.starts_with("/admin");
    for (method, path) in ROUTES.iter().filter(|(_, p)| !public(p)) {
        let uri = path.replace("{id}", "x").replace("{business_id}", "y").replace("{key_id}", "z");
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
}

#[tokio::test]
async fn the_console_is_served_with_a_policy_that_allows_only_this_origin() {
    for (path, ct) in [
        ("/admin", "text/html; charset=utf-8"),
        ("/admin/console.js", "text/javascript; charset=utf-8"),
        ("/admin/console.css", "text/css; charset=utf-8"),
    ] {
        let req = Request::builder().uri(path).body(Body::empty()).expect("request");
        let resp = offline_router().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], ct, "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().expect("text");
        assert!(csp.starts_with("default-src 'self'; script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    let req = Request::builder().uri("/admin/other.js").body(Body::empty()).expect("request");
    assert_eq!(offline_router().oneshot(req).await.expect("response").status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_the_admin_key_may_act_as_a_tenant() {
    // No admin key is configured here: any key naming a tenant is refused before a lookup.
    let req = Request::builder()
        .uri("/v1/tasks")
        .header("authorization", "Bearer key_0123456789abcdef0123456789abcdef")
        .header("x-courier-tenant", "tnt_x")
        .body(Body::empty())
        .expect("request");
    let resp = offline_router().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
