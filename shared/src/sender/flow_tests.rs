//! Flow control in the batch handler, on the fakes: what a limited key costs
//! in writes, what is held and how, the breaker's round trip and a pause
//! shared by two senders. The clock is set by hand; no test sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use axum::http::{HeaderMap, HeaderValue, StatusCode};

use super::tests::settings;
use super::*;
use crate::domain::{FlowPolicy, NewTask, PolicyScope, RetryPolicy, TargetGuard, TargetPolicy};
use crate::testing::{FakeQueue, FakeScheduler, FakeStore, ManualClock, t1};

const NOW: EpochMillis = 1_700_000_000_000;

/// A loopback target answering `status` (switchable), with `Retry-After: 5` on a 503.
struct Target {
    base: String,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
}

async fn target(status: u16) -> Target {
    let hits = Arc::new(AtomicUsize::new(0));
    let status = Arc::new(AtomicU16::new(status));
    let (h, s) = (hits.clone(), status.clone());
    let app = axum::Router::new().fallback(move || {
        let (h, s) = (h.clone(), s.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let code = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
            let mut headers = HeaderMap::new();
            if code == StatusCode::SERVICE_UNAVAILABLE {
                headers.insert("retry-after", HeaderValue::from_static("5"));
            }
            (code, headers)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Target { base, hits, status }
}

type TestSender = Sender<FakeStore, FakeQueue, FakeScheduler>;

fn sender(store: &FakeStore, queue: &FakeQueue, clock: &ManualClock) -> TestSender {
    let http = HttpClients::new(TargetGuard::new(TargetPolicy::LocalOnly, vec![])).expect("clients");
    Sender::new(store.clone(), queue.clone(), FakeScheduler::default(), http, settings())
        .with_clock(Arc::new(clock.clone()))
}

fn retrying() -> RetryPolicy {
    RetryPolicy::Backoff { max_attempts: 50, initial_ms: 1_000, multiplier: 1.0, max_ms: 1_000, jitter: false }
}

/// `n` due tasks to `url`, stored, and a batch of their hinted messages.
fn tasks(store: &FakeStore, url: &str, n: usize) -> (Vec<NewTask>, SqsEvent) {
    let ts: Vec<NewTask> = (0..n).map(|_| crate::testing::new_task(&t1(), url, NOW, retrying())).collect();
    let mut e = SqsEvent::default();
    for (i, t) in ts.iter().enumerate() {
        store.insert(t);
        let mut m = SqsMessage::default();
        m.message_id = Some(format!("m{i}"));
        m.receipt_handle = Some(format!("rh-{i}"));
        m.body = Some(QueueMessage::deliver(&t.id, Some(t.flow_ref())).to_body());
        e.records.push(m);
    }
    (ts, e)
}

fn policy(doc: serde_json::Value) -> FlowPolicy {
    FlowPolicy::parse_input(&doc, false).expect("a valid policy")
}

fn held(handled: &[Handled]) -> Vec<&'static str> {
    handled
        .iter()
        .filter_map(|h| match h.outcome {
            MessageOutcome::Held { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

fn attempts(store: &FakeStore, ts: &[NewTask]) -> u32 {
    ts.iter().map(|t| store.state(&Unit { task: t.id.clone(), run: None }).map_or(0, |s| s.attempts)).sum()
}

#[tokio::test]
async fn a_key_without_a_policy_costs_no_flow_write() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(200).await;
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let handled = sender(&store, &queue, &clock).handle_each(batch, None).await;
    assert!(held(&handled).is_empty());
    assert_eq!(t.hits.load(Ordering::SeqCst), 10);
    assert!(store.flow_writes().is_empty(), "{:?}", store.flow_writes());
}

#[tokio::test]
async fn ten_messages_to_a_limited_key_cost_one_write_and_leave_on_their_slots() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(200).await;
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"rate": "20/s"}))).await.expect("put");
    let handled = sender(&store, &queue, &clock).handle_each(batch, None).await;
    assert!(held(&handled).is_empty());
    assert_eq!(t.hits.load(Ordering::SeqCst), 10);
    assert_eq!(store.flow_writes().get(&key), Some(&1), "one reservation for the batch");
    // Ten slots 50 ms apart: the (manual) clock waited for the last one.
    assert_eq!(clock.now(), NOW + 450);
    let started: Vec<EpochMillis> = {
        let mut v: Vec<_> = ts
            .iter()
            .flat_map(|t| store.attempts_of(&Unit { task: t.id.clone(), run: None }))
            .map(|a| a.started_at)
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(started, (0..10).map(|i| NOW + i * 50).collect::<Vec<_>>());
}

#[tokio::test]
async fn messages_over_the_limit_are_re_sent_with_a_delay_and_are_not_attempts() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(200).await;
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"rate": "2/s"}))).await.expect("put");
    let handled = sender(&store, &queue, &clock).handle_each(batch, None).await;
    // 2/s with a 1 s horizon: slots now, +0.5 s and +1 s; the other seven wait.
    assert_eq!(t.hits.load(Ordering::SeqCst), 3);
    assert_eq!(held(&handled), ["rate"; 7]);
    assert!(handled.iter().all(|h| !h.keep), "held messages are acknowledged, not kept: {handled:?}");
    let resent = queue.sent();
    assert_eq!(resent.len(), 7);
    for (m, delay) in &resent {
        let QueueMessage::DeliverV1 { held, flow, .. } = m else { panic!("{m:?}") };
        assert_eq!((*held, flow.is_some()), (1, true));
        assert!(*delay >= Duration::from_secs(1), "{delay:?}");
    }
    assert_eq!(attempts(&store, &ts), 3, "held deliveries are not attempts");
    assert_eq!(store.flow_writes().get(&key), Some(&1));
}

