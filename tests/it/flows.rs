//! Flow control end to end on the local stack: rate limits and parallelism
//! caps shared by two sender processes, the breaker's open → probe → close
//! cycle, a Retry-After pause every sender honours, fairness between tenants,
//! and holds that never reach the queue's redrive count. Every test checks,
//! for each task, that its `attempts` equal the requests the target received
//! for it: a held delivery is never an attempt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_local::arrivals::{max_per_second, per_second, sustained_rate};
use courier_local::stack::StackOptions;
use serde_json::{Value, json};

use crate::helpers::{Api, Reply, Target, TestStack, bin_dir, eventually, sdk, stack_options};

/// Options of a flow test stack: the sender re-reads policies and holds
/// every 300 ms, so a test sees a change within a fraction of a second.
fn flow_options(area: &str) -> StackOptions {
    let mut opts = stack_options(area);
    opts.extra_env.push(("COURIER_FLOW_CACHE_MS".into(), "300".into()));
    opts
}

/// A tenant whose quotas no test here reaches (600 tasks in a few seconds).
async fn roomy_tenant(stack: &TestStack, name: &str) -> Api {
    let quotas = json!({"max_active_tasks": 1_000_000, "create_rate_per_second": 100_000});
    let (_, key) = stack.admin.new_tenant(name, quotas).await;
    stack.api.with_key(Some(&key))
}

/// Creates the tasks (batches of 100); returns their ids in order and when each batch was sent.
async fn create_all(api: &Api, tasks: &[Value]) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(100) {
        let sent = courier::domain::now_millis();
        let (status, resp) = api.post("/v1/tasks/batch", &json!({"tasks": chunk}).to_string()).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["created"], chunk.len(), "{resp}");
        for r in resp["results"].as_array().expect("results") {
            out.push((r["task"]["id"].as_str().expect("id").to_owned(), sent));
        }
    }
    out
}

/// Sets a policy; `who` is the admin for a host key, the tenant for its named key.
async fn set_policy(who: &Api, key: &str, policy: Value) {
    let (status, body) = who.put(&format!("/v1/flows/{key}"), &policy.to_string()).await;
    assert!(status == 200 || status == 201, "PUT /v1/flows/{key} answered {status} {body}");
}

/// Waits until every task has `status`, reading each once it is the next not yet there.
async fn wait_all(api: &Api, ids: &[String], status: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        done.push(api.wait_for_status(id, status, left).await);
    }
    done
}

/// Each finished task's `attempts` equals the requests the target received for it.
fn assert_attempts_are_requests(tasks: &[Value], target: &Target) {
    let got = target.per_task();
    for t in tasks {
        let id = t["id"].as_str().expect("id");
        let received = got.get(id).copied().unwrap_or(0);
        assert_eq!(t["attempts"], received, "task {id}: attempts {} but the target received {received}", t["attempts"]);
    }
}

