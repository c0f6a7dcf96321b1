//! The delivery engine against local targets: the exact attempt sequence,
//! waits, final status, DLQ contents and history for each kind of answer; a
//! sender killed mid-request; the reconciler; manual retry; long waits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::delivery::receive_all;
use crate::helpers::{Reply, Target, TestStack, eventually, sdk, stack_options, wait_until_queue_empty};

const WAIT: Duration = Duration::from_secs(30);

async fn history(stack: &TestStack, id: &str) -> Vec<Value> {
    let (_, page) = stack.api.get(&format!("/v1/tasks/{id}/attempts?limit=100")).await;
    page["attempts"].as_array().cloned().unwrap_or_default()
}

fn field<'a>(attempts: &'a [Value], name: &str) -> Vec<&'a Value> {
    attempts.iter().map(|a| &a[name]).collect()
}

/// The DLQ message about `id`.
async fn parked(stack: &TestStack, id: &str) -> Value {
    let msgs = receive_all(&stack.outputs().dlq_url, 1).await;
    msgs.iter()
        .filter_map(|m| serde_json::from_str::<Value>(m.body().unwrap_or_default()).ok())
        .find(|d| d["task_id"] == id)
        .unwrap_or_else(|| panic!("no DLQ message for {id}"))
}

#[tokio::test]
async fn a_server_error_then_success_retries_within_the_backoff_bounds() {
    let target = Target::start(&[500]).await;
    let stack = TestStack::start(stack_options("e-500")).await;
    let id = stack.api.create("POST", &target.url("/flaky")).await;
    let task = stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 2);
    let attempts = history(&stack, &id).await;
    assert_eq!(field(&attempts, "status_code"), [&json!(500), &json!(200)]);
    assert_eq!(field(&attempts, "outcome"), [&json!("server_error"), &json!("success")]);
    // Default policy: first wait is full jitter below 1 s.
    let wait = attempts[0]["next_delay_ms"].as_u64().expect("a wait was chosen");
    assert!(wait <= 1_000, "{wait}");
    let got = target.received();
    let gap = got[1].at_ms - got[0].at_ms;
    assert!(gap + 50 >= wait as i64, "second attempt {gap} ms after the first, wait was {wait}");
    // The record of the request as sent.
    let first = &attempts[0];
    assert_eq!(first["request"]["method"], "POST");
    assert_eq!(first["request"]["url"], target.url("/flaky"));
    assert_eq!(first["request"]["headers"]["courier-attempt"], "1");
    assert_eq!(first["request"]["body_size"], 7);
    assert!(first["response_headers"]["content-length"].is_string());
    assert_eq!(got[1].header("courier-attempt"), Some("2"));
}

#[tokio::test]
async fn a_429_with_retry_after_waits_as_told() {
    let target = Target::start_with(vec![Reply::status(429).header("retry-after", "2")]).await;
    let stack = TestStack::start(stack_options("e-429")).await;
    let id = stack.api.create("POST", &target.url("/limited")).await;
    stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    let attempts = history(&stack, &id).await;
    assert_eq!(field(&attempts, "outcome"), [&json!("rate_limited"), &json!("success")]);
    assert_eq!(attempts[0]["next_delay_ms"], 2_000);
    let got = target.received();
    assert!(got[1].at_ms - got[0].at_ms >= 1_950, "waited {} ms", got[1].at_ms - got[0].at_ms);
}

#[tokio::test]
async fn gone_and_receiver_stop_end_the_task_and_park_it_on_the_dlq() {
    let gone = Target::start(&[410]).await;
    let stop = Target::start_with(vec![Reply::status(503).header("courier-retry", "stop")]).await;
    let stack = TestStack::start(stack_options("e-stop")).await;
    let body = |url: String| json!({"request": {"method": "POST", "url": url}, "retry_codes": [410]});
    let gone_id = stack.api.create_task(body(gone.url("/gone"))).await["id"].as_str().expect("id").to_owned();
    let stop_id = stack.api.create("POST", &stop.url("/stop")).await;
    let g = stack.api.wait_for_status(&gone_id, "failed", WAIT).await;
    let s = stack.api.wait_for_status(&stop_id, "failed", WAIT).await;
    assert_eq!(g["failure_reason"], "stopped after attempt 1: client_error (HTTP 410)", "410 stops even when listed");
    assert_eq!(s["failure_reason"], "stopped by the receiver after attempt 1 (HTTP 503, Courier-Retry: stop)");
    assert_eq!(history(&stack, &stop_id).await[0]["outcome"], "stopped_by_receiver");
    assert_eq!((gone.received().len(), stop.received().len()), (1, 1));
    let dlq = receive_all(&stack.outputs().dlq_url, 2).await;
    let docs: Vec<Value> = dlq.iter().filter_map(|m| serde_json::from_str(m.body().unwrap_or_default()).ok()).collect();
    for (id, reason) in [(&gone_id, &g["failure_reason"]), (&stop_id, &s["failure_reason"])] {
        let d = docs.iter().find(|d| d["task_id"] == id.as_str()).expect("parked");
        assert_eq!((&d["type"], &d["reason"], &d["tenant"]), (&json!("task.failed.v1"), reason, &json!(stack.tenant)));
    }
}

