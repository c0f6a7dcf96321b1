//! The task API on the local stack: idempotent creation (also concurrent),
//! lookups and filters, attempts paging, cancel and update rules, batches.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    Target, TestStack, eventually, listing_groups, own_index_entry, stack_options, wait_until_queue_empty,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn concurrent_identical_creates_with_a_business_id_make_one_task() {
    let target = Target::start(&[]).await;
    let mut opts = stack_options("idem");
    opts.api_instances = 4; // real concurrency: four API processes
    let stack = TestStack::start(opts).await;
    let body =
        json!({"request": {"method": "POST", "url": target.url("/order")}, "business_id": "order-42"}).to_string();
    let calls = (0..8).map(|_| stack.api.call("POST", "/v1/tasks", Some(&body), &[]));
    let results = futures_util::future::join_all(calls).await;
    let created: Vec<_> = results.iter().filter(|(s, _, _)| *s == 201).collect();
    let replays: Vec<_> = results.iter().filter(|(s, _, _)| *s == 200).collect();
    assert_eq!(created.len(), 1, "exactly one create wins: {results:?}");
    assert_eq!(replays.len(), 7, "{:?}", results.iter().map(|(s, _, b)| (s, b.to_string())).collect::<Vec<_>>());
    let id = created[0].2["id"].as_str().expect("id");
    for (_, headers, task) in &replays {
        assert_eq!(task["id"], id);
        assert_eq!(task["created"], false);
        assert_eq!(headers["courier-idempotent-replay"], "true");
    }
    stack.api.wait_for_status(id, "succeeded", WAIT).await;
    assert_eq!(target.received().len(), 1);
    assert_eq!(target.received()[0].header("courier-business-id"), Some("order-42"));
    let (_, list) = stack.api.get("/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1));
    // The replays' slots were given back at once, the delivered task's by the stream counter.
    let released = eventually(WAIT, || async {
        let (_, tenant) = stack.admin.get(&format!("/v1/tenants/{}", stack.tenant)).await;
        (tenant["active_tasks"] == 0).then_some(())
    })
    .await;
    assert!(released.is_some(), "no active-task slot is left taken");
}

#[tokio::test]
async fn an_idempotency_key_header_returns_the_first_task() {
    let mut opts = stack_options("idemkey");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let body = json!({"request": {"method": "GET", "url": "https://example.com/a"}}).to_string();
    let (s1, _, first) = stack.api.call("POST", "/v1/tasks", Some(&body), &[("idempotency-key", "k-1")]).await;
    let (s2, _, second) = stack.api.call("POST", "/v1/tasks", Some(&body), &[("idempotency-key", "k-1")]).await;
    let (s3, _, third) = stack.api.call("POST", "/v1/tasks", Some(&body), &[("idempotency-key", "k-2")]).await;
    assert_eq!((s1, s2, s3), (201, 200, 201));
    assert_eq!(first["id"], second["id"]);
    assert_ne!(first["id"], third["id"]);
    let (s, _, e) = stack.api.call("POST", "/v1/tasks", Some(&body), &[("idempotency-key", "has space")]).await;
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("Idempotency-Key")));
}

