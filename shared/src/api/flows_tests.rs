//! The flow routes on the in-memory store: who may set what, the bounds a
//! tenant's share meets, and the views; plus `flow_key` on task views.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::api::test_world::{ADMIN, World, world};
use crate::domain::{FlowKey, PolicyScope, TenantId};
use crate::ports::FlowPolicies;

impl World {
    async fn call(&self, key: Option<&str>, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.request(key, method, uri, body, None).await
    }

    fn a_key(&self) -> Option<&str> {
        Some(&self.a.1)
    }

    fn b_key(&self) -> Option<&str> {
        Some(&self.b.1)
    }
}

#[tokio::test]
async fn flow_routes_answer_401_without_a_key_and_to_an_unknown_key() {
    let w = world().await;
    for (method, uri) in [("GET", "/v1/flows"), ("GET", "/v1/flows/api.example.invalid:443")] {
        assert_eq!(w.call(None, method, uri, None).await.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(w.call(Some("ck_nope"), method, uri, None).await.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    let (status, _) = w.call(None, "PUT", "/v1/flows/api.example.invalid:443", Some(json!({"rate": "1/s"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_admin_sets_a_host_policy_with_201_then_200_and_deletes_it_with_204_then_404() {
    let w = world().await;
    let uri = "/v1/flows/api.example.invalid:443";
    let body =
        json!({"rate": "10/s", "burst": 5, "parallelism": 4, "breaker": {"failure_percent": 50, "window": "1m"}});
    let (status, view) = w.call(Some(ADMIN), "PUT", uri, Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["key"], "api.example.invalid:443");
    assert_eq!(view["kind"], "host");
    assert_eq!(view["tenant"], Value::Null);
    assert_eq!(view["policy"]["rate"], "10/s");
    assert_eq!(view["policy"]["updated_by"], "admin");
    assert_eq!(view["effective"], json!({"rate": "10/s", "burst": 5, "parallelism": 4, "factor": 1.0}));
    assert_eq!(view["breaker_settings"]["failure_percent"], 50);
    assert_eq!(view["breaker_settings"]["window"], "1m");
    assert!(view.get("admin_policy").is_none(), "the admin's own view has no admin_policy: {view}");

    let (status, view) = w.call(Some(ADMIN), "PUT", uri, Some(json!({"rate": "20/s"}))).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["policy"]["parallelism"], Value::Null, "PUT replaces the whole policy: {view}");
    let stored = w.store.get_policy(&FlowKey::host("api.example.invalid:443"), &PolicyScope::Admin).await;
    assert_eq!(stored.expect("store").expect("policy").rate.map(|r| r.to_string()).as_deref(), Some("20/s"));

    assert_eq!(w.call(Some(ADMIN), "DELETE", uri, None).await.0, StatusCode::NO_CONTENT);
    let (status, err) = w.call(Some(ADMIN), "DELETE", uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
}

#[tokio::test]
async fn a_key_without_any_policy_shows_the_defaults_and_a_closed_breaker() {
    let w = world().await;
    let (status, view) = w.call(w.a_key(), "GET", "/v1/flows/quiet.example.invalid:80", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["policy"], Value::Null);
    assert_eq!(view["admin_policy"], Value::Null);
    assert_eq!(view["tenant"], w.a.0.as_str());
    assert_eq!(view["effective"], json!({"rate": null, "burst": null, "parallelism": null, "factor": 1.0}));
    assert_eq!(
        view["breaker_settings"],
        json!({"enabled": true, "min_requests": 10, "failure_percent": 70, "window": "5m",
               "open_min": "30s", "open_max": "10m", "probes": 3})
    );
    assert_eq!(view["state"]["breaker"]["state"], "closed");
    assert_eq!(view["state"]["in_flight"], 0);
    assert_eq!(view["history"], json!([]));
}

#[tokio::test]
async fn a_tenant_share_above_the_admin_limit_is_refused_naming_the_field() {
    let w = world().await;
    let uri = "/v1/flows/api.example.invalid:443";
    let admin = json!({"rate": "10/s", "parallelism": 4});
    assert_eq!(w.call(Some(ADMIN), "PUT", uri, Some(admin)).await.0, StatusCode::CREATED);
    for (body, field) in [(json!({"rate": "11/s"}), "rate"), (json!({"parallelism": 5}), "parallelism")] {
        let (status, err) = w.call(w.a_key(), "PUT", uri, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["code"], "above_admin_limit", "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    let (status, view) = w.call(w.a_key(), "PUT", uri, Some(json!({"rate": "300/m", "parallelism": 2}))).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["policy"]["updated_by"], w.a.0.as_str());
    assert_eq!(view["admin_policy"]["rate"], "10/s");
    // The lower of both applies: 300/m is 5/s.
    assert_eq!(view["effective"]["rate"], "300/m");
    assert_eq!(view["effective"]["parallelism"], 2);
    // The admin's policy is untouched by the share.
    let (_, admin_view) = w.call(Some(ADMIN), "GET", uri, None).await;
    assert_eq!(admin_view["policy"]["rate"], "10/s");
    assert_eq!(admin_view["effective"]["parallelism"], 4);
}

#[tokio::test]
async fn breaker_and_adaptive_on_a_host_key_are_admin_only_for_a_tenant() {
    let w = world().await;
    let uri = "/v1/flows/api.example.invalid:443";
    for (body, field) in [(json!({"breaker": {"probes": 2}}), "breaker"), (json!({"adaptive": false}), "adaptive")] {
        let (status, err) = w.call(w.a_key(), "PUT", uri, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["code"], "admin_only", "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // On its own named key a tenant sets the whole policy.
    let (status, view) =
        w.call(w.a_key(), "PUT", "/v1/flows/orders", Some(json!({"breaker": {"probes": 2}, "adaptive": false}))).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["kind"], "named");
    assert_eq!(view["key"], "orders");
    assert_eq!(view["breaker_settings"]["probes"], 2);
    assert_eq!(view["policy"]["adaptive"], false);
}

#[tokio::test]
async fn a_tenant_never_sees_or_touches_another_tenants_named_key() {
    let w = world().await;
    let (status, _) = w.call(w.a_key(), "PUT", "/v1/flows/orders", Some(json!({"rate": "5/s"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    // B's `orders` is B's own key: no policy there, and nothing of A's to delete.
    let (status, view) = w.call(w.b_key(), "GET", "/v1/flows/orders", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["policy"], Value::Null, "{view}");
    assert_eq!(view["tenant"], w.b.0.as_str());
    assert_eq!(w.call(w.b_key(), "DELETE", "/v1/flows/orders", None).await.0, StatusCode::NOT_FOUND);
    let (_, list) = w.call(w.b_key(), "GET", "/v1/flows", None).await;
    assert_eq!(list["items"], json!([]), "{list}");
    // Naming A with ?tenant= is the admin's alone.
    let uri = format!("/v1/flows/orders?tenant={}", w.a.0);
    assert_eq!(w.call(w.b_key(), "GET", &uri, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(w.call(w.b_key(), "DELETE", &uri, None).await.0, StatusCode::FORBIDDEN);
    // A's policy is intact, and the admin reaches it by naming A.
    let (status, view) = w.call(Some(ADMIN), "GET", &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["policy"]["rate"], "5/s", "{view}");
}

#[tokio::test]
async fn the_admin_needs_a_tenant_for_a_bare_name_and_that_tenant_must_exist() {
    let w = world().await;
    let (status, err) = w.call(Some(ADMIN), "GET", "/v1/flows/orders", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "tenant", "{err}");
    let (status, err) = w.call(Some(ADMIN), "GET", "/v1/flows/orders?tenant=nobody", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "tenant", "{err}");
    let missing = TenantId::generate();
    let (status, _) = w.call(Some(ADMIN), "GET", &format!("/v1/flows/orders?tenant={missing}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = w.call(Some(ADMIN), "GET", "/v1/flows/Not%20A%20Key", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "key", "{err}");
}

#[tokio::test]
async fn listings_show_each_caller_its_own_policies_in_pages() {
    let w = world().await;
    for host in ["a.example.invalid:443", "b.example.invalid:443", "c.example.invalid:443"] {
        let uri = format!("/v1/flows/{host}");
        assert_eq!(w.call(Some(ADMIN), "PUT", &uri, Some(json!({"rate": "9/s"}))).await.0, StatusCode::CREATED);
    }
    assert_eq!(w.call(w.a_key(), "PUT", "/v1/flows/orders", Some(json!({"rate": "1/s"}))).await.0, StatusCode::CREATED);
    let share = json!({"parallelism": 2});
    assert_eq!(w.call(w.b_key(), "PUT", "/v1/flows/a.example.invalid:443", Some(share)).await.0, StatusCode::CREATED);

    let (_, mine) = w.call(w.a_key(), "GET", "/v1/flows", None).await;
    let keys: Vec<&str> = mine["items"].as_array().expect("items").iter().filter_map(|i| i["key"].as_str()).collect();
    assert_eq!(keys, ["orders"], "{mine}");
    let (_, b_share) = w.call(Some(ADMIN), "GET", &format!("/v1/flows?tenant={}", w.b.0), None).await;
    assert_eq!(b_share["items"][0]["key"], "a.example.invalid:443", "{b_share}");
    assert_eq!(b_share["items"][0]["tenant"], w.b.0.as_str(), "{b_share}");

    let mut seen = Vec::new();
    let mut uri = "/v1/flows?limit=2".to_owned();
    loop {
        let (status, page) = w.call(Some(ADMIN), "GET", &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| (i["key"].to_string(), i["tenant"].to_string())));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/flows?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "every policy once: {seen:?}");
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "no policy twice: {seen:?}");

    for (uri, field) in [("/v1/flows?limit=0", "limit"), ("/v1/flows?cursor=%%%", "cursor"), ("/v1/flows?x=1", "x")] {
        let (status, err) = w.call(Some(ADMIN), "GET", uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {err}");
        assert_eq!(err["error"]["field"], field, "{uri}: {err}");
    }
}

#[tokio::test]
async fn bad_policy_documents_are_400s_naming_the_field() {
    let w = world().await;
    let uri = "/v1/flows/api.example.invalid:443";
    for (body, field) in [
        (json!({"rate": "fast"}), "rate"),
        (json!({"parallelism": 0}), "parallelism"),
        (json!({"burst": 3}), "burst"),
        (json!({"breaker": {"window": "1s"}}), "breaker.window"),
        (json!({"colour": "red"}), "colour"),
        (json!([1]), "body"),
    ] {
        let (status, err) = w.call(Some(ADMIN), "PUT", uri, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
}

#[tokio::test]
async fn a_created_task_shows_its_flow_key() {
    let w = world().await;
    let task = json!({"request": {"method": "POST", "url": "https://api.example.invalid/hook"}, "flow_key": "orders", "schedule": {"delay": "1h"}});
    let (status, created) = w.call(w.a_key(), "POST", "/v1/tasks", Some(task)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id");
    let (status, view) = w.call(w.a_key(), "GET", &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["flow_key"], "orders", "{view}");
}

#[tokio::test]
async fn a_disabled_tenant_is_refused_with_403() {
    use crate::ports::TenantStore;
    let w = world().await;
    assert!(w.store.update_tenant(&w.a.0, Some(false), None).await.expect("update"));
    assert_eq!(w.call(w.a_key(), "GET", "/v1/flows", None).await.0, StatusCode::FORBIDDEN);
    let (status, _) = w.call(w.a_key(), "PUT", "/v1/flows/orders", Some(json!({"rate": "1/s"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(w.call(w.b_key(), "GET", "/v1/flows", None).await.0, StatusCode::OK);
}
