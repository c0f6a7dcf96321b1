//! Lifecycle events on EventBridge and per-task callbacks, end to end: the
//! stream consumer publishes what a tenant opted in to onto the stack's bus,
//! whose example rule fills a queue this test reads; callbacks are tasks of
//! their own, delivered (signed) to their URL and linked both ways.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{OwnIamLog, Target, TestStack, bus_events, eventually, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(60);

fn by_type(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        out.entry(e["detail-type"].as_str().unwrap_or_default().to_owned()).or_default().push(e["detail"].clone());
    }
    out
}

#[tokio::test]
async fn a_tenants_opted_in_events_reach_the_example_rules_queue_with_their_fields() {
    let ok = Target::start(&[]).await;
    let bad = Target::start(&[500]).await;
    let run_target = Target::start(&[404]).await;
    let mut opts = stack_options("events");
    // This stack's AWS calls on a log of their own: PutEvents are counted.
    let log = OwnIamLog::new(&mut opts);
    let puts = || log.count(None, "events:PutEvents");
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    // Opt in to every type but task.created; a bad type is a 400 naming the field.
    let path = format!("/v1/tenants/{}", stack.tenant);
    let (status, bad_types) = stack.admin.patch(&path, r#"{"events":["task.done"]}"#).await;
    assert_eq!((status, bad_types["error"]["field"].as_str()), (400, Some("events")), "{bad_types}");
    let types = ["task.succeeded", "task.failed", "task.cancelled", "run.succeeded", "run.failed"];
    let (status, view) = stack.admin.patch(&path, &json!({"events": types}).to_string()).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["events"],
        json!(["task.succeeded", "task.failed", "task.cancelled", "run.succeeded", "run.failed"])
    );
    // Another tenant opted in to nothing: its tasks publish nothing.
    let (_, other_key) = stack.admin.new_tenant("quiet", json!({})).await;
    let other = api.with_key(Some(&other_key));
    let quiet = other.create_task(json!({"request": {"method": "POST", "url": ok.url("/quiet")}})).await;
    other.wait_for_status(quiet["id"].as_str().expect("id"), "succeeded", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the stream batches of it
    assert_eq!(puts(), 0, "a tenant that opted in to nothing costs no PutEvents");

    let delivered =
        api.create_task(json!({"business_id": "order-7", "request": {"method": "POST", "url": ok.url("/ok")}})).await;
    let failed = api
        .create_task(json!({"request": {"method": "POST", "url": bad.url("/bad")}, "retry": {"max_attempts": 1}}))
        .await;
    let later = api
        .create_task(
            json!({"request": {"method": "POST", "url": "https://later.invalid/"}, "schedule": {"delay": "1h"}}),
        )
        .await;
    let id = |t: &Value| t["id"].as_str().expect("id").to_owned();
    let (delivered, failed, later) = (id(&delivered), id(&failed), id(&later));
    assert_eq!(api.delete(&format!("/v1/tasks/{later}")).await.0, 200);
    // Two runs of a cron task, fired as Scheduler fires them: one fails, one succeeds.
    let cron = api
        .create_task(json!({"request": {"method": "POST", "url": run_target.url("/run")},
                            "schedule": {"cron": "0 0 1 1 *", "timezone": "UTC"}, "retry": {"intervals": []}}))
        .await;
    let cron = id(&cron);
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let now = courier::domain::now_millis();
    for run in [now - 60_000, now - 1_000] {
        let firing = json!({"type": "cron.v1", "task_id": cron, "scheduled_time": courier::domain::format_millis(run)});
        sqs.send_message()
            .queue_url(&stack.outputs().queue_url)
            .message_body(firing.to_string())
            .send()
            .await
            .expect("fire");
        // One run at a time, so the target's script meets them in order.
        eventually(WAIT, || async {
            (run_target.received().len() == if run < now - 1_000 { 1 } else { 2 }).then_some(())
        })
        .await
        .expect("the run was sent");
    }

    let got = bus_events(&stack, 5).await;
    let kinds = by_type(&got);
    assert_eq!(got.len(), 5, "{got:#?}");
    for e in &got {
        assert_eq!(e["source"], "courier");
        assert_eq!(e["detail"]["type"], e["detail-type"]);
        assert_eq!(e["detail"]["tenant"], stack.tenant.as_str(), "only the opted-in tenant's events: {e}");
    }
    let one = |t: &str| kinds.get(t).and_then(|v| v.first()).cloned().unwrap_or_else(|| panic!("no {t}: {got:#?}"));
    let ok_event = one("task.succeeded");
    assert_eq!(ok_event["task_id"], delivered.as_str());
    assert_eq!(ok_event["business_id"], "order-7");
    assert_eq!((ok_event["status"].as_str(), ok_event["attempts"].as_u64()), (Some("succeeded"), Some(1)));
    assert_eq!(ok_event["last_status_code"], 200, "a success keeps its status code as a failure does");
    assert!(ok_event["time"].as_str().is_some_and(|t| t.ends_with('Z')) && ok_event["id"].is_string());
    let bad_event = one("task.failed");
    assert_eq!(bad_event["task_id"], failed.as_str());
    assert_eq!(bad_event["last_status_code"], 500);
    assert!(bad_event["reason"].as_str().is_some_and(|r| r.contains("500")), "{bad_event}");
    assert_eq!(one("task.cancelled")["task_id"], later.as_str());
    let run_failed = one("run.failed");
    assert_eq!(
        (run_failed["task_id"].as_str(), run_failed["last_status_code"].as_u64()),
        (Some(cron.as_str()), Some(404))
    );
    assert!(run_failed["run"].is_string());
    assert_eq!(one("run.succeeded")["task_id"], cron.as_str());
    assert!(!kinds.contains_key("task.created"), "not opted in");

    // At most one PutEvents per stream batch (up to ten events each).
    // The recorder writes its line once the call has answered: wait for it.
    eventually(Duration::from_secs(10), || async { (puts() >= 1).then_some(()) }).await;
    let calls = puts();
    println!("events: 5 published in {calls} PutEvents calls");
    assert!((1..=5).contains(&calls), "{calls} PutEvents calls for 5 events");
    log.share();
}

#[tokio::test]
async fn callbacks_are_signed_tasks_of_their_own_linked_both_ways() {
    let target = Target::start(&[500]).await;
    let hooks = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("callbacks")).await;
    let api = &stack.api;
    let (status, _) = api.post("/v1/secrets", "{}").await;
    assert_eq!(status, 201, "a signing secret");
    // A bad callback URL is a 400 naming the field; a cron task has none.
    let (status, err) = api
        .post(
            "/v1/tasks",
            &json!({"request": {"method": "POST", "url": target.url("/a")}, "callbacks": {"on_success": "ftp://x"}})
                .to_string(),
        )
        .await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("callbacks.on_success")), "{err}");
    let (status, err) = api
        .post(
            "/v1/tasks",
            &json!({"request": {"method": "POST", "url": target.url("/a")}, "schedule": {"cron": "0 0 1 1 *"},
                    "callbacks": {"on_failure": hooks.url("/f")}})
            .to_string(),
        )
        .await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("callbacks")), "{err}");

    let callbacks = json!({"on_success": hooks.url("/succeeded"), "on_failure": hooks.url("/failed")});
    let failing = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/first")}, "retry": {"max_attempts": 1},
                            "business_id": "pay-1", "callbacks": callbacks}))
        .await;
    let failing = failing["id"].as_str().expect("id").to_owned();
    let parent = api.wait_for_status(&failing, "failed", WAIT).await;
    let passing = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/second")}, "callbacks": callbacks}))
        .await;
    let passing = passing["id"].as_str().expect("id").to_owned();
    api.wait_for_status(&passing, "succeeded", WAIT).await;

    // Each parent's view names its callback task once it exists.
    let linked = |id: String, field: &'static str| {
        let api = &stack.api;
        async move {
            eventually(WAIT, || async {
                let (_, t) = api.get(&format!("/v1/tasks/{id}")).await;
                let child = t["callbacks"][field].as_str()?.to_owned();
                let (status, c) = api.get(&format!("/v1/tasks/{child}")).await;
                (status == 200 && c["status"] == "succeeded").then_some((t, c))
            })
            .await
            .unwrap_or_else(|| panic!("the {field} of {id} was not delivered"))
        }
    };
    let (failed_view, on_failure) = linked(failing.clone(), "on_failure_task").await;
    let (passed_view, on_success) = linked(passing.clone(), "on_success_task").await;
    assert!(failed_view["callbacks"]["on_success_task"].is_null(), "a failed task calls on_failure only");
    assert!(passed_view["callbacks"]["on_failure_task"].is_null());
    assert_eq!(on_failure["callback_of"], json!({"task_id": failing, "kind": "on_failure"}));
    assert_eq!(on_success["callback_of"], json!({"task_id": passing, "kind": "on_success"}));
    assert!(on_failure["callbacks"].is_null(), "a callback task has no callbacks of its own");
    assert_eq!(parent["failure_reason"], failed_view["failure_reason"]);

    // What the hook received: one signed notice per outcome.
    let got = hooks.received();
    assert_eq!(got.len(), 2, "one notice each, never twice");
    let notice = |path: &str| {
        let r = got.iter().find(|r| r.path == path).unwrap_or_else(|| panic!("no request to {path}"));
        assert!(r.header("webhook-signature").is_some_and(|s| s.starts_with("v1,")), "signed like any task");
        serde_json::from_slice::<Value>(&r.body).expect("a JSON notice")
    };
    let f = notice("/failed");
    assert_eq!((f["callback"].as_str(), f["type"].as_str()), (Some("on_failure"), Some("task.failed")));
    assert_eq!((f["task_id"].as_str(), f["business_id"].as_str()), (Some(failing.as_str()), Some("pay-1")));
    assert_eq!(f["last_status_code"], 500);
    let s = notice("/succeeded");
    assert_eq!(
        (s["callback"].as_str(), s["task_id"].as_str(), s["status"].as_str()),
        (Some("on_success"), Some(passing.as_str()), Some("succeeded"))
    );
}
