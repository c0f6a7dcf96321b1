//! Flow policies over HTTP through the local front, on the DynamoDB adapter:
//! who may set what, the views, paging, and `flow_key` on tasks.

use serde_json::{Value, json};

use crate::helpers::{TestStack, stack_options};

const HOST: &str = "/v1/flows/api.example.invalid:443";

async fn put(api: &crate::helpers::Api, path: &str, body: Value) -> (u16, Value) {
    let (s, _, v) = api.call("PUT", path, Some(&body.to_string()), &[]).await;
    (s, v)
}

async fn quiet_stack(area: &str) -> TestStack {
    let mut opts = stack_options(area);
    opts.pollers = 0;
    TestStack::start(opts).await
}

#[tokio::test]
async fn the_admin_sets_host_limits_and_a_tenant_only_lowers_its_share() {
    let stack = quiet_stack("flows-api").await;
    let (status, view) = put(&stack.admin, HOST, json!({"rate": "10/s", "parallelism": 4})).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["policy"]["updated_by"], "admin");
    let (status, view) = put(&stack.admin, HOST, json!({"rate": "20/s", "parallelism": 4})).await;
    assert_eq!(status, 200, "{view}");

    let (status, err) = put(&stack.api, HOST, json!({"rate": "30/s"})).await;
    assert_eq!(
        (status, err["error"]["code"].as_str(), err["error"]["field"].as_str()),
        (400, Some("above_admin_limit"), Some("rate")),
        "{err}"
    );
    let (status, err) = put(&stack.api, HOST, json!({"adaptive": false})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("admin_only")), "{err}");
    let (status, view) = put(&stack.api, HOST, json!({"rate": "5/s"})).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["tenant"], stack.tenant.as_str());
    assert_eq!(view["admin_policy"]["rate"], "20/s");
    assert_eq!(view["effective"], json!({"rate": "5/s", "burst": 1, "parallelism": 4, "factor": 1.0}));
    assert_eq!(view["state"]["breaker"]["state"], "closed");

    // The tenant's own named key takes a full policy; the admin reaches it with ?tenant=.
    let (status, view) = put(&stack.api, "/v1/flows/orders", json!({"parallelism": 2, "breaker": {"probes": 1}})).await;
    assert_eq!(status, 201, "{view}");
    let (status, view) = stack.admin.get(&format!("/v1/flows/orders?tenant={}", stack.tenant)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["breaker_settings"]["probes"], 1, "{view}");
    assert_eq!(stack.api.get(&format!("/v1/flows/orders?tenant={}", stack.tenant)).await.0, 403);
    assert_eq!(stack.api.with_key(None).get("/v1/flows").await.0, 401);

    let (status, list) = stack.api.get("/v1/flows").await;
    assert_eq!(status, 200, "{list}");
    let keys: Vec<&str> = list["items"].as_array().expect("items").iter().filter_map(|i| i["key"].as_str()).collect();
    assert_eq!(keys, ["api.example.invalid:443", "orders"], "the tenant sees its share and its named key: {list}");
    let (_, all) = stack.admin.get("/v1/flows?limit=1").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all}");
    let cursor = all["next_cursor"].as_str().expect("a second page");
    let (_, rest) = stack.admin.get(&format!("/v1/flows?limit=100&cursor={cursor}")).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(2), "{rest}");

    assert_eq!(stack.api.delete("/v1/flows/orders").await.0, 204);
    assert_eq!(stack.api.delete("/v1/flows/orders").await.0, 404);
    assert_eq!(stack.admin.delete(HOST).await.0, 204);
    let (_, view) = stack.api.get(HOST).await;
    assert_eq!(view["admin_policy"], Value::Null, "{view}");
    assert_eq!(view["policy"]["rate"], "5/s", "the tenant's share outlives the admin's policy: {view}");
}

#[tokio::test]
async fn a_task_keeps_the_flow_key_it_was_created_or_patched_with() {
    let stack = quiet_stack("flows-task").await;
    let task = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": "https://api.example.invalid/x"},
                            "schedule": {"delay": "1h"}, "flow_key": "orders"}))
        .await;
    let id = task["id"].as_str().expect("id");
    let (_, view) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(view["flow_key"], "orders", "{view}");
    let (status, patched) = stack.api.patch(&format!("/v1/tasks/{id}"), r#"{"flow_key": "billing"}"#).await;
    assert_eq!(status, 200, "{patched}");
    let (_, view) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(view["flow_key"], "billing", "{view}");
    let (status, err) = stack.api.patch(&format!("/v1/tasks/{id}"), r#"{"flow_key": "Not Valid"}"#).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("flow_key")), "{err}");
}