#[tokio::test]
async fn a_parallelism_cap_takes_leases_and_gives_them_back() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(200).await;
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 5);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"parallelism": 2}))).await.expect("put");
    let handled = sender(&store, &queue, &clock).handle_each(batch, None).await;
    assert_eq!(t.hits.load(Ordering::SeqCst), 2);
    assert_eq!(held(&handled), ["parallelism"; 3]);
    assert_eq!(store.flow_writes().get(&key), Some(&2), "acquire and release");
    assert_eq!(store.flow_shared(&key).map(|s| s.in_flight(NOW)), Some(0), "released");
}

#[tokio::test]
async fn the_breaker_opens_holds_probes_and_closes() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(500).await;
    let s = sender(&store, &queue, &clock);
    let (ts, batch) = tasks(&store, &format!("{}/x", t.base), 10);
    let key = ts[0].flow_ref().host_key();
    s.handle_each(batch, None).await;
    assert_eq!(t.hits.load(Ordering::SeqCst), 10);
    let state = store.flow_shared(&key).expect("reported");
    assert_eq!((state.breaker, state.window_failures), (crate::domain::BreakerPosition::Open, 10));
    assert_eq!(state.breaker_until, Some(NOW + 30_000));
    // While open: held, not sent, not attempts.
    let (more, batch) = tasks(&store, &format!("{}/x", t.base), 4);
    let handled = s.handle_each(batch, None).await;
    assert_eq!(held(&handled), ["open"; 4]);
    assert_eq!(t.hits.load(Ordering::SeqCst), 10);
    assert_eq!(attempts(&store, &more), 0);
    // After the open span, one sender probes (3 by default); the target has recovered.
    t.status.store(200, Ordering::SeqCst);
    clock.set(NOW + 31_000);
    let (probed, batch) = tasks(&store, &format!("{}/x", t.base), 5);
    let handled = s.handle_each(batch, None).await;
    assert_eq!(t.hits.load(Ordering::SeqCst), 13, "three probes");
    assert_eq!(held(&handled), ["half_open"; 2]);
    assert_eq!(attempts(&store, &probed), 3);
    assert_eq!(store.flow_shared(&key).map(|s| s.breaker), Some(crate::domain::BreakerPosition::Closed));
    let (_, history) = store.flow_state(&key, 10).await.expect("state");
    let moves: Vec<&str> = history.iter().rev().map(|e| e.to.as_str()).collect();
    assert_eq!(moves, ["open", "half_open", "closed"]);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker_for_longer() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(500).await;
    let s = sender(&store, &queue, &clock);
    let (ts, batch) = tasks(&store, &format!("{}/x", t.base), 10);
    let key = ts[0].flow_ref().host_key();
    s.handle_each(batch, None).await;
    clock.set(NOW + 31_000);
    let (_, batch) = tasks(&store, &format!("{}/x", t.base), 1);
    s.handle_each(batch, None).await;
    let state = store.flow_shared(&key).expect("state");
    assert_eq!(state.breaker, crate::domain::BreakerPosition::Open);
    assert_eq!(state.breaker_until, Some(NOW + 31_000 + 60_000), "the second trip stays open twice as long");
}

#[tokio::test]
async fn a_retry_after_pause_reaches_another_sender_through_the_store() {
    let (store, clock) = (FakeStore::new(), ManualClock::at(NOW));
    let t = target(503).await;
    let (first, second) =
        (sender(&store, &FakeQueue::default(), &clock), sender(&store, &FakeQueue::default(), &clock));
    let (ts, batch) = tasks(&store, &format!("{}/x", t.base), 1);
    let key = ts[0].flow_ref().host_key();
    first.handle_each(batch, None).await;
    assert_eq!(store.flow_shared(&key).and_then(|s| s.paused_until), Some(NOW + 5_000));
    t.status.store(200, Ordering::SeqCst);
    let (_, batch) = tasks(&store, &format!("{}/x", t.base), 3);
    let handled = second.handle_each(batch, None).await;
    assert_eq!(held(&handled), ["paused"; 3]);
    assert_eq!(t.hits.load(Ordering::SeqCst), 1);
    clock.set(NOW + 5_001);
    let (_, batch) = tasks(&store, &format!("{}/x", t.base), 3);
    let handled = second.handle_each(batch, None).await;
    assert!(held(&handled).is_empty());
    assert_eq!(t.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn two_senders_share_one_rate_and_a_stale_view_costs_a_second_write_at_most() {
    let (store, clock) = (FakeStore::new(), ManualClock::at(NOW));
    let t = target(200).await;
    let (a, b) = (sender(&store, &FakeQueue::default(), &clock), sender(&store, &FakeQueue::default(), &clock));
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"rate": "10/s"}))).await.expect("put");
    a.handle_each(batch, None).await;
    assert_eq!(t.hits.load(Ordering::SeqCst), 10);
    // B has never seen the key: it guesses idle, is refused, and retries busy with the real state.
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let handled = b.handle_each(batch, None).await;
    assert_eq!(store.flow_writes().get(&key), Some(&3));
    let sent_now = 10 - held(&handled).len();
    assert!(sent_now >= 1, "{handled:?}");
    // Every slot granted so far is 100 ms from the previous one.
    assert_eq!(t.hits.load(Ordering::SeqCst), 10 + sent_now);
}

