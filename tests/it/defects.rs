//! Defects found in review, each reproduced against the emulator: a unique
//! key whose holder vanishes, counts for many tenants in one stream batch, a
//! task without its spec, slots of a batch that failed half-way, a duplicate
//! replay page, cron runs the reconciler must see, purge and a key held by
//! another task, and a reconciler that pages.

use std::time::Duration;

use courier::domain::{
    EpochMillis, NewTask, Quotas, Replay, ReplayFilter, ReplayId, ReplayStatus, TaskId, TaskStatus, Tenant, TenantId,
};
use courier::dynamo::DynamoStore;
use courier::ports::{
    Claim, CountStore, Created, DeliveryLedger, ReplayStore, TaskStore, TenantStore, Transition, UniqueKey, Unit,
};
use courier::sqs::SqsQueue;
use serde_json::{Value, json};

use crate::delivery::receive_all;
use crate::helpers::{Target, TestStack, eventually, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(30);

/// A store on the stack's table (reconcile grace 1 s).
async fn store(stack: &TestStack) -> DynamoStore {
    DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), &stack.outputs().names.table, 90)
        .with_reconcile_grace(1_000)
}

async fn queue(stack: &TestStack) -> SqsQueue {
    SqsQueue::new(aws_sdk_sqs::Client::new(&sdk().await), &stack.outputs().queue_url, &stack.outputs().dlq_url)
}