#[tokio::test]
async fn a_slow_target_times_out_and_the_next_attempt_succeeds() {
    let target = Target::start_with(vec![Reply::status(200).after(Duration::from_millis(1500))]).await;
    let stack = TestStack::start(stack_options("e-slow")).await;
    let t = stack
        .api
        .create_task(json!({"request": {"method": "GET", "url": target.url("/slow"), "timeout_ms": 300}, "retry": {"intervals": ["1s"]}}))
        .await;
    let id = t["id"].as_str().expect("id");
    stack.api.wait_for_status(id, "succeeded", WAIT).await;
    let attempts = history(&stack, id).await;
    assert_eq!(field(&attempts, "outcome"), [&json!("timeout"), &json!("success")]);
    assert!(attempts[0]["status_code"].is_null());
    assert!(
        attempts[0]["error"].as_str().is_some_and(|e| e.contains("timed out") || e.contains("timeout")),
        "{}",
        attempts[0]
    );
    let ms = attempts[0]["duration_ms"].as_u64().expect("duration");
    assert!((250..1_400).contains(&ms), "timed out after {ms} ms");
    assert_eq!(attempts[0]["next_delay_ms"], 1_000);
}

#[tokio::test]
async fn a_refused_connection_exhausts_the_intervals_and_is_parked() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr"); // dropped: nothing listens
    let stack = TestStack::start(stack_options("e-refused")).await;
    let t = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": format!("http://{closed}/x")}, "retry": {"intervals": ["1s", "1s"]}}))
        .await;
    let id = t["id"].as_str().expect("id");
    assert_eq!(t["max_attempts"], 3);
    let task = stack.api.wait_for_status(id, "failed", WAIT).await;
    let reason = task["failure_reason"].as_str().expect("reason");
    assert!(reason.starts_with("exhausted after 3 attempts: connect ("), "{reason}");
    let attempts = history(&stack, id).await;
    assert_eq!(field(&attempts, "outcome"), [&json!("connect"); 3]);
    assert_eq!(field(&attempts, "next_delay_ms"), [&json!(1000), &json!(1000), &Value::Null]);
    let doc = parked(&stack, id).await;
    assert_eq!(doc["reason"], reason);
}

#[tokio::test]
async fn redirects_are_answers_unless_the_task_follows_them() {
    let target = Target::start_with(vec![
        Reply::status(302).header("location", "/final"),
        Reply::status(302).header("location", "/final"),
    ])
    .await;
    let stack = TestStack::start(stack_options("e-redir")).await;
    let plain = stack.api.create("GET", &target.url("/start")).await;
    stack.api.wait_for_status(&plain, "failed", WAIT).await;
    let follow = stack
        .api
        .create_task(json!({"request": {"method": "GET", "url": target.url("/start"), "follow_redirects": true}}))
        .await;
    stack.api.wait_for_status(follow["id"].as_str().expect("id"), "succeeded", WAIT).await;
    let paths: Vec<String> = target.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/start", "/start", "/final"]);
}