#[tokio::test]
async fn repeated_429s_halve_a_limited_rate_and_a_clean_minute_restores_it() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(429).await;
    let s = sender(&store, &queue, &clock);
    let (ts, batch) = tasks(&store, &format!("{}/x", t.base), 3);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"rate": "20/s"}))).await.expect("put");
    s.handle_each(batch, None).await;
    assert_eq!(store.flow_shared(&key).map(|s| s.factor), Some(0.5));
    t.status.store(200, Ordering::SeqCst);
    clock.advance(61_000);
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 1);
    s.handle_each(batch, None).await;
    assert_eq!(store.flow_shared(&key).map(|s| s.factor), Some(1.0));
    let (_, history) = store.flow_state(&key, 10).await.expect("state");
    assert_eq!(history.iter().rev().map(|e| e.to.as_str()).collect::<Vec<_>>(), ["rate_halved", "rate_restored"]);
}

#[tokio::test]
async fn leases_another_sender_gave_back_are_found_by_the_write_not_waited_out() {
    use crate::ports::FlowLimiter;
    let (store, clock) = (FakeStore::new(), ManualClock::at(NOW));
    let t = target(200).await;
    let a = sender(&store, &FakeQueue::default(), &clock);
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 1);
    let key = ts[0].flow_ref().host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"parallelism": 1}))).await.expect("put");
    // Another sender holds the one slot for a minute.
    let lease = (0, (NOW + 60_000) * 1_000 + 7);
    let other = crate::domain::Reservation { buckets: vec![], leases: vec![lease], now: NOW };
    assert!(matches!(store.reserve(&key, &other).await, Ok(crate::domain::Cas::Written(_))));
    let handled = a.handle_each(batch, None).await;
    assert_eq!(held(&handled), ["parallelism"]);
    // It gives the slot back. A's fresh view still shows it taken: held without a write.
    store.release(&key, &[lease]).await.expect("release");
    let writes = store.flow_writes().get(&key).copied();
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 1);
    assert_eq!(held(&a.handle_each(batch, None).await), ["parallelism"]);
    assert_eq!(store.flow_writes().get(&key).copied(), writes);
    // Once the view is 250 ms old the write checks for itself, and the slot is free.
    clock.advance(300);
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 1);
    assert!(held(&a.handle_each(batch, None).await).is_empty());
    assert_eq!(t.hits.load(Ordering::SeqCst), 1);
    // A's release dropped the lease from its own view: the next batch goes at once.
    let (_, batch) = tasks(&store, &format!("{}/ok", t.base), 1);
    assert!(held(&a.handle_each(batch, None).await).is_empty());
    assert_eq!(t.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_ready_after_its_slot_takes_a_fresh_slot_instead_of_bunching() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let t = target(200).await;
    let s = sender(&store, &queue, &clock);
    let (ts, batch) = tasks(&store, &format!("{}/ok", t.base), 10);
    let flow = ts[0].flow_ref();
    let key = flow.host_key();
    store.put_policy(&key, &PolicyScope::Admin, &policy(serde_json::json!({"rate": "10/s"}))).await.expect("put");
    s.handle_each(batch, None).await;
    let next = store.flow_shared(&key).and_then(|s| s.next_us).expect("reserved");
    // A claim that ended 300 ms after its slot: it leaves on a new slot after every one granted so far.
    let ticket = Ticket { not_before: Some(clock.now() - 300), flow: Some(flow.clone()), ..Ticket::default() };
    let writes = store.flow_writes().get(&key).copied().unwrap_or(0);
    let at = s.reslot(&ticket, None).await.expect("a new slot");
    assert!(at * 1_000 >= next, "new slot {at} before the key's next free slot {next}");
    assert_eq!(store.flow_writes().get(&key).copied(), Some(writes + 1));
    // On time (within 50 ms): the slot it has.
    let on_time = Ticket { not_before: Some(clock.now() - 10), flow: Some(flow), ..Ticket::default() };
    assert_eq!(s.reslot(&on_time, None).await, on_time.not_before);
}