/// A valid one-off task of `tenant` sending to `url`, due at `due_at`.
fn new_task(tenant: &TenantId, url: &str, business_id: Option<&str>, due_at: EpochMillis) -> NewTask {
    let now = courier::domain::now_millis();
    let input = courier::domain::parse_create_task(
        json!({"request": {"method": "POST", "url": url}, "retry": {"intervals": []}}).to_string().as_bytes(),
        now,
    )
    .expect("valid");
    NewTask {
        id: TaskId::generate(),
        tenant: tenant.clone(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: business_id.map(str::to_owned),
        created_at: now,
        due_at,
        on_scheduler: false,
        slot_taken: false,
    }
}

/// Removes a task's request, wherever it is kept (inline in its state or in a SPEC item).
async fn drop_spec(stack: &TestStack, id: &TaskId) {
    delete_item(stack, format!("TASK#{id}"), "SPEC").await;
    aws_sdk_dynamodb::Client::new(&sdk().await)
        .update_item()
        .table_name(&stack.outputs().names.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("TASK#{id}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("STATE".into()))
        .update_expression("REMOVE spec, retry, schedule")
        .send()
        .await
        .expect("update");
}

async fn delete_item(stack: &TestStack, pk: String, sk: &str) {
    aws_sdk_dynamodb::Client::new(&sdk().await)
        .delete_item()
        .table_name(&stack.outputs().names.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.to_owned()))
        .send()
        .await
        .expect("delete");
}

/// Ends a stored one-off task as `failed` through a claim, as a sender would.
async fn fail(store: &DynamoStore, id: &TaskId) {
    let unit = Unit { task: id.clone(), run: None };
    let now = courier::domain::now_millis();
    let Claim::Claimed { state: st, .. } = store.claim(&unit, now, 1_000, None).await.expect("claim") else {
        panic!("claimable")
    };
    let t = Transition::Failed { reason: "HTTP 500".into(), status: Some(500) };
    assert!(store.finish(&unit, st.attempts, &t, now, None).await.expect("finish"));
}

/// Every message on a queue (delayed ones included), each body parsed.
async fn drain(queue_url: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let (mut got, mut quiet) = (Vec::new(), 0);
    while quiet < 3 {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(120)
            .send()
            .await
            .expect("receive");
        let msgs = out.messages.unwrap_or_default();
        quiet = if msgs.is_empty() { quiet + 1 } else { 0 };
        got.extend(msgs.iter().filter_map(|m| serde_json::from_str::<Value>(m.body().unwrap_or_default()).ok()));
    }
    got
}

fn quiet_stack(area: &str) -> courier_local::stack::StackOptions {
    let mut opts = stack_options(area);
    opts.pollers = 0;
    opts.reconcile_every = None;
    opts
}

#[tokio::test]
async fn a_create_takes_a_unique_key_whose_orphaned_holder_vanished_instead_of_spinning() {
    let stack = TestStack::start(quiet_stack("d-orphan")).await;
    let store = store(&stack).await;
    // A creator died after taking the key: it names a task that never got a state.
    let dead = new_task(&stack.tenant_id(), "https://hook.invalid/a", None, courier::domain::now_millis());
    let key = UniqueKey::IdempotencyKey("order-1".into());
    assert_eq!(store.create(&dead, Some(&key)).await.expect("first"), Created::New);
    delete_item(&stack, format!("TASK#{}", dead.id), "STATE").await;
    // While the next create waits for the orphan's creator, the key goes away (its TTL, a discard).
    let next = new_task(&stack.tenant_id(), "https://hook.invalid/b", None, courier::domain::now_millis());
    let creating = tokio::spawn({
        let store = store.clone();
        let (next, key) = (next.clone(), key.clone());
        async move { store.create(&next, Some(&key)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    delete_item(&stack, format!("UNIQUE#{}#I#order-1", stack.tenant), "UNIQUE").await;
    let created = tokio::time::timeout(Duration::from_secs(10), creating)
        .await
        .expect("the create finishes instead of spinning on a vanished key")
        .expect("joined")
        .expect("created");
    assert_eq!(created, Created::New);
    assert_eq!(store.find_by_key(&stack.tenant_id(), &key).await.expect("read"), Some(next.id));
}

#[tokio::test]
async fn the_counter_applies_every_tenant_of_a_stream_batch_once() {
    let mut opts = quiet_stack("d-count");
    opts.stream_counter = false; // the test is the stream
    let stack = TestStack::start(opts).await;
    let store = store(&stack).await;
    // More tenants than one transaction holds (two writes each, 100 items at most).
    let tenants: Vec<Tenant> = (0..60)
        .map(|i| Tenant {
            id: TenantId::generate(),
            name: format!("t{i}"),
            enabled: true,
            quotas: Quotas::default(),
            active: 0,
            created_at: 0,
        })
        .collect();
    futures_util::future::join_all(tenants.iter().map(|t| async {
        store.create_tenant(t).await.expect("tenant");
        assert!(store.reserve_active(t, 1).await.expect("reserve"));
    }))
    .await;
    // One delivered task per tenant, in one stream batch (Lambda's DynamoDB event records).
    let image = |tenant: &str, status: &str| json!({"tenant": {"S": tenant}, "status": {"S": status}});
    let records: Vec<Value> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"eventID": format!("ev{i}"), "eventName": "MODIFY", "dynamodb": {
                "Keys": {"pk": {"S": format!("TASK#tsk_{i}")}, "sk": {"S": "STATE"}},
                "OldImage": image(t.id.as_str(), "pending"), "NewImage": image(t.id.as_str(), "succeeded")}})
        })
        .collect();
    assert!(courier::counter::apply(&store, &records).await.expect("applied"));
    // The same batch again (Lambda retries it): nothing is counted twice.
    assert!(!courier::counter::apply(&store, &records).await.expect("applied"));
    let seen = futures_util::future::join_all(tenants.iter().map(|t| async {
        let counts = store.counts(&t.id).await.expect("counts");
        let succeeded = counts.iter().find(|(s, _)| *s == TaskStatus::Succeeded).map(|(_, n)| *n);
        let active = store.get_tenant(&t.id).await.expect("tenant").expect("exists").active;
        (t.id.clone(), succeeded, active)
    }))
    .await;
    for (tenant, succeeded, active) in seen {
        assert_eq!(succeeded, Some(1), "tenant {tenant} counted once");
        assert_eq!(active, 0, "tenant {tenant} got its slot back");
    }
}

#[tokio::test]
async fn a_batch_retried_after_a_partial_apply_counts_each_tenant_once_and_racing_batches_both_count() {
    let mut opts = quiet_stack("d-count2");
    opts.stream_counter = false; // the test is the stream
    let stack = TestStack::start(opts).await;
    let store = store(&stack).await;
    let tenant = |name: &str| Tenant {
        id: TenantId::generate(),
        name: name.into(),
        enabled: true,
        quotas: Quotas::default(),
        active: 0,
        created_at: 0,
    };
    let (a, b) = (tenant("a"), tenant("b"));
    store.create_tenant(&a).await.expect("a");
    store.create_tenant(&b).await.expect("b");
    // Each batch also delivered one task in the minute before now.
    let minute = courier::domain::now_millis() / 60_000 * 60_000 - 60_000;
    let delivered = courier::domain::Activity { delivered: 1, ..Default::default() };
    let one = |active: i64| courier::domain::TenantDelta {
        statuses: [(TaskStatus::Pending, 1)].into_iter().collect(),
        active,
        minutes: [(minute, delivered)].into_iter().collect(),
    };
    // The counter died after applying tenant a's part: Lambda retries the whole batch.
    let only_a: courier::domain::Deltas = [(a.id.to_string(), one(1))].into_iter().collect();
    let both: courier::domain::Deltas = [(a.id.to_string(), one(1)), (b.id.to_string(), one(1))].into_iter().collect();
    assert!(store.apply_counts("ev1..ev2", &only_a).await.expect("first try"));
    assert!(store.apply_counts("ev1..ev2", &both).await.expect("retry"), "b's part is new");
    assert!(!store.apply_counts("ev1..ev2", &both).await.expect("again"), "nothing new");
    // Counters of two stream shards apply their batches to one tenant at once.
    let racing = futures_util::future::join_all((0..8).map(|i| {
        let (store, deltas) = (store.clone(), only_a.clone());
        async move { store.apply_counts(&format!("shard{i}..x"), &deltas).await.expect("applied") }
    }))
    .await;
    assert!(racing.iter().all(|applied| *applied));
    let pending = |t: TenantId| {
        let store = store.clone();
        async move {
            let counts = store.counts(&t).await.expect("counts");
            let active = store.get_tenant(&t).await.expect("read").expect("exists").active;
            (counts.iter().find(|(s, _)| *s == TaskStatus::Pending).map(|(_, n)| *n), active)
        }
    };
    assert_eq!(pending(a.id.clone()).await, (Some(9), 9), "once from the batch, once per racing batch");
    assert_eq!(pending(b.id.clone()).await, (Some(1), 1));
    // The per-minute activity counts each batch once too.
    let activity = store.activity(&a.id, minute - 60_000).await.expect("activity");
    assert_eq!(activity, vec![(minute, courier::domain::Activity { delivered: 9, ..Default::default() })]);
    assert_eq!(store.activity(&b.id, minute).await.expect("activity")[0].1.delivered, 1);
    assert!(store.activity(&a.id, minute + 60_000).await.expect("activity").is_empty(), "nothing after");
}

#[tokio::test]
async fn a_claimed_task_without_its_spec_ends_failed_and_gives_its_slot_back() {
    let mut opts = stack_options("d-nospec");
    opts.reconcile_every = None;
    let stack = TestStack::start(opts).await;
    let store = store(&stack).await;
    // What a partial batch write leaves (or a retry after the spec expired): a state, no spec.
    let mut task = new_task(&stack.tenant_id(), "https://hook.invalid/x", None, courier::domain::now_millis());
    let tenant = store.get_tenant(&stack.tenant_id()).await.expect("tenant").expect("exists");
    assert!(store.reserve_active(&tenant, 1).await.expect("reserve"));
    task.slot_taken = true;
    store.create(&task, None).await.expect("stored");
    drop_spec(&stack, &task.id).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let body = courier::domain::QueueMessage::deliver(&task.id, None).to_body();
    sqs.send_message().queue_url(&stack.outputs().queue_url).message_body(body).send().await.expect("send");
    let unit = Unit { task: task.id.clone(), run: None };
    let ended = eventually(WAIT, || async {
        store.read_state(&unit).await.ok().flatten().filter(|st| st.status == TaskStatus::Failed)
    })
    .await;
    let state = store.read_state(&unit).await.expect("read");
    let ended = ended.unwrap_or_else(|| panic!("the task ends failed, not sending forever: {state:?}"));
    assert_eq!(ended.failure_reason, Some(format!("task {} has no request spec", task.id)));
    let parked = receive_all(&stack.outputs().dlq_url, 1).await;
    assert!(parked.iter().any(|m| m.body().unwrap_or_default().contains("has no request spec")));
    let freed = eventually(WAIT, || async {
        let (_, s) = stack.api.get("/v1/stats").await;
        (s["active_tasks"] == 0).then_some(())
    })
    .await;
    assert!(freed.is_some(), "its active-task slot comes back: {}", stack.api.get("/v1/stats").await.1);
}

#[tokio::test]
async fn a_batch_whose_existing_task_cannot_be_shown_gives_back_its_unused_slots() {
    let stack = TestStack::start(quiet_stack("d-slots")).await;
    let later = |path: &str, bid: Option<&str>| {
        let mut t = json!({"request": {"method": "POST", "url": format!("https://hook.invalid/{path}")},
                           "schedule": {"delay": "1h"}});
        if let Some(b) = bid {
            t["business_id"] = json!(b);
        }
        t
    };
    let first = stack.api.create_task(later("a", Some("order-7"))).await;
    let id = first["id"].as_str().expect("id");
    // The holder of the business id can no longer be shown (its spec expired).
    drop_spec(&stack, &TaskId::parse(id).expect("task id")).await;
    let body = json!({"tasks": [later("a", Some("order-7")), later("b", None)]}).to_string();
    let (status, resp) = stack.api.post("/v1/tasks/batch", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["results"][0]["status"], 404, "{resp}");
    assert_eq!(resp["results"][1]["status"], 201, "{resp}");
    // One slot for the first task, one for the batch's new task; none for the existing one
    // (counted by the stream counter: far below its quota, a create takes no slot itself).
    let counted = eventually(WAIT, || async {
        let (_, stats) = stack.api.get("/v1/stats").await;
        (stats["active_tasks"] == 2).then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", stack.api.get("/v1/stats").await.1);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (_, stats) = stack.api.get("/v1/stats").await;
    assert_eq!(stats["active_tasks"], 2, "and no more: {stats}");
}

#[tokio::test]
async fn a_duplicate_replay_page_message_does_not_fork_the_chain() {
    let stack = TestStack::start(quiet_stack("d-replay")).await;
    let (store, queue) = (store(&stack).await, queue(&stack).await);
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = new_task(&stack.tenant_id(), &format!("https://hook.invalid/{i}"), None, courier::domain::now_millis());
        store.create(&t, None).await.expect("stored");
        fail(&store, &t.id).await;
        ids.push(t.id);
    }
    let now = courier::domain::now_millis();
    let replay = Replay::start(ReplayId::generate(), stack.tenant_id(), ReplayFilter::all_failed(), 1, now);
    store.put_replay(&replay).await.expect("stored");
    // The first page's message, delivered twice.
    courier::replays::step(&store, &queue, &replay.id, 0, 0).await.expect("page");
    courier::replays::step(&store, &queue, &replay.id, 0, 0).await.expect("duplicate");
    let bodies = drain(&stack.outputs().queue_url).await;
    let pages: Vec<&Value> = bodies.iter().filter(|b| b["type"] == "replay.v1").collect();
    let delivers = bodies.iter().filter(|b| b["type"] == "deliver.v1").count();
    assert_eq!(pages.len(), 1, "one next-page message, not a fork: {bodies:?}");
    assert_eq!(pages[0]["page"], 1);
    assert_eq!(delivers, 1, "one page replayed once: {bodies:?}");
    let doc = store.get_replay(&replay.id).await.expect("read").expect("exists");
    assert_eq!((doc.page, doc.replayed, doc.skipped), (1, 1, 0));
}

#[tokio::test]
async fn purge_frees_a_business_id_for_a_new_task() {
    let stack = TestStack::start(quiet_stack("d-purge")).await;
    let store = store(&stack).await;
    let now = courier::domain::now_millis();
    // A business id names its task: the same id again is the same task.
    let mut old = new_task(&stack.tenant_id(), "https://hook.invalid/old", Some("order-9"), now);
    old.id = TaskId::derive(&stack.tenant_id(), "order-9");
    let key = UniqueKey::BusinessId("order-9".into());
    assert_eq!(store.create(&old, Some(&key)).await.expect("stored"), Created::New);
    let mut again = new_task(&stack.tenant_id(), "https://hook.invalid/again", Some("order-9"), now);
    again.id = old.id.clone();
    assert_eq!(store.create(&again, Some(&key)).await.expect("read"), Created::Existing(old.id.clone()));
    fail(&store, &old.id).await;
    assert!(store.purge(&old.id).await.expect("purged"));
    assert_eq!(store.find_by_key(&stack.tenant_id(), &key).await.expect("read"), None, "purged with its task");
    let mut new = new_task(&stack.tenant_id(), "https://hook.invalid/new", Some("order-9"), now);
    new.id = old.id.clone();
    assert_eq!(store.create(&new, Some(&key)).await.expect("stored"), Created::New);
    let found = store.get(&new.id).await.expect("read").expect("the new task");
    assert_eq!(found.spec.url.as_str(), "https://hook.invalid/new");
    assert_eq!(found.state.attempts, 0, "nothing of the purged task is left");
}

#[tokio::test]
async fn the_reconciler_pages_resumes_from_its_watermarks_and_reports_a_bounded_sample() {
    let stack = TestStack::start(quiet_stack("d-recon")).await;
    let (store, queue) = (store(&stack).await, queue(&stack).await);
    // Due two minutes ago; the reconciler's grace is one minute, so what it requeues
    // is not due for another look during the test.
    let due = courier::domain::now_millis() - 120_000;
    // Bound for Scheduler, whose hand-over never happened (queue-bound tasks are sent before
    // they are written: they never need this).
    let tasks: Vec<NewTask> = (0..30)
        .map(|i| {
            let mut t = new_task(&stack.tenant_id(), &format!("https://hook.invalid/{i}"), None, due);
            t.on_scheduler = true;
            t
        })
        .collect();
    assert!(store.create_many(&tasks, false).await.expect("stored").iter().all(|ok| *ok));
    // One candidate per page, eight pages per run: a run stops part-way and the next goes on.
    let reconciler =
        courier::reconciler::Reconciler::new(store.clone(), queue, Duration::from_secs(60)).with_paging(1, 8);
    let mut requeued = 0;
    let mut runs = 0;
    loop {
        let report = reconciler.run_once(courier::domain::now_millis()).await.expect("runs");
        runs += 1;
        assert!(report.examined <= 8 && report.sample.len() <= 20, "{report:?}");
        assert_eq!(report.sample.len(), report.requeued.min(20));
        requeued += report.requeued;
        if report.complete {
            break;
        }
        assert!(runs < 20, "the runs make progress");
    }
    assert!(runs >= 4, "30 candidates at 8 pages a run take several runs ({runs})");
    assert_eq!(requeued, 30, "every stuck task requeued exactly once");
    assert_eq!(drain(&stack.outputs().queue_url).await.len(), 30);
    let again = reconciler.run_once(courier::domain::now_millis()).await.expect("runs");
    assert_eq!((again.requeued, again.complete), (0, true), "{again:?}");
}

/// A cron task (never fired by a scheduler here) and its id.
async fn cron_task(stack: &TestStack, url: &str, retry: Value) -> String {
    let t = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": url}, "schedule": {"cron": "0 0 1 1 *", "timezone": "UTC"}, "retry": retry}))
        .await;
    t["id"].as_str().expect("id").to_owned()
}

async fn run_state(store: &DynamoStore, id: &str, run: EpochMillis) -> Option<courier::domain::TaskState> {
    store.read_state(&Unit { task: TaskId::parse(id).expect("id"), run: Some(run) }).await.expect("read")
}

#[tokio::test]
async fn a_cron_run_whose_message_was_lost_is_requeued_by_the_reconciler() {
    let target = Target::start(&[]).await;
    let mut opts = stack_options("d-runlost");
    opts.reconcile_every = None;
    opts.extra_env.push(("COURIER_RECONCILE_GRACE_S".into(), "1".into()));
    let stack = TestStack::start(opts).await;
    let store = store(&stack).await;
    let id = cron_task(&stack, &target.url("/run"), json!({"intervals": []})).await;
    // The firing started its run, then its message went to the SQS dead-letter queue.
    let run = courier::domain::now_millis() - 5_000;
    let parent = store.read_state(&Unit { task: TaskId::parse(&id).expect("id"), run: None }).await.expect("read");
    store.start_run(&parent.expect("parent"), run).await.expect("run");
    let report =
        stack.local.reconciler.invoke(&courier_local::stack::scheduled_event("it")).await.expect("reconciler runs");
    assert_eq!(report["requeued"], 1, "{report}");
    assert_eq!(report["sample"], json!([format!("{id}@{}", courier::domain::format_millis(run))]));
    let done = eventually(WAIT, || async {
        run_state(&store, &id, run).await.filter(|st| st.status == TaskStatus::Succeeded)
    })
    .await;
    assert!(done.is_some(), "the run is delivered: {:?}", run_state(&store, &id, run).await);
    let got = target.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("courier-scheduled-time"), Some(courier::domain::format_millis(run).as_str()));
}

#[tokio::test]
async fn a_stuck_run_of_a_paused_cron_task_ends_cancelled_instead_of_retrying_forever() {
    let target = Target::start(&[500]).await;
    let mut opts = stack_options("d-runpause");
    opts.reconcile_every = None;
    opts.extra_env.push(("COURIER_RECONCILE_GRACE_S".into(), "1".into()));
    let stack = TestStack::start(opts).await;
    let store = store(&stack).await;
    let id = cron_task(&stack, &target.url("/run"), json!({"intervals": ["3s"]})).await;
    let run = courier::domain::now_millis() - 1_000;
    let firing = json!({"type": "cron.v1", "task_id": id, "scheduled_time": courier::domain::format_millis(run)});
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let q = &stack.outputs().queue_url;
    sqs.send_message().queue_url(q).message_body(firing.to_string()).send().await.expect("send");
    let retrying =
        eventually(WAIT, || async { run_state(&store, &id, run).await.filter(|st| st.status == TaskStatus::Retrying) })
            .await;
    assert!(retrying.is_some(), "the first attempt failed and a retry is due");
    // Paused before the retry comes: the sender skips the retry's message.
    let (status, _) = stack.api.post(&format!("/v1/tasks/{id}/pause"), "").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(target.received().len(), 1, "nothing sent while paused");
    assert_eq!(run_state(&store, &id, run).await.map(|st| st.status), Some(TaskStatus::Retrying));
    let report = stack.local.reconciler.invoke(&courier_local::stack::scheduled_event("it")).await.expect("runs");
    assert_eq!((&report["ended"], &report["requeued"]), (&json!(1), &json!(0)), "{report}");
    let ended = run_state(&store, &id, run).await.expect("run");
    assert_eq!(ended.status, TaskStatus::Cancelled);
    assert_eq!(ended.failure_reason.as_deref(), Some("skipped: the cron task is paused"));
}

/// Fails the `nth` manual-retry write (an UpdateItem moving a task back to
/// pending) of a real DynamoDB client: a fault at the SDK's edge.
#[derive(Debug)]
struct FailNthRetry {
    nth: usize,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl aws_sdk_dynamodb::config::Intercept for FailNthRetry {
    fn name(&self) -> &'static str {
        "FailNthRetry"
    }

    fn read_before_execution(
        &self,
        ctx: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let input = ctx.input().downcast_ref::<aws_sdk_dynamodb::operation::update_item::UpdateItemInput>();
        if input.and_then(|i| i.update_expression()).is_some_and(|e| e.contains("retry_base = attempts")) {
            let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == self.nth {
                return Err("injected: the store dropped the connection".into());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_replay_page_cut_short_by_a_store_error_gives_back_the_slots_it_did_not_use() {
    let mut opts = quiet_stack("d-replay-slots");
    opts.stream_counter = false; // slots move only by reservation and release here
    let stack = TestStack::start(opts).await;
    let (plain, queue) = (store(&stack).await, queue(&stack).await);
    for i in 0..3 {
        let t = new_task(&stack.tenant_id(), &format!("https://hook.invalid/{i}"), None, courier::domain::now_millis());
        plain.create(&t, None).await.expect("stored");
        fail(&plain, &t.id).await;
    }
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk().await)
        .interceptor(FailNthRetry { nth: 2, seen: Default::default() })
        .build();
    let faulty = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(conf), &stack.outputs().names.table, 90);
    let now = courier::domain::now_millis();
    let replay = Replay::start(ReplayId::generate(), stack.tenant_id(), ReplayFilter::all_failed(), 3, now);
    plain.put_replay(&replay).await.expect("stored");
    let active = || async { plain.get_tenant(&stack.tenant_id()).await.expect("read").expect("tenant").active };
    assert_eq!(active().await, 0);
    // The page reserves three slots, replays one task, then the store fails.
    assert!(courier::replays::step(&faulty, &queue, &replay.id, 0, 0).await.is_err());
    assert_eq!(active().await, 1, "only the replayed task keeps a slot");
    // The message comes back: the same page is done again and finishes the replay.
    courier::replays::step(&plain, &queue, &replay.id, 0, 0).await.expect("page");
    assert_eq!(active().await, 3);
    let doc = plain.get_replay(&replay.id).await.expect("read").expect("exists");
    assert_eq!((doc.replayed, doc.status, doc.page), (3, ReplayStatus::Done, 1), "{doc:?}");
}
