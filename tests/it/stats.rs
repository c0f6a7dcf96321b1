//! Status counts stay equal to the truth after a concurrent burst of creates,
//! deliveries, failures and cancels (kept from the table's stream; no scan).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Target, TestStack, eventually, stack_options};

#[tokio::test]
async fn counts_equal_the_truth_after_a_concurrent_burst() {
    let ok = Target::start(&[]).await;
    let bad = Target::start(&[404; 8]).await;
    let mut opts = stack_options("stats");
    opts.api_instances = 3;
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let single = |url: String, delay: Option<&str>| {
        let mut body = json!({"request": {"method": "POST", "url": url}});
        if let Some(d) = delay {
            body["schedule"] = json!({"delay": d});
        }
        async move { api.post("/v1/tasks", &body.to_string()).await }
    };
    let batch: Vec<_> =
        (0..10).map(|i| json!({"request": {"method": "POST", "url": ok.url(&format!("/b{i}"))}})).collect();
    let batch_body = json!({"tasks": batch}).to_string();
    let (batch_resp, singles) = tokio::join!(
        api.post("/v1/tasks/batch", &batch_body),
        futures_util::future::join_all(
            (0..6)
                .map(|i| single(ok.url(&format!("/s{i}")), None))
                .chain((0..8).map(|i| single(bad.url(&format!("/x{i}")), None)))
                .chain((0..6).map(|i| single(ok.url(&format!("/later{i}")), Some("1h")))),
        ),
    );
    assert_eq!(batch_resp.1["created"], 10);
    let later: Vec<String> = singles
        .iter()
        .filter(|(s, t)| *s == 201 && t["status"] == "scheduled")
        .map(|(_, t)| t["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(later.len(), 6);
    let paths: Vec<String> = later[..4].iter().map(|id| format!("/v1/tasks/{id}")).collect();
    let cancels = futures_util::future::join_all(paths.iter().map(|p| api.delete(p))).await;
    assert!(cancels.iter().all(|(s, _)| *s == 200));

    let truth = || async {
        let (_, page) = api.get("/v1/tasks?limit=100").await;
        let mut t: BTreeMap<String, i64> = BTreeMap::new();
        for task in page["tasks"].as_array().cloned().unwrap_or_default() {
            *t.entry(task["status"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        t
    };
    let settled = eventually(Duration::from_secs(30), || async {
        let t = truth().await;
        (t.get("succeeded") == Some(&16) && t.get("failed") == Some(&8)).then_some(t)
    })
    .await
    .expect("deliveries settle");
    assert_eq!(settled.get("scheduled"), Some(&2));
    assert_eq!(settled.get("cancelled"), Some(&4));
    let counted = eventually(Duration::from_secs(15), || async {
        let (_, stats) = api.get("/v1/stats").await;
        let c: BTreeMap<String, i64> = stats["counts"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| v.as_i64() != Some(0))
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        (c == settled).then_some(stats)
    })
    .await;
    let (_, last) = api.get("/v1/stats").await;
    let stats = counted.unwrap_or_else(|| panic!("counts {last} never equalled the truth {settled:?}"));
    let active = eventually(Duration::from_secs(15), || async {
        let (_, s) = api.get("/v1/stats").await;
        (s["active_tasks"] == 2).then_some(())
    })
    .await;
    assert!(active.is_some(), "only the two scheduled tasks still hold active slots: {stats}");
    // The last hour per minute: the 16 deliveries and 8 failures, each once.
    let sum = |s: &serde_json::Value, col: &str| {
        s["per_minute"].as_array().map_or(0, |m| m.iter().map(|x| x[col].as_i64().unwrap_or(0)).sum::<i64>())
    };
    let (_, s) = api.get("/v1/stats").await;
    assert_eq!(s["per_minute"].as_array().map(Vec::len), Some(60), "{s}");
    assert_eq!((sum(&s, "delivered"), sum(&s, "failed")), (16, 8), "{s}");
    assert!(s["queues"].is_null(), "a tenant key does not see the shared queues: {s}");
    // The admin acting as this tenant sees the same, and the queues.
    let admin_as = |h: &str| {
        stack
            .admin
            .http
            .get(format!("{}/v1/stats", stack.admin.base))
            .bearer_auth(crate::helpers::ADMIN_KEY)
            .header("x-courier-tenant", h.to_owned())
    };
    let resp = admin_as(&stack.tenant).send().await.expect("stats");
    assert_eq!(resp.status(), 200);
    let as_admin: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(sum(&as_admin, "delivered"), 16);
    assert!(as_admin["queues"]["dlq"]["visible"].is_u64(), "{as_admin}");
    // Only the admin key may name a tenant.
    let resp = api
        .http
        .get(format!("{}/v1/stats", api.base))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .header("x-courier-tenant", stack.tenant.clone())
        .send()
        .await
        .expect("stats");
    assert_eq!(resp.status(), 403);
    let resp = admin_as("tnt_nope").send().await.expect("stats");
    assert_eq!(resp.status(), 400, "a malformed tenant id names the header");
    // Another tenant's counts are its own.
    let (_, key) = stack.admin.new_tenant("empty", json!({})).await;
    let (_, other) = api.with_key(Some(&key)).get("/v1/stats").await;
    assert!(other["counts"].as_object().expect("counts").values().all(|v| v == 0), "{other}");
}