#[tokio::test]
async fn tasks_are_found_by_id_business_id_status_host_and_time_with_paging() {
    let ok = Target::start(&[]).await;
    let gone = Target::start(&[404, 404]).await;
    let stack = TestStack::start(stack_options("lookup")).await;
    let api = &stack.api;
    let before = rfc3339_now_plus_ms(-1);
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = api
            .create_task(
                json!({"request": {"method": "POST", "url": ok.url("/ok")}, "business_id": format!("biz-{i}")}),
            )
            .await;
        ids.push(t["id"].as_str().expect("id").to_owned());
    }
    // Another host name for the same loopback target.
    let other = format!("http://localhost:{}/gone", gone.addr.port());
    let failing = [api.create("POST", &other).await, api.create("POST", &other).await];
    for id in &ids {
        api.wait_for_status(id, "succeeded", WAIT).await;
    }
    for id in &failing {
        api.wait_for_status(id, "failed", WAIT).await;
    }
    let after = rfc3339_now_plus_ms(1);

    let (_, t) = api.get("/v1/tasks/by-business-id/biz-1").await;
    assert_eq!(t["id"], ids[1].as_str());
    assert_eq!(t["business_id"], "biz-1");
    assert_eq!(api.get("/v1/tasks/by-business-id/biz-9").await.0, 404);

    let listed = |q: &str| {
        let q = q.to_owned();
        async move {
            let (status, page) = api.get(&format!("/v1/tasks?{q}")).await;
            assert_eq!(status, 200, "{q}: {page}");
            let ids: Vec<String> = page["tasks"]
                .as_array()
                .expect("tasks")
                .iter()
                .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            (ids, page["next_cursor"].as_str().map(str::to_owned))
        }
    };
    let (all, _) = listed("limit=100").await;
    let mut newest_first = [ids.clone(), failing.to_vec()].concat();
    newest_first.reverse();
    assert_eq!(all, newest_first);
    let (failed, _) = listed("status=failed").await;
    assert_eq!(failed, [failing[1].clone(), failing[0].clone()]);
    let (by_host, _) = listed("host=localhost").await;
    assert_eq!(by_host, failed);
    let (succeeded_here, _) = listed("status=succeeded&host=127.0.0.1").await;
    assert_eq!(succeeded_here.len(), 3);
    let (none, cursor) = listed(&format!("created_after={}", enc(&after))).await;
    assert!(none.is_empty() && cursor.is_none());
    let (none, _) = listed(&format!("created_before={}", enc(&before))).await;
    assert!(none.is_empty());
    let (window, _) = listed(&format!("created_after={}&created_before={}", enc(&before), enc(&after))).await;
    assert_eq!(window.len(), 5);

    // Paging: 2 + 2 + 1, no task twice.
    let (p1, c1) = listed("limit=2").await;
    let (p2, c2) = listed(&format!("limit=2&cursor={}", c1.expect("cursor"))).await;
    let (p3, c3) = listed(&format!("limit=2&cursor={}", c2.expect("cursor"))).await;
    assert_eq!([p1, p2, p3].concat(), newest_first);
    assert!(c3.is_none());

    // Attempts, paginated, oldest first.
    let (_, page) = api.get(&format!("/v1/tasks/{}/attempts?limit=1", failing[0])).await;
    assert_eq!(page["attempts"][0]["number"], 1);
    assert_eq!(page["attempts"][0]["status_code"], 404);
    assert_eq!(page["attempts"][0]["outcome"], "client_error");

    for (q, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("created_after=yesterday", "created_after"),
        ("sort=asc", "sort"),
    ] {
        let (status, e) = api.get(&format!("/v1/tasks?{q}")).await;
        assert_eq!((status, e["error"]["field"].as_str()), (400, Some(field)), "{q}");
    }
}