#[tokio::test]
async fn a_failed_task_retried_by_hand_continues_its_numbering() {
    let target = Target::start(&[404]).await;
    let stack = TestStack::start(stack_options("e-manual")).await;
    let id = stack.api.create("PUT", &target.url("/later-exists")).await;
    stack.api.wait_for_status(&id, "failed", WAIT).await;
    let (status, retried) = stack.api.post(&format!("/v1/tasks/{id}/retry"), "").await;
    assert_eq!(status, 200, "{retried}");
    assert!(retried["failure_reason"].is_null());
    let task = stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 2);
    let attempts = history(&stack, &id).await;
    assert_eq!(field(&attempts, "number"), [&json!(1), &json!(2)]);
    assert_eq!(field(&attempts, "status_code"), [&json!(404), &json!(200)]);
    assert_eq!(target.received()[1].header("courier-attempt"), Some("2"));
    let (status, e) = stack.api.post(&format!("/v1/tasks/{id}/retry"), "").await;
    assert_eq!((status, e["error"]["code"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn a_sender_killed_mid_request_loses_nothing_and_sends_once_more() {
    // The first answer takes 5 s; the task times out after 3 s; the sender is
    // killed mid-request; its lease (timeout + 1 s) expires; the message
    // comes back when the queue's visibility timeout ends (8 s here, 120 s
    // deployed: the task is in the queue all along, no reconciler needed);
    // a fresh sender delivers.
    let target = Target::start_with(vec![Reply::status(200).after(Duration::from_secs(5))]).await;
    let mut opts = stack_options("e-kill");
    opts.extra_env.push(("COURIER_LEASE_MARGIN_MS".into(), "1000".into()));
    opts.reconcile_every = None;
    let stack = TestStack::start(opts).await;
    aws_sdk_sqs::Client::new(&sdk().await)
        .set_queue_attributes()
        .queue_url(&stack.outputs().queue_url)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "8")
        .send()
        .await
        .expect("visibility timeout");
    // A receive already waiting (2 s long polls) keeps the timeout it started with.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/slow"), "timeout_ms": 3000}}))
        .await;
    let id = t["id"].as_str().expect("id");
    let first = eventually(WAIT, || async { (!target.received().is_empty()).then_some(()) }).await;
    assert!(first.is_some(), "the first request arrives");
    let killed_at = courier::domain::now_millis();
    stack.local.sender.kill();
    stack.local.sender.respawn().expect("respawn");
    let (_, mid) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(mid["status"], "sending", "the dead sender's claim holds until its lease ends");
    let task = stack.api.wait_for_status(id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 2);
    let attempts = history(&stack, id).await;
    assert_eq!(field(&attempts, "number"), [&json!(1), &json!(2)], "{attempts:?}");
    assert_eq!(field(&attempts, "outcome"), [&json!("interrupted"), &json!("success")]);
    let interrupted = &attempts[0];
    assert_eq!(interrupted["error"], courier::sender::INTERRUPTED_REASON);
    assert!(interrupted["status_code"].is_null());
    let got = target.received();
    assert_eq!(got.len(), 2);
    let started = time::OffsetDateTime::parse(
        interrupted["started_at"].as_str().expect("started_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    let started_ms = (started.unix_timestamp_nanos() / 1_000_000) as i64;
    assert!(
        started_ms <= got[0].at_ms && started_ms <= killed_at,
        "the interrupted attempt started ({started_ms}) before its request arrived ({}) and the kill ({killed_at})",
        got[0].at_ms
    );
    assert_eq!(got.iter().map(|r| r.header("courier-attempt").unwrap_or_default()).collect::<Vec<_>>(), ["1", "2"]);
}

#[tokio::test]
async fn the_reconciler_enqueues_a_scheduler_bound_task_whose_hand_over_never_happened() {
    let target = Target::start(&[]).await;
    let mut opts = stack_options("e-recon");
    opts.extra_env.push(("COURIER_RECONCILE_GRACE_S".into(), "1".into()));
    opts.reconcile_every = None; // run it by hand
    let stack = TestStack::start(opts).await;
    // What the API does when SQS fails right after the DynamoDB write: the task
    // exists, no message does. It was due 2 s ago, past the 1 s grace, so the
    // reconciler's pass (driven here) finds it at once.
    let store = courier::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk().await),
        &stack.outputs().names.table,
        90,
    )
    .with_reconcile_grace(1_000);
    let now = courier::domain::now_millis() - 2_000;
    let input = courier::domain::parse_create_task(
        json!({"request": {"method": "POST", "url": target.url("/lost")}}).to_string().as_bytes(),
        now,
    )
    .expect("valid");
    let task = courier::domain::NewTask {
        id: courier::domain::TaskId::generate(),
        tenant: stack.tenant_id(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: None,
        created_at: now,
        due_at: now,
        // Bound for Scheduler, written, then the hand-over never happened.
        on_scheduler: true,
        slot_taken: false,
    };
    use courier::ports::TaskStore;
    store.create(&task, None).await.expect("stored");
    let id = task.id.to_string();
    let report =
        stack.local.reconciler.invoke(&courier_local::stack::scheduled_event("it")).await.expect("reconciler runs");
    assert_eq!((&report["requeued"], &report["sample"]), (&json!(1), &json!([id])), "{report}");
    stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(target.received().len(), 1);
    // A second run finds nothing new to do.
    let again = stack.local.reconciler.invoke(&courier_local::stack::scheduled_event("it")).await.expect("runs");
    assert_eq!(again["requeued"], 0, "{again}");
}

#[tokio::test]
async fn a_retry_wait_beyond_what_sqs_holds_becomes_a_one_time_schedule() {
    let target = Target::start(&[500]).await;
    let stack = TestStack::start(stack_options("e-long")).await;
    let t = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/x")}, "retry": {"intervals": ["13h"]}}))
        .await;
    let id = t["id"].as_str().expect("id");
    let task = stack.api.wait_for_status(id, "retrying", WAIT).await;
    let due = task["next_run_at"].as_str().expect("next run").to_owned();
    let scheduler = aws_sdk_scheduler::Client::new(&sdk().await);
    let group = &stack.outputs().names.schedule_group;
    let found = eventually(WAIT, || async {
        let list = scheduler.list_schedules().group_name(group).send().await.ok()?;
        list.schedules.iter().find_map(|s| s.name().filter(|n| n.starts_with(id)).map(str::to_owned))
    })
    .await
    .expect("a retry schedule");
    let s = scheduler.get_schedule().group_name(group).name(&found).send().await.expect("schedule");
    let expr = s.schedule_expression().unwrap_or_default();
    // Fires 60 s before the due time (minute precision is enough to check here).
    let due_t = time::OffsetDateTime::parse(&due, &time::format_description::well_known::Rfc3339).expect("time");
    let fire = due_t - time::Duration::seconds(60);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    assert!(expr.starts_with(&format!("at({}", fire.format(&f).expect("fmt"))), "{expr} vs due {due}");
    // The queue holds no message for it any more: the wait is the schedule's alone.
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
}

#[tokio::test]
async fn every_batch_emits_one_emf_metric_line_with_its_attempts() {
    let target = Target::start(&[500]).await;
    let stack = TestStack::start(stack_options("e-emf")).await;
    let id = stack.api.create("POST", &target.url("/m")).await;
    stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    let log = crate::helpers::bin_dir().join("it-logs").join(format!("{}.log", stack.outputs().stack));
    let all: Vec<Value> =
        std::fs::read_to_string(log).expect("log").lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // The stack's only task: one batch with its failed attempt, one with its success.
    let lines: Vec<&Value> = all
        .iter()
        .filter(|v| v.get("_aws").is_some() && (v.get("Retried").is_some() || v.get("Delivered").is_some()))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let attempts = all.iter().filter(|v| v["message"] == "attempt" && v["task_id"] == id.as_str()).count();
    assert_eq!(attempts, 2, "one log line per attempt, naming its task");
    assert_eq!(lines[0]["Retried"], 1.0);
    assert_eq!(lines[1]["Delivered"], 1.0);
    assert_eq!(lines[1]["_aws"]["CloudWatchMetrics"][0]["Namespace"], courier::metrics::NAMESPACE);
    assert!(lines[0]["AttemptDurationMs"].is_number());
    assert!(lines[0]["ScheduleLagMs"].is_number(), "the first attempt reports its lag");
    assert!(lines[1].get("ScheduleLagMs").is_none(), "retries do not");
    // Both by outcome as well: one attempt each, server_error then success.
    for (line, outcome) in [(lines[0], "server_error"), (lines[1], "success")] {
        assert_eq!(line["Outcome"], outcome, "{line}");
        assert_eq!(line["Attempts"], 1.0, "{line}");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["Service"], ["Service", "Outcome"]])
        );
    }
}

