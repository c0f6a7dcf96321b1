//! The batch handler on the in-memory fakes, sending to a loopback target:
//! what each message led to, what the ledger recorded, what went back on the
//! queue or to the DLQ. No emulator, no sleeping: the clock is set by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use axum::http::StatusCode;

use super::*;
use crate::domain::{NewTask, RequestSpec, RetryPolicy, TargetGuard, TargetPolicy};
use crate::ports::{Claim, Transition};
use crate::testing::{FakeQueue, FakeScheduler, FakeStore, ManualClock, RecordedSchedule, t1};

#[test]
fn the_longest_request_fits_in_a_fresh_invocation_with_its_recording_margin() {
    // Otherwise a task with the longest timeout would come back every second, never sent.
    let invocation_ms = i64::from(crate::resources::SENDER_TIMEOUT_S) * 1000;
    assert!(RequestSpec::MAX_TIMEOUT_MS as i64 + RECORD_MARGIN_MS + 1_000 < invocation_ms);
}

/// A loopback target: `/ok` answers 200, `/fail` 500; counts the requests it got.
struct Target {
    base: String,
    hits: Arc<AtomicUsize>,
}

async fn target() -> Target {
    let hits = Arc::new(AtomicUsize::new(0));
    let (ok, fail) = (hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(move || async move {
                ok.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }),
        )
        .route(
            "/fail",
            axum::routing::post(move || async move {
                fail.fetch_add(1, Ordering::SeqCst);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Target { base, hits }
}

struct Fixture {
    store: FakeStore,
    queue: FakeQueue,
    clock: ManualClock,
    scheduler: FakeScheduler,
    sender: Sender<FakeStore, FakeQueue, FakeScheduler>,
}

const NOW: EpochMillis = 1_700_000_000_000;

fn fixture() -> Fixture {
    let scheduler = FakeScheduler::default();
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let http = HttpClients::new(TargetGuard::new(TargetPolicy::LocalOnly, vec![])).expect("clients");
    let settings = settings();
    let sender = Sender::new(store.clone(), queue.clone(), scheduler.clone(), http, settings)
        .with_clock(Arc::new(clock.clone()));
    Fixture { store, queue, clock, scheduler, sender }
}

pub(super) fn settings() -> SenderSettings {
    SenderSettings {
        concurrency: 4,
        response_body_limit: 1024,
        lease_margin_ms: 5_000,
        schedule_early_s: 60,
        flow: crate::config::FlowConfig {
            cache_ms: 500,
            horizon_ms: 1_000,
            breaker: crate::domain::BreakerSettings::default(),
        },
        signing_cache_ms: 60_000,
    }
}

fn no_jitter(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::Backoff { max_attempts, initial_ms: 2_000, multiplier: 2.0, max_ms: 3_600_000, jitter: false }
}

fn task(url: &str, due_at: EpochMillis, retry: RetryPolicy) -> NewTask {
    crate::testing::new_task(&t1(), url, due_at, retry)
}

fn message(id: &str, body: String) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.to_owned());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body);
    m
}

fn deliver(t: &NewTask) -> String {
    QueueMessage::deliver(&t.id, None).to_body()
}

fn batch(messages: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = messages;
    e
}

fn unit(t: &NewTask) -> Unit {
    Unit { task: t.id.clone(), run: None }
}

fn outcome_of(handled: &[Handled], id: &str) -> (bool, MessageOutcome) {
    let h = handled.iter().find(|h| h.message_id == id).unwrap_or_else(|| panic!("no outcome for {id}"));
    (h.keep, h.outcome.clone())
}

#[tokio::test]
async fn a_due_task_is_delivered_once_with_one_attempt_recorded() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&t);
    let handled = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    assert_eq!(
        outcome_of(&handled, "m1"),
        (false, MessageOutcome::Delivery(DeliveryOutcome::Delivered { attempt: 1 }))
    );
    assert_eq!(target.hits.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.state(&unit(&t)).map(|s| s.status), Some(TaskStatus::Succeeded));
    let attempts = f.store.attempts_of(&unit(&t));
    assert_eq!(
        attempts.iter().map(|a| (a.number, a.status_code, a.started_at)).collect::<Vec<_>>(),
        [(1, Some(200), NOW)]
    );
}

#[tokio::test]
async fn copies_of_one_delivery_in_a_batch_are_handled_once() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&t);
    let copies = vec![message("m1", deliver(&t)), message("m2", deliver(&t)), message("m3", deliver(&t))];
    let handled = f.sender.handle_each(batch(copies), None).await;
    assert_eq!(
        outcome_of(&handled, "m1"),
        (false, MessageOutcome::Delivery(DeliveryOutcome::Delivered { attempt: 1 }))
    );
    assert_eq!(outcome_of(&handled, "m2"), (false, MessageOutcome::Duplicate));
    assert_eq!(outcome_of(&handled, "m3"), (false, MessageOutcome::Duplicate));
    assert_eq!(target.hits.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.attempts_of(&unit(&t)).len(), 1);
}

