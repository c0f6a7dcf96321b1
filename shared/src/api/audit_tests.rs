//! The audit middleware and `GET /v1/audit` on the in-memory store: what an
//! entry holds (and never holds), who sees which entries, and how failed
//! authentications are counted.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::api::test_world::{ADMIN, World, world};
use crate::domain::AuditQuery;
use crate::ports::AuditLog;

impl World {
    async fn call_from(&self, key: Option<&str>, method: &str, uri: &str, ip: &str) -> (StatusCode, Value) {
        self.request(key, method, uri, None, Some(ip)).await
    }

    async fn all(&self) -> Vec<crate::domain::AuditEntry> {
        self.store.audit_page(&AuditQuery::default(), 100, None).await.expect("page").items
    }
}

fn key_id(secret: &str) -> &str {
    crate::domain::key_id_of(secret).expect("a key's id")
}

#[tokio::test]
async fn a_refused_cancel_is_recorded_with_actor_tenant_resource_address_and_outcome() {
    let w = world().await;
    let task = "tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3";
    let (status, _) = w.call_from(Some(&w.a.1), "DELETE", &format!("/v1/tasks/{task}"), "192.0.2.7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let entries = w.all().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.actor, format!("key:{}", key_id(&w.a.1)));
    assert_eq!(e.tenant.as_ref(), Some(&w.a.0));
    assert_eq!(e.action, "task.cancel");
    assert_eq!(e.resource, format!("tasks/{task}"));
    assert_eq!(e.source_ip.as_deref(), Some("192.0.2.7"));
    assert_eq!((e.outcome.as_str(), e.status), ("rejected", 404));
}

#[tokio::test]
async fn key_creation_names_the_new_key_and_no_entry_holds_a_secret() {
    let w = world().await;
    let (status, created) = w.call_from(Some(ADMIN), "POST", &format!("/v1/tenants/{}/keys", w.a.0), "192.0.2.1").await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["key"].as_str().expect("key");
    let id = created["id"].as_str().expect("id");
    let (status, _) =
        w.call_from(Some(ADMIN), "DELETE", &format!("/v1/tenants/{}/keys/{id}", w.a.0), "192.0.2.1").await;
    assert_eq!(status, StatusCode::OK);
    let entries = w.all().await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.revoke", "key.create"]);
    assert!(entries.iter().all(|e| e.actor == "admin" && e.tenant.as_ref() == Some(&w.a.0)));
    assert_eq!(entries[1].resource, format!("tenants/{}/keys/{id}", w.a.0));
    let dump = format!("{entries:?}");
    for secret in [secret, ADMIN, &w.a.1] {
        assert!(!dump.contains(secret), "an entry holds a secret: {dump}");
    }
}

#[tokio::test]
async fn failed_authentications_of_one_address_in_one_minute_are_one_counted_entry() {
    let w = world().await;
    for _ in 0..5 {
        let (status, _) = w.call_from(Some("ck_abc123_wrong"), "GET", "/v1/tasks", "198.51.100.9").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    w.call_from(None, "POST", "/v1/tasks/purge", "198.51.100.10").await;
    let entries = w.all().await;
    let failed: Vec<_> = entries.iter().filter(|e| e.action == "auth.failed").collect();
    // Two addresses; unless the minute turned between calls, 5 + 1.
    assert!(failed.len() == 2 || failed.len() == 3, "{failed:?}");
    let first = failed.iter().filter(|e| e.source_ip.as_deref() == Some("198.51.100.9"));
    assert_eq!(first.clone().map(|e| e.count).sum::<u64>(), 5);
    assert!(first.clone().all(|e| e.actor == "anonymous:abc123" && e.tenant.is_none()));
    assert!(!format!("{entries:?}").contains("wrong"));
}

#[tokio::test]
async fn a_tenant_reads_only_its_entries_and_the_admin_reads_everyone_s() {
    let w = world().await;
    let task = "tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3";
    w.call_from(Some(&w.a.1), "POST", &format!("/v1/tasks/{task}/retry"), "192.0.2.1").await;
    w.call_from(Some(&w.b.1), "POST", &format!("/v1/tasks/{task}/pause"), "192.0.2.2").await;
    let (status, page) = w.call_from(Some(&w.a.1), "GET", "/v1/audit", "192.0.2.1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let actions: Vec<&str> =
        page["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["task.retry"]);
    let (_, page) = w.call_from(Some(ADMIN), "GET", "/v1/audit?action=task.pause", "192.0.2.1").await;
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["entries"][0]["tenant"], json!(w.b.0));
    let (status, _) = w.call_from(Some(&w.a.1), "GET", &format!("/v1/audit?tenant={}", w.b.0), "192.0.2.1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, err) = w.call_from(Some(ADMIN), "GET", "/v1/audit?since=yesterday", "192.0.2.1").await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("since")));
    let (status, err) = w.call_from(Some(ADMIN), "GET", "/v1/audit?limit=0", "192.0.2.1").await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")));
}

#[tokio::test]
async fn reads_are_not_audited() {
    let w = world().await;
    w.call_from(Some(&w.a.1), "GET", "/v1/tasks", "192.0.2.1").await;
    w.call_from(Some(ADMIN), "GET", &format!("/v1/tenants/{}", w.a.0), "192.0.2.1").await;
    assert!(w.all().await.is_empty());
}
