//! The audit log end to end on the local stack: credential, policy and task
//! operations recorded with actor, tenant, resource, source address and
//! outcome; failed authentications counted per address and minute; the
//! tenant and admin views, filters and paging of `GET /v1/audit` and
//! `courier audit`; what an entry costs and that it holds no secret.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestStack, bin_dir, sdk, stack_options};

fn actions(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect()
}

/// DynamoDB's item size: attribute names plus values (strings and numbers as text).
fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.len().div_ceil(2) + 1,
                    AttributeValue::Bool(_) => 1,
                    other => panic!("unexpected attribute {other:?}"),
                }
        })
        .sum()
}

#[tokio::test]
async fn operations_are_audited_with_who_what_where_and_outcome_and_each_side_sees_its_own() {
    let mut opts = stack_options("audit");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let tenant = stack.tenant.clone();
    let my_key = stack.api.key.clone().expect("key");
    let my_key_id = my_key.split('_').nth(1).expect("key id").to_owned();

    // Tenant operations: a task cancelled, a refused retry, a flow policy set.
    let task = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": "https://audit.example.invalid/h"}, "schedule": {"delay": "1h"}}))
        .await;
    let id = task["id"].as_str().expect("id");
    assert_eq!(stack.api.delete(&format!("/v1/tasks/{id}")).await.0, 200);
    assert_eq!(stack.api.post(&format!("/v1/tasks/{id}/retry"), "").await.0, 409);
    assert_eq!(stack.api.put("/v1/flows/billing", r#"{"rate":"5/s"}"#).await.0, 201);
    // Admin operations: a key rotated (created, then the old one revoked).
    let (status, new_key) = stack.admin.post(&format!("/v1/tenants/{tenant}/keys"), "").await;
    assert_eq!(status, 201);
    let new_id = new_key["id"].as_str().expect("id");
    let new_secret = new_key["key"].as_str().expect("key").to_owned();
    let (status, _) = stack.admin.delete(&format!("/v1/tenants/{tenant}/keys/{my_key_id}")).await;
    assert_eq!(status, 200);
    let me = stack.api.with_key(Some(&new_secret));
    // An API instance that read the key before may use it for COURIER_AUTH_CACHE_MS (5 s).
    tokio::time::sleep(std::time::Duration::from_millis(5_300)).await;
    // Failed authentications: three with the revoked key, from one address.
    for _ in 0..3 {
        assert_eq!(stack.api.get("/v1/tasks").await.0, 401);
    }
    // Another tenant's operation, invisible to this one.
    let (_, other_key) = stack.admin.new_tenant("other", json!({})).await;
    let other = stack.api.with_key(Some(&other_key));
    assert_eq!(other.post("/v1/tasks/tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3/pause", "").await.0, 404);

    // The tenant's view: its own entries only, newest first.
    let (status, page) = me.get("/v1/audit").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        actions(&page),
        ["key.revoke", "key.create", "flow.put", "task.retry", "task.cancel", "tenant.create"],
        "{page}"
    );
    let entries = page["entries"].as_array().expect("entries");
    let cancel = &entries[4];
    assert_eq!(cancel["actor"], format!("key:{my_key_id}"));
    assert_eq!(cancel["tenant"], tenant.as_str());
    assert_eq!(cancel["resource"], format!("tasks/{id}"));
    assert_eq!(cancel["source_ip"], "127.0.0.1", "the front passes the peer address as sourceIp");
    assert_eq!((cancel["outcome"].as_str(), cancel["status"].as_u64()), (Some("ok"), Some(200)));
    assert_eq!((entries[3]["outcome"].as_str(), entries[3]["status"].as_u64()), (Some("rejected"), Some(409)));
    assert_eq!(entries[1]["actor"], "admin");
    assert_eq!(entries[1]["resource"], format!("tenants/{tenant}/keys/{new_id}"));
    assert_eq!(entries[0]["resource"], format!("tenants/{tenant}/keys/{my_key_id}"));

    // The admin's view: every tenant's and the service-wide entries.
    let (status, all) = stack.admin.get("/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{all}");
    let all_actions = actions(&all);
    assert!(all_actions.contains(&"task.pause".to_owned()), "{all}");
    let failed: Vec<&Value> =
        all["entries"].as_array().expect("entries").iter().filter(|e| e["action"] == "auth.failed").collect();
    assert_eq!(failed.iter().map(|e| e["count"].as_u64().expect("count")).sum::<u64>(), 3, "{all}");
    assert!(failed.len() <= 2, "one entry per address and minute: {failed:?}");
    assert_eq!(failed[0]["actor"], format!("anonymous:{my_key_id}"));
    assert_eq!(failed[0]["tenant"], Value::Null);
    // ?tenant= narrows the admin's view; a tenant may not use it.
    let (_, theirs) = stack.admin.get(&format!("/v1/audit?tenant={tenant}")).await;
    assert_eq!(actions(&theirs), actions(&page));
    assert_eq!(me.get(&format!("/v1/audit?tenant={tenant}")).await.0, 403);

    // Filters, the time window and paging.
    let (_, only) = stack.admin.get("/v1/audit?action=key.create").await;
    assert_eq!(actions(&only), ["key.create"]);
    let (_, by) = me.get(&format!("/v1/audit?actor=key:{my_key_id}")).await;
    assert_eq!(actions(&by), ["flow.put", "task.retry", "task.cancel"]);
    let (_, on) = me.get(&format!("/v1/audit?resource=tasks/{id}")).await;
    assert_eq!(actions(&on), ["task.cancel"]);
    let (_, future) = me.get("/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(actions(&future), Vec::<String>::new());
    let (_, past) = stack.admin.get("/v1/audit?until=2000-01-01T00:00:00Z").await;
    assert_eq!(actions(&past), Vec::<String>::new());
    for viewer in [&me, &stack.admin] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let (status, p) = viewer.get(&format!("/v1/audit?limit=2{q}")).await;
            assert_eq!(status, 200, "{p}");
            seen.extend(actions(&p));
            match p["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let (_, whole) = viewer.get("/v1/audit?limit=500").await;
        assert_eq!(seen, actions(&whole), "pages of 2 list the same entries in the same order");
    }
    let (status, e) = me.get("/v1/audit?cursor=bm90LWEtY3Vyc29y").await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("cursor")));

    // Stored: one small item per entry, with a TTL, and no secret anywhere.
    let db = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = &stack.outputs().names.table;
    let items = db
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("AUDIT#{tenant}")))
        .send()
        .await
        .expect("query")
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 6);
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    for item in &items {
        let ttl: i64 = item["expires_at"].as_n().expect("ttl").parse().expect("number");
        assert!((ttl - (now_s + 90 * 86_400)).abs() < 600, "kept 90 days by default: {ttl}");
        let size = item_size(item);
        assert!(size < 1024, "one write unit: {size} bytes");
    }
    let largest = items.iter().map(item_size).max().expect("items");
    eprintln!(
        "audit item size: largest {largest} bytes of {} entries (1 WCU + 1 WCU for the day index entry)",
        items.len()
    );
    let (_, scan_all) = stack.admin.get("/v1/audit?limit=500").await;
    let dump = format!("{items:?}{scan_all}");
    for secret in [my_key.as_str(), new_secret.as_str(), other_key.as_str(), ADMIN_KEY, "Bearer"] {
        assert!(!dump.contains(secret), "the audit log holds a secret");
    }

    // `courier audit`: table and JSON output.
    // tokio's Command: a blocking wait would stall the in-process front the CLI calls.
    let run = |args: &[&str]| {
        tokio::process::Command::new(bin_dir().join("courier"))
            .args(args)
            .env("COURIER_URL", &stack.local.api_url)
            .env("COURIER_API_KEY", &new_secret)
            .env("COURIER_CONFIG", "/nonexistent")
            .output()
    };
    let out = run(&["audit", "--action", "task.cancel"]).await.expect("courier runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ACTOR") && text.contains("task.cancel") && text.contains(&format!("tasks/{id}")), "{text}");
    eprintln!("courier audit:\n{text}");
    let out = run(&["audit", "--limit", "3", "-o", "json"]).await.expect("courier runs");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(actions(&doc), ["key.revoke", "key.create", "flow.put"]);
}
