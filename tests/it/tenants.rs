//! Tenants and keys: authentication, isolation between tenants, key rotation
//! and revocation, disabled tenants, and quotas.

use serde_json::json;

use crate::helpers::{Api, TestStack, stack_options};

fn create_body(url: &str) -> String {
    json!({"request": {"method": "GET", "url": url}, "schedule": {"delay": "1h"}}).to_string()
}

#[tokio::test]
async fn calls_need_a_valid_key_and_admin_calls_the_admin_key() {
    let mut opts = stack_options("auth");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let anonymous = stack.api.with_key(None);
    let (status, e) = anonymous.get("/v1/tasks").await;
    assert_eq!((status, e["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = stack.api.with_key(Some("ck_nope_nope")).get("/v1/tasks").await;
    assert_eq!(status, 401);
    let (status, _, _) = anonymous.call("GET", "/v1/tasks", None, &[("authorization", "Basic abc")]).await;
    assert_eq!(status, 401);
    // Health and the API description are public.
    assert_eq!(anonymous.get("/v1/health").await.0, 200);
    let (status, spec) = anonymous.get("/v1/openapi.json").await;
    assert_eq!((status, spec["openapi"].as_str()), (200, Some("3.1.0")));
    // A tenant key is not an admin key, and the admin key is not a tenant key.
    assert_eq!(stack.api.post("/v1/tenants", r#"{"name":"x"}"#).await.0, 403);
    assert_eq!(stack.admin.get("/v1/tasks").await.0, 401);
    let (status, e) = stack.admin.post("/v1/tenants", r#"{"name":""}"#).await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("name")));
    let (status, e) = stack.admin.post("/v1/tenants", r#"{"name":"x","max_active_tasks":0}"#).await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("max_active_tasks")));
    assert_eq!(stack.admin.get("/v1/tenants/tnt_missing").await.0, 404);
}

#[tokio::test]
async fn a_tenant_never_sees_or_touches_another_tenants_tasks() {
    let mut opts = stack_options("iso");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let (_, other_key) = stack.admin.new_tenant("other", json!({})).await;
    let other = stack.api.with_key(Some(&other_key));
    let mine = stack
        .api
        .create_task(json!({"request": {"method": "GET", "url": "https://e.com/a"}, "schedule": {"delay": "1h"}, "business_id": "shared-id"}))
        .await;
    let id = mine["id"].as_str().expect("id");
    for (method, path) in [
        ("GET", format!("/v1/tasks/{id}")),
        ("GET", format!("/v1/tasks/{id}/attempts")),
        ("DELETE", format!("/v1/tasks/{id}")),
        ("POST", format!("/v1/tasks/{id}/pause")),
        ("GET", "/v1/tasks/by-business-id/shared-id".to_owned()),
        ("DELETE", "/v1/tasks/by-business-id/shared-id".to_owned()),
    ] {
        let (status, _, e) = other.call(method, &path, None, &[]).await;
        assert_eq!((status, e["error"]["code"].as_str()), (404, Some("not_found")), "{method} {path}");
    }
    let (status, _) = other.patch(&format!("/v1/tasks/{id}"), r#"{"request":{"timeout_ms":5}}"#).await;
    assert_eq!(status, 404);
    let (_, list) = other.get("/v1/tasks").await;
    assert_eq!(list["tasks"], json!([]));
    // The same business id is free for another tenant.
    let theirs = other
        .create_task(json!({"request": {"method": "GET", "url": "https://e.com/b"}, "schedule": {"delay": "1h"}, "business_id": "shared-id"}))
        .await;
    assert_ne!(theirs["id"], mine["id"]);
    let (_, still) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(still["status"], "scheduled");
}

#[tokio::test]
async fn keys_rotate_with_overlap_and_disabled_tenants_are_refused() {
    let mut opts = stack_options("keys");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let old = stack.api.key.clone().expect("key");
    let (status, new_key) = stack.admin.post(&format!("/v1/tenants/{}/keys", stack.tenant), "").await;
    assert_eq!(status, 201);
    let new = stack.api.with_key(new_key["key"].as_str());
    // Both keys work during the overlap.
    assert_eq!(stack.api.get("/v1/tasks").await.0, 200);
    assert_eq!(new.get("/v1/tasks").await.0, 200);
    let (_, tenant) = stack.admin.get(&format!("/v1/tenants/{}", stack.tenant)).await;
    let old_id = tenant["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| old.contains(k["id"].as_str().unwrap_or("-")))
        .and_then(|k| k["id"].as_str())
        .expect("old key listed")
        .to_owned();
    assert!(tenant.to_string().find(&old).is_none(), "keys are never shown again");
    let (status, _) = stack.admin.delete(&format!("/v1/tenants/{}/keys/{old_id}", stack.tenant)).await;
    assert_eq!(status, 200);
    // Each API instance reuses a key and tenant it read for COURIER_AUTH_CACHE_MS
    // (5 s): a change holds on every instance once that has passed.
    let aged = || tokio::time::sleep(std::time::Duration::from_millis(5_300));
    aged().await;
    for _ in 0..4 {
        assert_eq!(stack.api.get("/v1/tasks").await.0, 401, "revoked, on every instance");
    }
    assert_eq!(new.get("/v1/tasks").await.0, 200);

    let (status, _) = stack.admin.patch(&format!("/v1/tenants/{}", stack.tenant), r#"{"enabled":false}"#).await;
    assert_eq!(status, 200);
    aged().await;
    for _ in 0..4 {
        let (status, e) = new.get("/v1/tasks").await;
        assert_eq!((status, e["error"]["code"].as_str()), (403, Some("forbidden")));
    }
    stack.admin.patch(&format!("/v1/tenants/{}", stack.tenant), r#"{"enabled":true}"#).await;
    aged().await;
    assert_eq!(new.get("/v1/tasks").await.0, 200);
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_and_free_up() {
    let mut opts = stack_options("quota");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let (_, key) =
        stack.admin.new_tenant("small", json!({"max_active_tasks": 2, "create_rate_per_second": 1000})).await;
    let small = Api::new(&stack.local.api_url, Some(&key));
    let a = small.post("/v1/tasks", &create_body("https://e.com/1")).await;
    let b = small.post("/v1/tasks", &create_body("https://e.com/2")).await;
    assert_eq!((a.0, b.0), (201, 201));
    let (status, headers, e) = small.call("POST", "/v1/tasks", Some(&create_body("https://e.com/3")), &[]).await;
    assert_eq!((status, e["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{e}");
    assert!(headers.get("retry-after").is_some());
    // A cancelled task frees its slot (given back by the stream counter, within moments).
    let (status, _) = small.delete(&format!("/v1/tasks/{}", a.1["id"].as_str().expect("id"))).await;
    assert_eq!(status, 200);
    let freed = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        (small.post("/v1/tasks", &create_body("https://e.com/4")).await.0 == 201).then_some(())
    })
    .await;
    assert!(freed.is_some(), "the cancelled task's slot is given back");

    let (_, key) = stack.admin.new_tenant("slow", json!({"create_rate_per_second": 2})).await;
    let slow = Api::new(&stack.local.api_url, Some(&key));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let (status, headers, _) =
            slow.call("POST", "/v1/tasks", Some(&create_body(&format!("https://e.com/{i}"))), &[]).await;
        if status == 429 {
            retry_after = headers.get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "a burst of 6 at 2/s is limited: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 201).count() >= 2);
    assert_eq!(retry_after.as_deref(), Some("1"));
}

/// Keys expire: one year by default, or when their creation says; an expired
/// key gets 401 `key_expired`; the admin sees keys close to expiry in
/// `GET /v1/keys/expiring` and `courier status`.
#[tokio::test]
async fn keys_expire_and_the_admin_sees_the_ones_close_to_expiry() {
    let mut opts = stack_options("expiry");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let keys_path = format!("/v1/tenants/{}/keys", stack.tenant);
    let now = courier::domain::now_millis();

    // The tenant's first (and only) key: one year.
    let (_, tenant) = stack.admin.get(&format!("/v1/tenants/{}", stack.tenant)).await;
    assert_eq!(tenant["keys"].as_array().map(Vec::len), Some(1), "{tenant}");
    let first = courier::domain::parse_time("expires_at", tenant["keys"][0]["expires_at"].as_str().expect("expiry"))
        .expect("a time");
    assert!((first - now - courier::domain::DEFAULT_KEY_LIFETIME_MS).abs() < 600_000, "one year: {tenant}");

    // Bad lifetimes name their field.
    for (body, field) in [
        (r#"{"expires_in":"0s"}"#, "expires_in"),
        (r#"{"expires_in":"soon"}"#, "expires_in"),
        (r#"{"expires_in":"2000d"}"#, "expires_in"),
        (r#"{"expires_at":"2001-01-01T00:00:00Z"}"#, "expires_at"),
        (r#"{"expires_at":"tomorrow"}"#, "expires_at"),
        (r#"{"expires_in":"1d","expires_at":"2099-01-01T00:00:00Z"}"#, "expires_at"),
        (r#"{"expire_in":"1d"}"#, "expire_in"),
    ] {
        let (status, e) = stack.admin.post(&keys_path, body).await;
        assert_eq!((status, e["error"]["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }

    // A short-lived key and a 20-day one.
    let (status, short) = stack.admin.post(&keys_path, r#"{"expires_in":"3s"}"#).await;
    assert_eq!(status, 201, "{short}");
    let (status, month) = stack.admin.post(&keys_path, r#"{"expires_in":"20d"}"#).await;
    assert_eq!(status, 201, "{month}");
    let short_key = stack.api.with_key(short["key"].as_str());
    assert_eq!(short_key.get("/v1/tasks").await.0, 200, "works until it expires");
    let (_, tenant) = stack.admin.get(&format!("/v1/tenants/{}", stack.tenant)).await;
    let listed = tenant["keys"].as_array().expect("keys").iter().find(|k| k["id"] == short["id"]).cloned();
    assert_eq!(listed.map(|k| k["expires_at"].clone()), Some(short["expires_at"].clone()), "{tenant}");

    // The admin's list of keys close to expiry: soonest first, the year-long key not in it.
    let (status, soon) = stack.admin.get("/v1/keys/expiring?within=30d").await;
    assert_eq!(status, 200, "{soon}");
    let ids: Vec<&str> = soon["keys"].as_array().expect("keys").iter().filter_map(|k| k["id"].as_str()).collect();
    let (short_id, month_id) = (short["id"].as_str().expect("id"), month["id"].as_str().expect("id"));
    let at = |id: &str| ids.iter().position(|i| *i == id);
    assert!(at(short_id) < at(month_id) && at(short_id).is_some(), "{soon}");
    assert!(soon["keys"].as_array().expect("keys").iter().all(|k| k["tenant"].is_string()));
    let original = stack.api.key.clone().expect("key");
    let yearly = tenant["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| original.contains(k["id"].as_str().unwrap_or("-")))
        .expect("the first key is listed");
    assert!(at(yearly["id"].as_str().expect("id")).is_none(), "a year away is not close: {soon}");
    let (_, sooner) = stack.admin.get("/v1/keys/expiring?within=1d").await;
    assert!(!sooner.to_string().contains(month_id), "20 days is not within 1 day: {sooner}");
    assert_eq!(stack.api.get("/v1/keys/expiring").await.0, 403, "admin only");
    let (status, e) = stack.admin.get("/v1/keys/expiring?within=soon").await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("within")));

    // `courier status` with the admin key shows them.
    let out = tokio::process::Command::new(crate::helpers::bin_dir().join("courier"))
        .arg("status")
        .env("COURIER_URL", &stack.local.api_url)
        .env("COURIER_API_KEY", stack.admin.key.as_deref().expect("admin key"))
        .env("COURIER_CONFIG", "/nonexistent")
        .env_remove("COURIER_QUEUE_URL")
        .env_remove("COURIER_DLQ_URL")
        .output()
        .await
        .expect("courier runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("API keys expiring within 30 days") && text.contains(short_id) && text.contains(month_id));

    // Past its expiry: 401 key_expired, naming the time; other keys still work.
    crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        let (status, e) = short_key.get("/v1/tasks").await;
        (status == 401).then_some(e)
    })
    .await
    .map(|e| {
        assert_eq!(e["error"]["code"], "key_expired", "{e}");
        assert!(
            e["error"]["message"].as_str().is_some_and(|m| m.contains(short["expires_at"].as_str().unwrap_or("-")))
        );
    })
    .expect("the short key expired");
    assert_eq!(stack.api.get("/v1/tasks").await.0, 200);
}

/// The admin's tenant walk (metrics, keys close to expiry) reads the tenant
/// registry; a tenant missing from it (created before it existed) joins it
/// on its next admin change.
#[tokio::test]
async fn a_tenant_older_than_the_registry_joins_it_on_its_next_admin_change() {
    let mut opts = stack_options("registry");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let (tenant, _) = stack.admin.new_tenant("old", json!({})).await;
    let listed = |v: &serde_json::Value| v.to_string().contains(&tenant);
    let (_, keys) = stack.admin.get("/v1/keys/expiring?within=400d").await;
    assert!(listed(&keys), "a new tenant is in the registry: {keys}");
    // As if it had been created before the registry: its entry is gone.
    let ddb = aws_sdk_dynamodb::Client::new(&crate::helpers::sdk().await);
    ddb.delete_item()
        .table_name(&stack.outputs().names.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("TENANTS".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(tenant.clone()))
        .send()
        .await
        .expect("delete");
    let (_, keys) = stack.admin.get("/v1/keys/expiring?within=400d").await;
    assert!(!listed(&keys), "{keys}");
    let (status, _) = stack.admin.patch(&format!("/v1/tenants/{tenant}"), "{}").await;
    assert_eq!(status, 200);
    let (_, keys) = stack.admin.get("/v1/keys/expiring?within=400d").await;
    assert!(listed(&keys), "registered again by the PATCH: {keys}");
}
