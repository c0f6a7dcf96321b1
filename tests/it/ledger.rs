//! The sender's ledger on DynamoDB against the emulator: a first-try success
//! is two writes (its attempt rides on the finish), the attempts listing and
//! the last attempt answer as when every attempt was an item, a request kept
//! on the state item comes back with the claim (no read), a retry puts the
//! task in the reconcile index, and a message that arrives before its task is
//! written waits for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use courier::domain::{
    Attempt, EpochMillis, NewTask, Outcome, QueueMessage, TargetGuard, TargetPolicy, TaskId, TaskStatus, TenantId,
    now_millis,
};
use courier::dynamo::DynamoStore;
use courier::ports::{Claim, DeliveryLedger, Record, TaskStore, Transition, Unit};
use serde_json::json;

use crate::helpers::{sdk, unique_stack};

struct Table {
    store: DynamoStore,
    client: aws_sdk_dynamodb::Client,
    outputs: courier_local::bootstrap::Outputs,
}

async fn table(area: &str) -> Table {
    let sdk = sdk().await;
    let outputs = courier_local::bootstrap::bootstrap(&sdk, &unique_stack(area)).await.expect("bootstrap");
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let store = DynamoStore::new(client.clone(), &outputs.names.table, 90).with_reconcile_grace(1_000);
    Table { store, client, outputs }
}