#[tokio::test]
async fn a_task_cancelled_mid_send_finishes_that_attempt_and_is_not_retried() {
    let target = Target::start_with(vec![Reply::status(500).after(Duration::from_secs(2))]).await;
    let stack = TestStack::start(stack_options("e-cancel")).await;
    let id = stack.api.create("POST", &target.url("/busy")).await;
    let sending = eventually(WAIT, || async { (!target.received().is_empty()).then_some(()) }).await;
    assert!(sending.is_some(), "the attempt is under way");
    let (status, t) = stack.api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!((status, t["status"].as_str()), (200, Some("cancelled")), "{t}");
    // The attempt ends and is recorded; a retry would keep its message in flight.
    let recorded = eventually(WAIT, || async { (!history(&stack, &id).await.is_empty()).then_some(()) }).await;
    assert!(recorded.is_some(), "the attempt in flight is recorded");
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    let (_, t) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(t["status"], "cancelled");
    assert_eq!(target.received().len(), 1, "the 500 is not retried");
    let attempts = history(&stack, &id).await;
    assert_eq!(field(&attempts, "status_code"), [&json!(500)], "the attempt in flight is recorded");
}

#[tokio::test]
async fn a_batch_longer_than_the_invocation_sends_only_what_it_can_record_in_time() {
    // The sender function may run 12 s; each request takes 2 s (timeout 3 s);
    // one process sends one at a time. Eight tasks arrive in one batch: the
    // first invocation starts only the requests that can end and be recorded
    // before its deadline (5 s margin) and hands the rest back at once.
    let target = Target::start_with(vec![Reply::status(200).after(Duration::from_secs(2)); 8]).await;
    let mut opts = stack_options("e-deadline");
    opts.sender_instances = 1;
    opts.pollers = 1;
    opts.reconcile_every = None;
    opts.function_env.insert(
        "sender".into(),
        vec![("AWS_LAMBDA_FUNCTION_TIMEOUT".into(), "12".into()), ("COURIER_SENDER_CONCURRENCY".into(), "1".into())],
    );
    let stack = TestStack::start(opts).await;
    let tasks: Vec<Value> = (0..8)
        .map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/t{i}")), "timeout_ms": 3000}}))
        .collect();
    let (status, created) = stack.api.post("/v1/tasks/batch", &json!({"tasks": tasks}).to_string()).await;
    assert_eq!((status, &created["created"]), (200, &json!(8)), "{created}");
    let ids: Vec<String> = created["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["task"]["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 8, "{created}");
    // Without the deadline check the first invocation times out mid-request:
    // its batch waits out the 120 s visibility timeout and the request in
    // flight is sent again.
    for id in &ids {
        stack.api.wait_for_status(id, "succeeded", Duration::from_secs(60)).await;
    }
    let got = target.received();
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/t0", "/t1", "/t2", "/t3", "/t4", "/t5", "/t6", "/t7"], "each request sent once");
    for id in &ids {
        let attempts = history(&stack, id).await;
        assert_eq!(field(&attempts, "outcome"), [&json!("success")], "{id}: {attempts:?}");
    }
}