/// Now plus `ms`: a millisecond off now is strictly before every task created
/// after it (or after every task created before it) at the API's millisecond grain.
fn rfc3339_now_plus_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(ms);
    t.format(&time::format_description::well_known::Rfc3339).expect("format")
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn attempts_page_through_a_retried_task() {
    let target = Target::start(&[500, 500]).await;
    let stack = TestStack::start(stack_options("attempts")).await;
    let api = &stack.api;
    let t = api
        .create_task(
            json!({"request": {"method": "GET", "url": target.url("/x")}, "retry": {"intervals": ["1s", "1s"]}}),
        )
        .await;
    let id = t["id"].as_str().expect("id");
    api.wait_for_status(id, "succeeded", WAIT).await;
    let (_, p1) = api.get(&format!("/v1/tasks/{id}/attempts?limit=2")).await;
    let numbers: Vec<u64> =
        p1["attempts"].as_array().expect("attempts").iter().filter_map(|a| a["number"].as_u64()).collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(p1["attempts"][0]["next_delay_ms"], 1000);
    let cursor = p1["next_cursor"].as_str().expect("more");
    let (_, p2) = api.get(&format!("/v1/tasks/{id}/attempts?limit=2&cursor={cursor}")).await;
    assert_eq!(p2["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(p2["attempts"][0]["number"], 3);
    assert_eq!(p2["attempts"][0]["status_code"], 200);
    assert!(p2["next_cursor"].is_null());
}

#[tokio::test]
async fn cancel_and_update_follow_the_task_state() {
    // Thresholds lowered, and the Scheduler bridge on, so a task beyond 2 s
    // goes through a Scheduler schedule that really fires within seconds.
    let target = Target::start(&[]).await;
    let mut opts = stack_options("cancel");
    opts.scheduler_tick = Some(Duration::from_millis(200));
    opts.extra_env.push(("COURIER_SQS_DELAY_MAX_S".into(), "2".into()));
    opts.extra_env.push(("COURIER_SCHEDULE_EARLY_S".into(), "2".into()));
    let stack = TestStack::start(opts).await;
    let api = &stack.api;

    // A task 4 s away: cancelled, its schedule deleted, cancelling again is 409.
    let later = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/later")}, "schedule": {"delay": "4s"}, "business_id": "later-1"}))
        .await;
    let later_id = later["id"].as_str().expect("id");
    assert_eq!(later["status"], "scheduled");
    let scheduler = aws_sdk_scheduler::Client::new(&crate::helpers::sdk().await);
    let group = &stack.outputs().names.schedule_group;
    assert!(scheduler.get_schedule().group_name(group).name(later_id).send().await.is_ok());
    let (status, cancelled) = api.delete("/v1/tasks/by-business-id/later-1").await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(scheduler.get_schedule().group_name(group).name(later_id).send().await.is_err(), "schedule deleted");
    let (status, e) = api.delete(&format!("/v1/tasks/{later_id}")).await;
    assert_eq!((status, e["error"]["code"].as_str()), (409, Some("conflict")));
    let (status, _) = api.patch(&format!("/v1/tasks/{later_id}"), r#"{"request":{"timeout_ms":100}}"#).await;
    assert_eq!(status, 409);

    // A task due after the cancelled one: its URL and headers change before it
    // runs, and once it has run the cancelled one would have too.
    let soon = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/old")}, "schedule": {"delay": "8s"}}))
        .await;
    let soon_id = soon["id"].as_str().expect("id");
    let (status, patched) = api
        .patch(
            &format!("/v1/tasks/{soon_id}"),
            &json!({"request": {"url": target.url("/new"), "headers": {"x-v": "2"}}, "retry": {"max_attempts": 2}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["request"]["url"], target.url("/new"));
    assert_eq!(patched["max_attempts"], 2);
    let (status, e) = api.patch(&format!("/v1/tasks/{soon_id}"), r#"{"request":{"method":"GET"}}"#).await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("request.method")));
    api.wait_for_status(soon_id, "succeeded", WAIT).await;
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    let got = target.received();
    assert_eq!(got.len(), 1, "the cancelled task never ran: {got:?}");
    assert_eq!((got[0].path.as_str(), got[0].header("x-v")), ("/new", Some("2")));

    // Finished tasks cannot be cancelled or changed.
    let (status, _) = api.delete(&format!("/v1/tasks/{soon_id}")).await;
    assert_eq!(status, 409);
    let (status, _) = api.patch(&format!("/v1/tasks/{soon_id}"), r#"{"request":{"timeout_ms":100}}"#).await;
    assert_eq!(status, 409);
    assert_eq!(api.delete("/v1/tasks/tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").await.0, 404);
}

#[tokio::test]
async fn a_batch_creates_valid_items_and_reports_each_result() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("batch")).await;
    let api = &stack.api;
    let mut tasks: Vec<serde_json::Value> = (0..12)
        .map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/b/{i}")), "json": {"i": i}}}))
        .collect();
    tasks.insert(3, json!({"request": {"method": "POST"}}));
    tasks.push(json!({"request": {"method": "GET", "url": target.url("/dup")}, "business_id": "dup"}));
    tasks.push(json!({"request": {"method": "GET", "url": target.url("/dup")}, "business_id": "dup"}));
    let (status, resp) = api.post("/v1/tasks/batch", &json!({"tasks": tasks}).to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let results = resp["results"].as_array().expect("results");
    assert_eq!(results.len(), 15);
    assert_eq!(results[3]["status"], 400);
    assert_eq!(results[3]["error"]["field"], "tasks[3].request.url");
    assert_eq!(results[13]["status"], 201);
    assert_eq!(results[14]["status"], 200, "the second `dup` finds the first");
    assert_eq!(results[14]["task"]["id"], results[13]["task"]["id"]);
    assert_eq!(resp["created"], 13);
    for r in results.iter().filter(|r| r["status"] == 201) {
        api.wait_for_status(r["task"]["id"].as_str().expect("id"), "succeeded", WAIT).await;
    }
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    assert_eq!(target.received().len(), 13, "one request per task, none for the duplicate");
    for bad in [r#"{"tasks": []}"#, r#"{"items": [{}]}"#, "[1]"] {
        let (status, e) = api.post("/v1/tasks/batch", bad).await;
        assert_eq!((status, e["error"]["field"].as_str()), (400, Some("tasks")), "{bad}");
    }
    let too_many: Vec<_> = (0..101).map(|_| json!({"request": {"method": "GET", "url": "https://e.com"}})).collect();
    assert_eq!(api.post("/v1/tasks/batch", &json!({"tasks": too_many}).to_string()).await.0, 400);
}

#[tokio::test]
async fn paging_through_a_tenant_spread_over_index_shards_returns_every_task_once_newest_first() {
    let mut opts = stack_options("pages");
    opts.pollers = 0; // nothing is sent: the tasks stay pending
    let stack = TestStack::start(opts).await;
    let mut created = std::collections::HashSet::new();
    let mut round_times = Vec::new();
    for round in 0..3 {
        let tasks: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                let mut t = json!({"request": {"method": "POST", "url": format!("https://hook.invalid/{round}/{i}")}});
                if i % 5 == 0 {
                    t["business_id"] = json!(format!("page-{round}-{i}")); // derived ids: no time order
                }
                t
            })
            .collect();
        let (status, resp) = stack.api.post("/v1/tasks/batch", &json!({"tasks": tasks}).to_string()).await;
        assert_eq!((status, resp["created"].as_u64()), (200, Some(50)), "{resp}");
        for r in resp["results"].as_array().expect("results") {
            created.insert(r["task"]["id"].as_str().expect("id").to_owned());
        }
        round_times.push(resp["results"][1]["task"]["created_at"].as_str().expect("created_at").to_owned());
        // Within the create rate quota (100 a second).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // A task created alone between batches lists by its own index entry.
        let single = stack.api.create_task(json!({"request": {"method": "POST", "url": "https://one.invalid/"}})).await;
        created.insert(single["id"].as_str().expect("id").to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A batch's tasks without a business id share one listing group: their
    // states carry no index keys (one write unit each, not two).
    assert_eq!(listing_groups(&stack).await.len(), 3, "one group per batch");
    let mut indexed = 0;
    for id in &created {
        indexed += usize::from(own_index_entry(&stack, id).await.expect("stored"));
    }
    assert_eq!(indexed, 3 * 10 + 3, "only tasks with a business id and single creates have their own index entry");
    let (mut seen, mut times) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/tasks?limit=7&cursor={c}"),
            None => "/v1/tasks?limit=7".to_owned(),
        };
        let (status, page) = stack.api.get(&q).await;
        assert_eq!(status, 200, "{page}");
        for t in page["tasks"].as_array().expect("tasks") {
            seen.push(t["id"].as_str().expect("id").to_owned());
            times.push(t["created_at"].as_str().expect("created_at").to_owned());
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 40, "paging ends");
    }
    assert_eq!(seen.len(), 153, "every task once");
    assert_eq!(seen.iter().cloned().collect::<std::collections::HashSet<_>>(), created);
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    // A time window takes a group whole: the second batch's millisecond is its 50 tasks.
    let at = &round_times[1];
    let (status, page) = stack.api.get(&format!("/v1/tasks?limit=100&created_after={at}&created_before={at}")).await;
    assert_eq!(status, 200, "{page}");
    let in_window = page["tasks"].as_array().expect("tasks");
    assert_eq!(in_window.len(), 50, "{at}: {page}");
    assert!(in_window.iter().all(|t| t["created_at"] == at.as_str()));
    // A filter that matches few examines many: pages may be partial but still end.
    let (status, page) = stack.api.get("/v1/tasks?limit=3&status=succeeded").await;
    assert_eq!((status, page["tasks"].as_array().map(Vec::len)), (200, Some(0)), "{page}");
}