impl Table {
    async fn item(&self, id: &TaskId, sk: &str) -> Option<HashMap<String, AttributeValue>> {
        self.client
            .get_item()
            .table_name(&self.outputs.names.table)
            .key("pk", AttributeValue::S(format!("TASK#{id}")))
            .key("sk", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
    }

    /// The sort keys of the task's own attempt items.
    async fn attempt_items(&self, id: &TaskId) -> Vec<String> {
        let out = self
            .client
            .query()
            .table_name(&self.outputs.names.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :a)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("TASK#{id}")))
            .expression_attribute_values(":a", AttributeValue::S("ATTEMPT#".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("query");
        out.items().iter().filter_map(|i| i.get("sk").and_then(|v| v.as_s().ok()).cloned()).collect()
    }
}

fn tenant() -> TenantId {
    TenantId::parse("tnt_00000000000000ab").expect("tenant id")
}

fn new_task(url: &str, retry: serde_json::Value) -> NewTask {
    let now = now_millis();
    let input = courier::domain::parse_create_task(
        json!({"request": {"method": "POST", "url": url}, "retry": retry}).to_string().as_bytes(),
        now,
    )
    .expect("valid");
    NewTask {
        id: TaskId::generate(),
        tenant: tenant(),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: None,
        created_at: now,
        due_at: now,
        on_scheduler: false,
        slot_taken: false,
    }
}

fn attempt(number: u32, outcome: Outcome, status: u16, body: Option<String>) -> Attempt {
    Attempt {
        run: None,
        number,
        started_at: now_millis(),
        method: "POST".into(),
        url: "https://ledger.invalid/hook".into(),
        request_headers: vec![("courier-attempt".into(), number.to_string())],
        request_body_size: 0,
        response_headers: vec![("content-length".into(), "0".into())],
        duration_ms: 12,
        status_code: Some(status),
        outcome,
        response_body: body,
        error: None,
        next_delay_ms: None,
    }
}

/// Claims the unit: its state, its inline request (if any) and its size.
async fn claim(store: &DynamoStore, unit: &Unit) -> (u32, bool, usize) {
    match store.claim(unit, now_millis(), 5_000, None).await.expect("claim") {
        Claim::Claimed { state, inline, item_bytes, .. } => (state.attempts, inline.is_some(), item_bytes),
        other => panic!("not claimed: {other:?}"),
    }
}

#[tokio::test]
async fn a_first_try_success_is_two_writes_and_its_attempt_is_listed_as_before() {
    let t = table("ledger-one").await;
    let task = new_task("https://ledger.invalid/hook", json!({"intervals": []}));
    t.store.create(&task, None).await.expect("create");
    let unit = Unit { task: task.id.clone(), run: None };
    let (number, _, bytes) = claim(&t.store, &unit).await;
    assert!(bytes > 100 && bytes < 1024, "the state item is small: {bytes} bytes");
    let a = attempt(number, Outcome::Success, 200, Some("ok".into()));
    let record = Record { attempt: &a, item_bytes: bytes };
    assert!(
        t.store
            .finish(&unit, number, &Transition::Succeeded { status: Some(200) }, now_millis(), Some(record))
            .await
            .expect("finish")
    );
    // The claim and the finish: no attempt item was written, the attempt is on the state item.
    assert!(t.attempt_items(&task.id).await.is_empty());
    let state = t.item(&task.id, "STATE").await.expect("state");
    assert!(state.contains_key("att_1"), "{state:?}");
    assert_eq!(state["status"].as_s().ok().map(String::as_str), Some("succeeded"));
    let page = t.store.attempts(&task.id, 10, None).await.expect("attempts");
    assert_eq!((page.items, page.cursor), (vec![a.clone()], None));
    assert_eq!(t.store.last_attempt(&task.id).await.expect("last"), Some(a));
}

#[tokio::test]
async fn an_attempt_too_big_for_the_state_item_is_its_own_item() {
    let t = table("ledger-big").await;
    let task = new_task("https://ledger.invalid/hook", json!({"intervals": []}));
    t.store.create(&task, None).await.expect("create");
    let unit = Unit { task: task.id.clone(), run: None };
    let (number, _, bytes) = claim(&t.store, &unit).await;
    let a = attempt(number, Outcome::ClientError, 400, Some("x".repeat(900)));
    let failed = Transition::Failed { reason: "stopped after attempt 1".into(), status: Some(400) };
    let record = Record { attempt: &a, item_bytes: bytes };
    assert!(t.store.finish(&unit, number, &failed, now_millis(), Some(record)).await.expect("finish"));
    assert_eq!(t.attempt_items(&task.id).await, ["ATTEMPT#0000000001"]);
    assert!(!t.item(&task.id, "STATE").await.expect("state").contains_key("att_1"));
    assert_eq!(t.store.attempts(&task.id, 10, None).await.expect("attempts").items, std::slice::from_ref(&a));
    assert_eq!(t.store.last_attempt(&task.id).await.expect("last"), Some(a));
}

#[tokio::test]
async fn a_finish_whose_lease_was_lost_still_records_its_attempt() {
    let t = table("ledger-lost").await;
    let task = new_task("https://ledger.invalid/hook", json!({"intervals": []}));
    t.store.create(&task, None).await.expect("create");
    let unit = Unit { task: task.id.clone(), run: None };
    let (number, _, bytes) = claim(&t.store, &unit).await;
    let a = attempt(number, Outcome::Success, 200, None);
    let record = Record { attempt: &a, item_bytes: bytes };
    // Another sender holds a later attempt now: the transition does not apply.
    let applied =
        t.store.finish(&unit, number + 1, &Transition::Succeeded { status: Some(200) }, now_millis(), Some(record));
    assert!(!applied.await.expect("finish"));
    assert_eq!(t.attempt_items(&task.id).await, ["ATTEMPT#0000000001"]);
    let state = t.item(&task.id, "STATE").await.expect("state");
    assert_eq!(state["status"].as_s().ok().map(String::as_str), Some("sending"));
    assert_eq!(t.store.attempts(&task.id, 10, None).await.expect("attempts").items, [a]);
}

#[tokio::test]
async fn a_request_on_the_state_item_comes_back_with_the_claim() {
    let t = table("ledger-inline").await;
    // A small request rides inline in the state item; a big one has a SPEC item.
    let inline = new_task("https://ledger.invalid/inline", json!({"intervals": ["1s"]}));
    let mut apart = new_task("https://ledger.invalid/apart", json!({"intervals": []}));
    apart.spec.headers.push(("x-big".into(), "b".repeat(600)));
    t.store.create(&inline, None).await.expect("create");
    t.store.create(&apart, None).await.expect("create");
    assert!(t.item(&inline.id, "SPEC").await.is_none() && t.item(&apart.id, "SPEC").await.is_some());
    let unit = Unit { task: inline.id.clone(), run: None };
    match t.store.claim(&unit, now_millis(), 5_000, None).await.expect("claim") {
        Claim::Claimed { inline: Some(req), .. } => assert_eq!(*req, (inline.spec.clone(), inline.retry.clone())),
        other => panic!("no inline request: {other:?}"),
    }
    // What a cron run (whose own item holds no request) reads: its task's inline request.
    let read = t.store.get_spec(&inline.id).await.expect("read");
    assert_eq!(read, Some((inline.spec.clone(), inline.retry.clone())), "the inline request is read too");
    let (_, has_inline, _) = claim(&t.store, &Unit { task: apart.id.clone(), run: None }).await;
    assert!(!has_inline, "a request kept apart is read with get_spec");
    assert_eq!(t.store.get_spec(&apart.id).await.expect("read"), Some((apart.spec.clone(), apart.retry.clone())));
}

#[tokio::test]
async fn retries_are_items_the_final_attempt_is_inline_and_pages_read_as_before() {
    let t = table("ledger-pages").await;
    // The default policy (four attempts) is left out of the item, as the API writes it.
    let task = new_task("https://ledger.invalid/hook", json!({}));
    assert_eq!(task.retry.max_attempts(), 4);
    t.store.create(&task, None).await.expect("create");
    // New one-off tasks are written without reconcile-index keys.
    t.client
        .update_item()
        .table_name(&t.outputs.names.table)
        .key("pk", AttributeValue::S(format!("TASK#{}", task.id)))
        .key("sk", AttributeValue::S("STATE".into()))
        .update_expression("REMOVE recon_pk, recon_at")
        .send()
        .await
        .expect("unindex");
    let unit = Unit { task: task.id.clone(), run: None };
    let mut all = Vec::new();
    for _ in 0..3 {
        let (number, _, bytes) = claim(&t.store, &unit).await;
        let mut a = attempt(number, Outcome::ServerError, 500, None);
        a.next_delay_ms = Some(0);
        let due_at: EpochMillis = now_millis();
        let retry = Transition::Retry { due_at, status: Some(500) };
        let record = Record { attempt: &a, item_bytes: bytes };
        assert!(t.store.finish(&unit, number, &retry, now_millis(), Some(record)).await.expect("finish"));
        let state = t.item(&task.id, "STATE").await.expect("state");
        let shard = state.get("recon_pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        assert!(shard.starts_with("RECON#"), "a retrying task is in the reconcile index: {state:?}");
        assert_eq!(state.get("recon_at").and_then(|v| v.as_n().ok()), Some(&(due_at + 1_000).to_string()));
        all.push(a);
    }
    let (number, _, bytes) = claim(&t.store, &unit).await;
    let last = attempt(number, Outcome::Success, 200, None);
    let record = Record { attempt: &last, item_bytes: bytes };
    assert!(
        t.store
            .finish(&unit, number, &Transition::Succeeded { status: Some(200) }, now_millis(), Some(record))
            .await
            .expect("finish")
    );
    all.push(last.clone());
    assert_eq!(t.attempt_items(&task.id).await.len(), 3, "retries are items, the success is inline");
    assert_eq!(t.store.last_attempt(&task.id).await.expect("last"), Some(last));
    for limit in [1, 2, 3, 4, 10] {
        let (mut got, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = t.store.attempts(&task.id, limit, cursor.as_deref()).await.expect("page");
            assert!(page.items.len() <= limit);
            got.extend(page.items);
            pages += 1;
            cursor = page.cursor;
            if cursor.is_none() || pages > 10 {
                break;
            }
        }
        assert_eq!(got, all, "pages of {limit}");
    }
}

#[tokio::test]
async fn a_message_that_arrives_before_its_task_is_written_delivers_it_once_written() {
    let t = table("ledger-early").await;
    let target = crate::helpers::Target::start(&[200]).await;
    let sdk = sdk().await;
    let queue = courier::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), &t.outputs.queue_url, &t.outputs.dlq_url);
    let scheduler = courier::schedules::EventBridgeScheduler::new(
        aws_sdk_scheduler::Client::new(&sdk),
        &t.outputs.names.schedule_group,
        "arn:aws:iam::000000000000:role/scheduler",
        &t.outputs.queue_url,
        &t.outputs.queue_arn,
    );
    let http = courier::sender::HttpClients::new(TargetGuard::new(TargetPolicy::LocalOnly, vec![])).expect("clients");
    let settings = courier::sender::SenderSettings {
        concurrency: 2,
        response_body_limit: 1024,
        lease_margin_ms: 5_000,
        schedule_early_s: 60,
        flow: courier::config::FlowConfig {
            cache_ms: 500,
            horizon_ms: 1_000,
            breaker: courier::domain::BreakerSettings::default(),
        },
        signing_cache_ms: 60_000,
    };
    let sender = courier::sender::Sender::new(t.store.clone(), queue, scheduler, http, settings)
        .with_clock(Arc::new(courier::clock::SystemClock));
    let task = new_task(&target.url("/early"), json!({"intervals": []}));
    let event = |at: EpochMillis| {
        let mut m = SqsMessage::default();
        m.message_id = Some("m1".into());
        m.body = Some(QueueMessage::deliver(&task.id, None).to_body());
        m.attributes.insert("SentTimestamp".into(), at.to_string());
        let mut e = SqsEvent::default();
        e.records = vec![m];
        e
    };
    // Written 60 ms after the message was sent: the in-process wait finds it.
    let (store, early) = (t.store.clone(), task.clone());
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.create(&early, None).await.expect("create");
    });
    let handled = sender.handle_each(event(now_millis()), None).await;
    write.await.expect("written");
    assert_eq!(
        handled[0].outcome,
        courier::sender::MessageOutcome::Delivery(courier::sender::DeliveryOutcome::Delivered { attempt: 1 })
    );
    assert!(!handled[0].keep);
    assert_eq!(target.received().len(), 1);
    let state = t.store.read_state(&Unit { task: task.id.clone(), run: None }).await.expect("read");
    assert_eq!(state.map(|s| s.status), Some(TaskStatus::Succeeded));
    // Never written: a young message goes back to the queue, an old one is poison as before.
    let never = new_task(&target.url("/never"), json!({"intervals": []}));
    let mut young = event(now_millis() - 2_000);
    young.records[0].body = Some(QueueMessage::deliver(&never.id, None).to_body());
    let handled = sender.handle_each(young, None).await;
    assert!(handled[0].keep, "{handled:?}");
    assert_eq!(
        handled[0].outcome,
        courier::sender::MessageOutcome::Delivery(courier::sender::DeliveryOutcome::Missing)
    );
    let mut old = event(now_millis() - 60_000);
    old.records[0].body = Some(QueueMessage::deliver(&never.id, None).to_body());
    let handled = sender.handle_each(old, None).await;
    assert!(!handled[0].keep, "{handled:?}");
    assert!(matches!(
        &handled[0].outcome,
        courier::sender::MessageOutcome::Delivery(courier::sender::DeliveryOutcome::Poison { .. })
    ));
}