#[tokio::test]
async fn a_task_not_due_yet_is_deferred_without_sending() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/ok", target.base), NOW + 90_000, no_jitter(3));
    f.store.insert(&t);
    let handled = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    let deferred = DeliveryOutcome::Deferred { delay: Duration::from_secs(90) };
    assert_eq!(outcome_of(&handled, "m1"), (true, MessageOutcome::Delivery(deferred)));
    assert_eq!(f.queue.retried(), [("rh-m1".to_owned(), Duration::from_secs(90))]);
    assert_eq!(target.hits.load(Ordering::SeqCst), 0);
    assert!(f.store.attempts_of(&unit(&t)).is_empty());
}

#[tokio::test]
async fn a_duplicate_message_for_a_claimed_task_is_not_sent_twice() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&t);
    // Another sender holds the task (its copy of the message is in flight there).
    let held = DeliveryLedger::claim(&f.store, &unit(&t), NOW, 5_000, None).await.expect("claim");
    assert!(matches!(held, Claim::Claimed { .. }), "{held:?}");
    let handled = f.sender.handle_each(batch(vec![message("m2", deliver(&t))]), None).await;
    // The duplicate comes back when that claim's lease ends (then finds the task done).
    let (keep, outcome) = outcome_of(&handled, "m2");
    assert!(keep);
    assert!(matches!(outcome, MessageOutcome::Delivery(DeliveryOutcome::Deferred { .. })), "{outcome:?}");
    assert_eq!(target.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_poison_body_is_parked_on_the_dead_letter_queue() {
    let f = fixture();
    let handled = f.sender.handle_each(batch(vec![message("m1", "not a message".into())]), None).await;
    let (keep, outcome) = outcome_of(&handled, "m1");
    assert!(!keep);
    assert!(matches!(outcome, MessageOutcome::Delivery(DeliveryOutcome::Poison { .. })), "{outcome:?}");
    let dead = f.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0]["type"].as_str(), dead[0]["body"].as_str()), (Some("poison.v1"), Some("not a message")));
}

#[tokio::test]
async fn a_failing_target_schedules_a_retry_on_the_message_and_reports_it_as_a_batch_failure() {
    let (f, target) = (fixture(), target().await);
    let failing = task(&format!("{}/fail", target.base), NOW, no_jitter(3));
    let fine = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&failing);
    f.store.insert(&fine);
    let resp =
        f.sender.handle(batch(vec![message("m1", deliver(&failing)), message("m2", deliver(&fine))]), None).await;
    let failures: Vec<&str> = resp.batch_item_failures.iter().map(|b| b.item_identifier.as_str()).collect();
    assert_eq!(failures, ["m1"]);
    // The first wait of the policy, on the message's visibility.
    assert_eq!(f.queue.retried(), [("rh-m1".to_owned(), Duration::from_secs(2))]);
    let st = f.store.state(&unit(&failing)).expect("stored");
    assert_eq!((st.status, st.due_at, st.last_status), (TaskStatus::Retrying, Some(NOW + 2_000), Some(500)));
    assert_eq!(f.store.attempts_of(&unit(&failing))[0].next_delay_ms, Some(2_000));
}

#[tokio::test]
async fn a_retry_is_claimed_once_due_and_the_last_failure_ends_the_task_on_the_dead_letter_queue() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/fail", target.base), NOW, no_jitter(2));
    f.store.insert(&t);
    let first = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    let retry = DeliveryOutcome::RetryScheduled { attempt: 1, delay: Duration::from_secs(2) };
    assert_eq!(outcome_of(&first, "m1"), (true, MessageOutcome::Delivery(retry)));
    f.clock.advance(2_000);
    let last = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    let reason = "exhausted after 2 attempts: server_error (HTTP 500)".to_owned();
    let failed = DeliveryOutcome::Failed { attempt: 2, reason: reason.clone() };
    assert_eq!(outcome_of(&last, "m1"), (false, MessageOutcome::Delivery(failed)));
    assert_eq!(target.hits.load(Ordering::SeqCst), 2);
    let st = f.store.state(&unit(&t)).expect("stored");
    assert_eq!((st.status, st.failure_reason), (TaskStatus::Failed, Some(reason.clone())));
    let dead = f.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["type"], "task.failed.v1");
    assert_eq!(dead[0]["task_id"], t.id.to_string());
    assert_eq!(dead[0]["reason"], reason);
}