#[tokio::test]
async fn a_claim_applied_whose_answer_was_lost_is_still_the_claimers() {
    use courier::ports::{Claim, DeliveryLedger, TaskStore, Unit};
    use courier_local::fault_proxy::{Fault, FaultPlan, FaultProxy, Service};
    let sdk = sdk().await;
    let stack = crate::helpers::unique_stack("e-claimreset");
    let outputs = courier_local::bootstrap::bootstrap(&sdk, &stack).await.expect("bootstrap");
    let upstream = std::env::var("AWS_ENDPOINT_URL").expect("endpoint");
    let proxy = FaultProxy::start(&upstream, FaultPlan::uniform(0.0, 1)).await.expect("proxy");
    let through_proxy = aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(&proxy.url).build();
    let store =
        courier::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(through_proxy), &outputs.names.table, 90);
    let now = courier::domain::now_millis();
    let input = courier::domain::parse_create_task(
        json!({"request": {"method": "POST", "url": "http://claim.invalid/x"}}).to_string().as_bytes(),
        now,
    )
    .expect("valid");
    let task = courier::domain::NewTask {
        id: courier::domain::TaskId::generate(),
        tenant: courier::domain::TenantId::generate(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: None,
        created_at: now,
        due_at: now,
        on_scheduler: false,
        slot_taken: false,
    };
    store.create(&task, None).await.expect("stored");
    // The claim reaches DynamoDB and is applied; its answer is lost; the SDK
    // sends it again, and that try finds the task already `sending`.
    proxy.force(Service::DynamoDb, [Fault::ResetAfter]);
    let unit = Unit { task: task.id.clone(), run: None };
    let claim = store.claim(&unit, courier::domain::now_millis(), 1_000, None).await.expect("claim answers");
    let Claim::Claimed { state, interrupted_at, .. } = claim else { panic!("the claim is ours: {claim:?}") };
    assert_eq!((state.attempts, interrupted_at), (1, None));
    let stats = proxy.stats();
    assert_eq!(stats.get(&Service::DynamoDb).and_then(|s| s.faults.get(&Fault::ResetAfter)), Some(&1), "{stats:?}");
    // Another sender's claim, meanwhile, is refused: its copy comes back after the lease.
    let other = store.claim(&unit, courier::domain::now_millis(), 1_000, None).await.expect("claim answers");
    let lease = store.read_state(&unit).await.expect("read").and_then(|s| s.lease_until).expect("leased");
    assert!(matches!(other, Claim::NotDue(at) if at > lease), "{other:?} (lease until {lease})");
}