/// The functions' JSON log lines (EMF lines included).
fn log_lines(stack: &TestStack) -> Vec<Value> {
    let log = bin_dir().join("it-logs").join(format!("{}.log", stack.outputs().stack));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn millis(rfc3339: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{rfc3339} is not an RFC 3339 time: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn arrivals(target: &Target) -> Vec<i64> {
    let mut at: Vec<i64> = target.received().iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    at
}

#[tokio::test]
async fn the_target_counts_open_requests_and_switches_answers_while_running() {
    let target = Target::start_with(vec![Reply::status(503).header("retry-after", "5")]).await;
    target.answer_with(Reply::status(200).after(Duration::from_millis(300)));
    let http = reqwest::Client::new();
    let send = |i: usize| {
        let req = http.get(target.url(&format!("/t/{i}"))).header("courier-task-id", format!("tsk_{i}"));
        async move { req.send().await.expect("target answers") }
    };
    let first = send(0).await;
    assert_eq!((first.status().as_u16(), first.headers()["retry-after"].to_str().ok()), (503, Some("5")));
    let answers = futures_util::future::join_all((1..=4).map(send)).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(target.open(), (0, 4), "four slow answers were open at once, none is now");
    target.answer_with(Reply::status(500));
    assert_eq!(send(1).await.status(), 500);
    let per_task = target.per_task();
    assert_eq!((per_task["tsk_0"], per_task["tsk_1"], per_task.len()), (1, 2, 5));
    let at = arrivals(&target);
    assert_eq!(max_per_second(&[0, 100, 999, 1000, 1500, 2600], 0), 3);
    assert_eq!(max_per_second(&[0, 100, 999, 1000, 1500, 2600], 500), 3, "windows from 999: 999, 1000, 1500");
    assert!((sustained_rate(&(0..21).map(|i| i * 50).collect::<Vec<_>>()) - 20.0).abs() < 1e-9);
    assert_eq!(at.len(), 6);
}

/// Timed at the target: `make test` runs it alone after the suite (`--ignored`), since
/// on two busy cores the target's own clock and the senders' timers lag by hundreds of ms.
#[tokio::test]
#[ignore = "timed: make test runs it alone, after the suite"]
async fn a_rate_limit_holds_across_two_senders() {
    let target = Target::start(&[]).await;
    let mut opts = flow_options("f-rate");
    // The stream counter is off the delivery path; without it the emulator keeps up better.
    opts.stream_counter = false;
    opts.sender_instances = 2;
    let stack = TestStack::start(opts).await;
    let api = roomy_tenant(&stack, "rate").await;
    set_policy(&stack.admin, &target.addr.to_string(), json!({"rate": "20/s"})).await;

    let n = 600;
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/r/{i}")), "json": {"i": i}}}))
        .collect();
    // At most 300 waiting at once, as the bench does: the emulator slows down on deep queues.
    let mut ids = Vec::with_capacity(n);
    for chunk in tasks.chunks(100) {
        while ids.len() - target.received().len().min(ids.len()) + chunk.len() > 300 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids.extend(create_all(&api, chunk).await.into_iter().map(|(id, _)| id));
    }
    let all = eventually(Duration::from_secs(180), || async { (target.received().len() >= n).then_some(()) }).await;
    assert!(all.is_some(), "only {} of {n} requests arrived", target.received().len());
    let done = wait_all(&api, &ids, "succeeded", Duration::from_secs(60)).await;
    assert_attempts_are_requests(&done, &target);

    let at = arrivals(&target);
    let max_window = max_per_second(&at, at[0] + 1000);
    let rate = sustained_rate(&at);
    println!("rate 20/s, 2 senders, {n} tasks: max requests in a 1-s window {max_window}, sustained {rate:.2}/s");
    println!("requests per second: {:?}", per_second(&at));
    assert!(max_window <= 21, "{max_window} requests in one second (limit 20/s)");
    assert!((18.0..=20.5).contains(&rate), "sustained rate {rate:.2}/s, expected 18..=20.5");
}

#[tokio::test]
async fn parallelism_3_holds_when_a_sender_is_killed() {
    let target = Target::start_with(Vec::new()).await;
    target.answer_with(Reply::status(200).after(Duration::from_secs(2)));
    let mut opts = flow_options("f-par");
    opts.sender_instances = 2;
    opts.extra_env.push(("COURIER_LEASE_MARGIN_MS".into(), "2000".into()));
    let stack = TestStack::start(opts).await;
    let api = roomy_tenant(&stack, "par").await;
    set_policy(&stack.admin, &target.addr.to_string(), json!({"parallelism": 3})).await;

    let tasks: Vec<Value> = (0..30)
        .map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/p/{i}")), "timeout_ms": 4000}}))
        .collect();
    let started = Instant::now();
    let ids: Vec<String> = create_all(&api, &tasks).await.into_iter().map(|(id, _)| id).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = *stack.local.sender.pids().first().expect("a sender process");
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(killed.success(), "sender process {pid} killed");
    let killed_at = Instant::now();
    let before_kill = target.received().len();

    // The killed sender's leases end at timeout + margin (6 s): after that,
    // the others use all 3 slots again.
    let back = eventually(Duration::from_secs(30), || async { (target.open().0 == 3).then_some(Instant::now()) }).await;
    let back = back.expect("3 requests open at once again after the kill");
    let done = wait_all(&api, &ids, "succeeded", Duration::from_secs(240)).await;
    let took = started.elapsed();
    let (_, max_open) = target.open();
    println!(
        "parallelism 3: max open {max_open}, {before_kill} requests before the kill, all 3 slots busy again {:.1} s after it, all done in {:.1} s",
        back.duration_since(killed_at).as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(max_open <= 3, "{max_open} requests open at once (parallelism 3)");
    assert!(
        back.duration_since(killed_at) <= Duration::from_secs(4 + 2 + 4),
        "the slots came back {:?} after the kill (timeout 4 s + margin 2 s)",
        back.duration_since(killed_at)
    );
    // 30 × 2 s / 3 slots = 20 s of sending, plus the killed batch's messages,
    // which return only after the queue's visibility timeout.
    let bound = Duration::from_secs(courier::resources::QUEUE_VISIBILITY_TIMEOUT_S as u64 + 60);
    assert!(took <= bound, "all 30 took {took:?} (bound {bound:?})");
    assert_attempts_are_requests(&done, &target);
}

#[tokio::test]
async fn the_breaker_opens_probes_and_closes() {
    let target = Target::start_with(Vec::new()).await;
    target.answer_with(Reply::status(500));
    let stack = TestStack::start(flow_options("f-brk")).await;
    let api = &stack.api;
    let key = "brk-it";
    // The tenant wants its keys' breaker events.
    let events = json!({"events": ["flow.breaker_opened", "flow.breaker_closed"]});
    assert_eq!(stack.admin.patch(&format!("/v1/tenants/{}", stack.tenant), &events.to_string()).await.0, 200);
    let breaker = json!({"min_requests": 10, "failure_percent": 70, "window": "1m", "open_min": "2s", "probes": 2});
    set_policy(api, key, json!({"breaker": breaker})).await;

    let retry =
        json!({"max_attempts": 20, "backoff": {"initial": "1s", "multiplier": 1, "max": "1s", "jitter": "none"}});
    let tasks: Vec<Value> = (0..12)
        .map(|i| {
            json!({"request": {"method": "POST", "url": target.url(&format!("/b/{i}"))}, "flow_key": key, "retry": retry})
        })
        .collect();
    let ids: Vec<String> = create_all(api, &tasks).await.into_iter().map(|(id, _)| id).collect();
    let path = format!("/v1/flows/{key}");
    let open = eventually(Duration::from_secs(30), || async {
        let (_, v) = api.get(&path).await;
        (v["state"]["breaker"]["state"] == "open").then_some(v)
    })
    .await;
    assert!(open.is_some(), "the breaker did not open: {}", api.get(&path).await.1);
    target.answer_with(Reply::status(200));

    let done = wait_all(api, &ids, "succeeded", Duration::from_secs(60)).await;
    assert_attempts_are_requests(&done, &target);
    let closed = eventually(Duration::from_secs(10), || async {
        let (_, v) = api.get(&path).await;
        (v["state"]["breaker"]["state"] == "closed").then_some(v)
    })
    .await
    .expect("the breaker closes");

    let mut history: Vec<(i64, String)> = closed["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| (millis(&e["at"]), e["to"].as_str().unwrap_or_default().to_owned()))
        .collect();
    history.sort();
    let order: Vec<&str> = history.iter().map(|(_, to)| to.as_str()).collect();
    let first_open = order.iter().position(|t| *t == "open").unwrap_or_else(|| panic!("no open in {order:?}"));
    let half = first_open
        + order[first_open..]
            .iter()
            .position(|t| *t == "half_open")
            .unwrap_or_else(|| panic!("no half_open in {order:?}"));
    assert!(order[half..].contains(&"closed"), "history {order:?}: open → half_open → closed");
    assert_eq!(order.last(), Some(&"closed"), "{order:?}");

    // No request while open: between each open and the half-open after it
    // (a request already past the gate when it opened may land in the first 500 ms).
    let at = arrivals(&target);
    for (i, (opened, to)) in history.iter().enumerate().filter(|(_, (_, to))| to == "open") {
        let Some((probing, _)) = history[i..].iter().find(|(_, t)| t == "half_open") else { continue };
        let during: Vec<i64> = at.iter().copied().filter(|t| *t > opened + 500 && *t < *probing).collect();
        assert!(
            during.is_empty(),
            "{} requests while open ({to} at {opened}, half_open at {probing}): {during:?}",
            during.len()
        );
    }
    // The last half-open let at most `probes` requests through before closing.
    let (probing, _) = history.iter().rev().find(|(_, t)| t == "half_open").expect("half_open");
    let (closing, _) = history.iter().rev().find(|(_, t)| t == "closed").expect("closed");
    let probes = at.iter().filter(|t| **t >= *probing && **t <= *closing).count();
    println!("breaker: history {order:?}, {probes} probe(s) before closing");
    // Each open and close of the history reached the bus, with the tenant and key.
    let moves = order.iter().filter(|t| **t == "open" || **t == "closed").count();
    let got = crate::helpers::bus_events(&stack, moves).await;
    let seen: Vec<&str> = got.iter().map(|e| e["detail-type"].as_str().unwrap_or_default()).collect();
    assert_eq!(seen.len(), moves, "{got:#?}");
    assert!(seen.contains(&"flow.breaker_opened") && seen.last() == Some(&"flow.breaker_closed"), "{seen:?}");
    for e in &got {
        assert_eq!(e["detail"]["tenant"], stack.tenant.as_str());
        assert_eq!(e["detail"]["key"], format!("n:{}:{key}", stack.tenant));
    }
    assert!((1..=2).contains(&probes), "{probes} probes (policy: 2)");

    let opened_lines =
        log_lines(&stack).into_iter().filter(|l| l.get("_aws").is_some() && l["BreakerOpened"] == 1.0).count();
    assert!(opened_lines >= 1, "a BreakerOpened EMF line in the function log");
}

#[tokio::test]
async fn a_dead_target_does_not_delay_another_tenant() {
    let dead = Target::start_with(Vec::new()).await;
    dead.answer_with(Reply::status(200).after(Duration::from_secs(30)));
    let healthy = Target::start(&[]).await;
    let mut opts = flow_options("f-fair");
    opts.stream_counter = false;
    let stack = TestStack::start(opts).await;
    let a = roomy_tenant(&stack, "tenant-a").await;
    let b = roomy_tenant(&stack, "tenant-b").await;

    let max_attempts = 3;
    let a_tasks: Vec<Value> = (0..500)
        .map(|i| {
            json!({"request": {"method": "POST", "url": dead.url(&format!("/a/{i}")), "timeout_ms": 3000},
                   "retry": {"max_attempts": max_attempts}})
        })
        .collect();
    let a_ids: Vec<String> = create_all(&a, &a_tasks).await.into_iter().map(|(id, _)| id).collect();
    // Let A's deliveries fill the senders first.
    eventually(Duration::from_secs(30), || async { (dead.received().len() >= 10).then_some(()) })
        .await
        .expect("A's requests reach the dead target");

    let mut b_created = Vec::new();
    for i in 0..20 {
        let body = json!({"request": {"method": "POST", "url": healthy.url(&format!("/b/{i}"))}});
        let created_at = courier::domain::now_millis();
        let t = b.create_task(body).await;
        b_created.push((t["id"].as_str().expect("id").to_owned(), created_at));
    }
    let b_ids: Vec<String> = b_created.iter().map(|(id, _)| id.clone()).collect();
    let b_done = wait_all(&b, &b_ids, "succeeded", Duration::from_secs(60)).await;
    assert_attempts_are_requests(&b_done, &healthy);
    let arrived: HashMap<String, i64> = healthy
        .received()
        .iter()
        .map(|r| (r.header("courier-task-id").unwrap_or_default().to_owned(), r.at_ms))
        .collect();
    let mut delays: Vec<i64> = b_created.iter().map(|(id, at)| arrived[id] - at).collect();
    delays.sort_unstable();
    let (p50, max) = (delays[delays.len() / 2], delays[delays.len() - 1]);
    println!("fairness: tenant B's delivery delay behind 500 dead-target tasks: p50 {p50} ms, max {max} ms");
    assert!(max <= 10_000, "a B task waited {max} ms (delays {delays:?})");

    // Stop the senders, so A's counts hold still, then compare: a task still
    // `sending` may have been claimed (an attempt) without its request sent.
    stack.local.sender.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = dead.per_task();
    let mut attempted = 0;
    for id in &a_ids {
        let (_, t) = a.get(&format!("/v1/tasks/{id}")).await;
        let attempts = t["attempts"].as_u64().expect("attempts") as usize;
        let received = got.get(id).copied().unwrap_or(0);
        attempted += usize::from(attempts > 0);
        assert!(attempts <= max_attempts, "task {id}: {attempts} attempts, policy max {max_attempts}");
        if t["status"] == "sending" {
            assert!(
                attempts == received || attempts == received + 1,
                "task {id}: attempts {attempts}, received {received}"
            );
        } else {
            assert_eq!(attempts, received, "task {id} ({}): attempts {attempts}, received {received}", t["status"]);
        }
    }
    println!(
        "fairness: {attempted} of A's 500 tasks were attempted; {} requests reached the dead target",
        dead.received().len()
    );
}

/// Timed at the target: run alone after the suite, like the rate test.
#[tokio::test]
#[ignore = "timed: make test runs it alone, after the suite"]
async fn a_retry_after_pause_is_shared_by_two_senders() {
    let target = Target::start_with(vec![Reply::status(503).header("retry-after", "5")]).await;
    let mut opts = flow_options("f-pause");
    opts.sender_instances = 2;
    let stack = TestStack::start(opts).await;
    let api = roomy_tenant(&stack, "pause").await;
    let task = |i: usize| json!({"request": {"method": "POST", "url": target.url(&format!("/w/{i}"))}});
    // The first task is answered 503 with Retry-After: 5, and the pause is recorded.
    let mut ids: Vec<String> = create_all(&api, &[task(0)]).await.into_iter().map(|(id, _)| id).collect();
    let paused_at = crate::helpers::eventually(Duration::from_secs(20), || async {
        log_lines(&stack).iter().find(|l| l["event"] == "flow.paused").map(|l| millis(&l["timestamp"]))
    })
    .await
    .expect("the pause is logged");
    let t0 = target.received().first().expect("the first request").at_ms;
    println!("the pause was recorded {} ms after the 503", paused_at - t0);
    assert!(paused_at - t0 < 1_000, "recorded {} ms after the 503", paused_at - t0);
    // It reaches the other sender through the store within one policy-cache period
    // (300 ms here): the tasks created after that wait for the pause on both senders.
    let quiet_from = paused_at + 300 + 500;
    tokio::time::sleep(Duration::from_millis((quiet_from - courier::domain::now_millis()).max(0) as u64)).await;
    let later: Vec<Value> = (1..40).map(task).collect();
    ids.extend(create_all(&api, &later).await.into_iter().map(|(id, _)| id));
    let done = wait_all(&api, &ids, "succeeded", Duration::from_secs(60)).await;
    assert_attempts_are_requests(&done, &target);

    let got = target.received();
    let all = arrivals(&target);
    let after = all.iter().filter(|t| **t >= t0 + 5000).count();
    let at: Vec<i64> = all.iter().copied().filter(|t| *t > quiet_from && *t < t0 + 5000).collect();
    println!(
        "Retry-After 5: of {} requests, {} in (pause + 0.8 s, t0 + 5 s), {after} from t0 + 5 s",
        got.len(),
        at.len()
    );
    assert!(
        at.is_empty(),
        "requests during the pause, ms after the 503: {:?}",
        at.iter().map(|t| t - t0).collect::<Vec<_>>()
    );
    assert!(after >= 40, "every delivery after the 503 waited for the pause ({after} from t0 + 5 s)");
}

#[tokio::test]
async fn a_task_held_past_the_redrive_count_is_delivered() {
    // A rate limit alone spreads the waiting messages over its future slots
    // (2–3 holds each for 12 tasks); one request at a time to a target that
    // takes 2 s re-holds every waiting message every second or two.
    let target = Target::start_with(Vec::new()).await;
    target.answer_with(Reply::status(200).after(Duration::from_secs(2)));
    let mut opts = flow_options("f-redrive");
    opts.max_receive_count = 3;
    let stack = TestStack::start(opts).await;
    let key = target.addr.to_string();
    set_policy(&stack.admin, &key, json!({"rate": "1/s", "parallelism": 1})).await;
    let tasks: Vec<Value> =
        (0..12).map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/h/{i}"))}})).collect();
    let ids: Vec<String> = create_all(&stack.api, &tasks).await.into_iter().map(|(id, _)| id).collect();
    let done = wait_all(&stack.api, &ids, "succeeded", Duration::from_secs(90)).await;
    assert_attempts_are_requests(&done, &target);
    for t in &done {
        assert_eq!(t["attempts"], 1, "{t}");
    }

    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let parked = sqs
        .receive_message()
        .queue_url(&stack.outputs().dlq_url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive from the DLQ");
    assert!(parked.messages.unwrap_or_default().is_empty(), "the DLQ stays empty");

    let mut holds: HashMap<String, usize> = HashMap::new();
    let throttled: Vec<Value> = log_lines(&stack)
        .into_iter()
        .filter(|l| {
            l.get("_aws").is_some() && l["Throttled"] == 1.0 && l["flow_key"].as_str().is_some_and(|k| k.contains(&key))
        })
        .collect();
    for l in &throttled {
        *holds.entry(l["task_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    let past = ids.iter().filter(|id| holds.get(*id).copied().unwrap_or(0) > 3).count();
    println!(
        "held past the redrive count: {} Throttled lines; tasks held > 3 times: {past} of 12; {holds:?}",
        throttled.len()
    );
    assert!(past >= 6, "most tasks were held more than max_receive_count (3) times: {holds:?}");
}

/// A tenant's delivery limits (set by the admin in its quotas) hold across
/// all its targets: parallelism 2 over two hosts means at most two requests
/// open at once in all; held deliveries are not attempts; the limits show in
/// the tenant view and as a `tenant` flow key, and clear with `null`.
#[tokio::test]
async fn a_tenants_delivery_limits_hold_across_all_its_targets() {
    let (a, b) = (Target::start_with(Vec::new()).await, Target::start_with(Vec::new()).await);
    for t in [&a, &b] {
        t.answer_with(Reply::status(200).after(Duration::from_millis(400)));
    }
    let stack = TestStack::start(flow_options("f-tenant")).await;
    let quotas = json!({"max_active_tasks": 1_000_000, "create_rate_per_second": 100_000});
    let (tenant, key) = stack.admin.new_tenant("limited", quotas).await;
    let api = stack.api.with_key(Some(&key));
    let (_, list) = stack.admin.get("/v1/flows").await;
    assert_eq!(list["items"], json!([]), "no policy yet: {list}");
    let path = format!("/v1/tenants/{tenant}");
    for (body, field) in [
        (json!({"delivery_rate": "fast"}), "delivery_rate"),
        (json!({"delivery_rate": 5}), "delivery_rate"),
        (json!({"delivery_parallelism": 0}), "delivery_parallelism"),
        (json!({"delivery_parallelism": 33}), "delivery_parallelism"),
    ] {
        let (status, e) = stack.admin.patch(&path, &body.to_string()).await;
        assert_eq!((status, e["error"]["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    let (status, view) = stack.admin.patch(&path, r#"{"delivery_parallelism": 2, "delivery_rate": "600/m"}"#).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["quotas"]["delivery_parallelism"], &view["quotas"]["delivery_rate"]),
        (&json!(2), &json!("600/m"))
    );
    let (_, list) = stack.admin.get("/v1/flows").await;
    assert_eq!(list["items"][0]["kind"], "tenant", "{list}");
    assert_eq!(list["items"][0]["key"], tenant.as_str(), "{list}");
    tokio::time::sleep(Duration::from_millis(400)).await; // the senders' policy cache (300 ms)

    let tasks: Vec<Value> = (0..8)
        .map(|i| {
            let target = if i % 2 == 0 { &a } else { &b };
            json!({"request": {"method": "POST", "url": target.url(&format!("/t/{i}")), "timeout_ms": 3000}})
        })
        .collect();
    let ids: Vec<String> = create_all(&api, &tasks).await.into_iter().map(|(id, _)| id).collect();
    let mut most_open = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.received().len() + b.received().len() < 8 || a.open().0 + b.open().0 > 0 {
        most_open = most_open.max(a.open().0 + b.open().0);
        assert!(Instant::now() < deadline, "the 8 requests did not all arrive and finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = wait_all(&api, &ids, "succeeded", Duration::from_secs(60)).await;
    println!(
        "tenant parallelism 2 over two hosts: at most {most_open} open at once (host maxima {} and {})",
        a.open().1,
        b.open().1
    );
    assert!(most_open <= 2, "{most_open} requests open at once across the tenant's targets (limit 2)");
    assert!(a.open().1 >= 1 && b.open().1 >= 1);
    for t in [&a, &b] {
        let here = t.addr.to_string();
        let mine: Vec<Value> =
            done.iter().filter(|d| d["request"]["url"].as_str().is_some_and(|u| u.contains(&here))).cloned().collect();
        assert_eq!(mine.len(), 4, "{done:?}");
        assert_attempts_are_requests(&mine, t);
    }
    let held = log_lines(&stack)
        .iter()
        .filter(|l| l.get("_aws").is_some() && l["Throttled"] == 1.0 && l["flow_key"] == format!("t:{tenant}"))
        .count();
    assert!(held > 0, "deliveries were held on the tenant's key");

    // The CLI shows them and clears them (PATCH with nulls).
    // (tokio's process: the API answering it runs on this test's runtime)
    let courier = |args: &[&str]| {
        tokio::process::Command::new(bin_dir().join("courier"))
            .args(args)
            .env("COURIER_URL", &stack.local.api_url)
            .env("COURIER_API_KEY", stack.admin.key.as_deref().expect("admin key"))
            .env("COURIER_CONFIG", "/nonexistent")
            .output()
    };
    let shown = courier(&["tenants", "show", &tenant]).await.expect("courier runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("delivery rate     600/m") && text.contains("delivery parallel 2"),
        "{text}"
    );
    let cleared = courier(&["tenants", "limits", &tenant, "--clear", "-o", "json"]).await.expect("courier runs");
    assert!(cleared.status.success(), "{}", String::from_utf8_lossy(&cleared.stderr));
    let view: Value = serde_json::from_slice(&cleared.stdout).expect("JSON");
    assert_eq!(view["quotas"]["delivery_parallelism"], Value::Null);
    assert_eq!(view["quotas"]["delivery_rate"], Value::Null);
    let (_, list) = stack.admin.get("/v1/flows").await;
    assert_eq!(list["items"], json!([]), "{list}");
}