#[tokio::test]
async fn no_request_starts_when_the_invocation_has_no_time_left() {
    let (f, target) = (fixture(), target().await);
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&t);
    let deadline = Some(NOW + RECORD_MARGIN_MS);
    let handled = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), deadline).await;
    assert_eq!(outcome_of(&handled, "m1"), (true, MessageOutcome::Delivery(DeliveryOutcome::NoTime)));
    assert_eq!(f.queue.retried(), [("rh-m1".to_owned(), NO_TIME_RETRY)]);
    assert_eq!(target.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_retry_wait_longer_than_the_visibility_timeout_goes_to_a_one_time_schedule() {
    let (f, target) = (fixture(), target().await);
    let thirteen_hours = 13 * 3_600_000;
    let t = task(&format!("{}/fail", target.base), NOW, RetryPolicy::Intervals { intervals_ms: vec![thirteen_hours] });
    f.store.insert(&t);
    let handled = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    let retry = DeliveryOutcome::RetryScheduled { attempt: 1, delay: Duration::from_millis(thirteen_hours) };
    // Handed over: the message itself goes.
    assert_eq!(outcome_of(&handled, "m1"), (false, MessageOutcome::Delivery(retry)));
    assert!(f.queue.retried().is_empty());
    let schedules: Vec<RecordedSchedule> = f.scheduler.schedules().into_values().collect();
    let [RecordedSchedule::At { fire_at, msg, delay }] = schedules.as_slice() else { panic!("{schedules:?}") };
    assert_eq!(msg, &QueueMessage::deliver(&t.id, None));
    // It fires early and the message's delay makes up the rest: due on time.
    assert_eq!(*fire_at + delay.as_millis() as i64, NOW + thirteen_hours as i64);
    // Recorded on the task, so a cancel deletes that schedule.
    let (name, _) = f.scheduler.schedules().into_iter().next().expect("one schedule");
    let state = f.store.state(&Unit { task: t.id.clone(), run: None }).expect("stored");
    assert_eq!(state.scheduler, crate::domain::SchedulerHold::Schedule(name));
}

fn sent_at(mut m: SqsMessage, at: EpochMillis) -> SqsMessage {
    m.attributes.insert("SentTimestamp".into(), at.to_string());
    m
}

#[tokio::test]
async fn a_young_message_whose_task_is_not_written_yet_goes_back_to_the_queue_not_to_the_dlq() {
    let (f, target) = (fixture(), target().await);
    // The API sends the message first, then writes the task: not written (yet).
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    let handled = f.sender.handle_each(batch(vec![sent_at(message("m1", deliver(&t)), NOW - 100)]), None).await;
    assert_eq!(outcome_of(&handled, "m1"), (true, MessageOutcome::Delivery(DeliveryOutcome::Missing)));
    assert_eq!(f.queue.retried(), [("rh-m1".to_owned(), MISSING_RETRY)]);
    assert!(f.queue.dead_letters().is_empty());
    // It waited a moment in process, once, before giving the message back.
    assert_eq!(f.clock.now(), NOW + YOUNG_WAIT_MS);
    // Once written, the message that comes back delivers it.
    f.store.insert(&t);
    let again = f.sender.handle_each(batch(vec![sent_at(message("m1", deliver(&t)), NOW - 100)]), None).await;
    assert_eq!(outcome_of(&again, "m1"), (false, MessageOutcome::Delivery(DeliveryOutcome::Delivered { attempt: 1 })));
    assert_eq!(target.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_message_a_few_seconds_old_without_its_task_comes_back_without_waiting_in_process() {
    let f = fixture();
    let t = task("http://task.invalid/x", NOW, no_jitter(3));
    let handled = f.sender.handle_each(batch(vec![sent_at(message("m1", deliver(&t)), NOW - 5_000)]), None).await;
    assert_eq!(outcome_of(&handled, "m1"), (true, MessageOutcome::Delivery(DeliveryOutcome::Missing)));
    assert_eq!(f.clock.now(), NOW, "no in-process wait past the first second");
    assert!(f.queue.dead_letters().is_empty());
}

#[tokio::test]
async fn an_old_message_or_one_of_unknown_age_without_its_task_is_poison_as_before() {
    let f = fixture();
    let t = task("http://task.invalid/x", NOW, no_jitter(3));
    let other = task("http://other.invalid/x", NOW, no_jitter(3));
    let old = sent_at(message("m1", deliver(&t)), NOW - MISSING_MAX_AGE_MS - 1);
    let handled = f.sender.handle_each(batch(vec![old, message("m2", deliver(&other))]), None).await;
    for (id, t) in [("m1", &t), ("m2", &other)] {
        let (keep, outcome) = outcome_of(&handled, id);
        assert!(!keep, "{id}");
        let reason = format!("no task {}", t.id);
        assert_eq!(outcome, MessageOutcome::Delivery(DeliveryOutcome::Poison { reason }), "{id}");
    }
    assert_eq!(f.queue.dead_letters().len(), 2);
}

#[tokio::test]
async fn a_final_attempt_is_recorded_by_the_finish_even_when_the_lease_was_lost() {
    let f = fixture();
    let t = task("http://task.invalid/x", NOW, no_jitter(3));
    f.store.insert(&t);
    let u = unit(&t);
    let Ok(Claim::Claimed { state, .. }) = f.store.claim(&u, NOW, 5_000, None).await else { panic!("claimable") };
    let attempt = crate::domain::Attempt {
        run: None,
        number: state.attempts,
        started_at: NOW,
        method: "POST".into(),
        url: "http://task.invalid/x".into(),
        request_headers: Vec::new(),
        request_body_size: 0,
        response_headers: Vec::new(),
        duration_ms: 3,
        status_code: Some(200),
        outcome: crate::domain::Outcome::Success,
        response_body: None,
        error: None,
        next_delay_ms: None,
    };
    let record = Some(crate::ports::Record { attempt: &attempt, item_bytes: 0 });
    // Another attempt holds the unit now: the transition does not apply, the record stays.
    let lost = f
        .store
        .finish(&u, state.attempts + 1, &Transition::Succeeded { status: Some(200) }, NOW, record)
        .await
        .expect("fake");
    assert!(!lost);
    assert_eq!(f.store.attempts_of(&u), [attempt]);
    assert_eq!(f.store.state(&u).map(|s| s.status), Some(TaskStatus::Sending));
}

#[tokio::test]
async fn a_tenant_with_a_secret_gets_signed_traced_requests_unless_the_task_opts_out() {
    use crate::domain::{Body, SecretId, SecretInfo, SigningSecret, TraceContext};
    use crate::ports::SigningSecrets;
    let (f, target) = (fixture(), target().await);
    let secret = SigningSecret::generate().expect("random");
    let info = SecretInfo { id: SecretId::generate(), created_at: NOW, until: None };
    f.store.put_secret(&t1(), &info, &secret).await.expect("stored");
    let mut signed = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    signed.spec.body = Some(Body::Bytes(vec![0xff, 0x00, 0x80]));
    signed.spec.trace =
        Some(TraceContext { trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(), state: Some("a=b".into()) });
    let mut unsigned = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    unsigned.spec.unsigned = true;
    f.store.insert(&signed);
    f.store.insert(&unsigned);
    let messages = vec![message("m1", deliver(&signed)), message("m2", deliver(&unsigned))];
    f.sender.handle_each(batch(messages), None).await;
    assert_eq!(target.hits.load(Ordering::SeqCst), 2);
    let headers = |t: &NewTask| f.store.attempts_of(&unit(t)).remove(0).request_headers;
    let get = |h: &[(String, String)], name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let h = headers(&signed);
    let ts = NOW / 1000;
    assert_eq!(get(&h, "webhook-id").as_deref(), Some(signed.id.as_str()));
    assert_eq!(get(&h, "webhook-timestamp"), Some(ts.to_string()));
    // The raw bytes sent (not UTF-8) are the bytes signed.
    assert_eq!(get(&h, "webhook-signature"), Some(secret.sign(signed.id.as_str(), ts, &[0xff, 0x00, 0x80])));
    assert!(get(&h, "traceparent").is_some_and(|p| p.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")));
    assert_eq!(get(&h, "tracestate").as_deref(), Some("a=b"));
    let h = headers(&unsigned);
    assert!(h.iter().all(|(k, _)| !k.starts_with("webhook-") && k != "traceparent"), "{h:?}");
}

#[tokio::test]
async fn secrets_that_cannot_be_read_send_nothing_and_cost_no_attempt_number() {
    use crate::domain::{SecretId, SecretInfo, SigningSecret};
    use crate::ports::SigningSecrets;
    let (f, target) = (fixture(), target().await);
    let secret = SigningSecret::generate().expect("random");
    let info = SecretInfo { id: SecretId::generate(), created_at: NOW, until: None };
    f.store.put_secret(&t1(), &info, &secret).await.expect("stored");
    let t = task(&format!("{}/ok", target.base), NOW, no_jitter(3));
    f.store.insert(&t);
    f.store.secrets_down(true);
    let out = f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    assert!(out[0].keep, "the message comes back: {out:?}");
    assert_eq!(target.hits.load(Ordering::SeqCst), 0, "nothing sent unsigned");
    let state = f.store.state(&unit(&t)).expect("state");
    assert_eq!((state.attempts, state.status), (0, TaskStatus::Pending), "no claim, no attempt number");
    f.store.secrets_down(false);
    f.sender.handle_each(batch(vec![message("m1", deliver(&t))]), None).await;
    assert_eq!(target.hits.load(Ordering::SeqCst), 1);
    let attempts = f.store.attempts_of(&unit(&t));
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].number, 1, "the first attempt is number 1");
    assert!(attempts[0].request_headers.iter().any(|(k, _)| k == "webhook-signature"));
}
