//! The DynamoDB adapter of flow control against the emulator: each
//! conditional write of a key's shared state applies and refuses exactly
//! where the in-memory fake does (one scripted sequence is run on both and
//! must answer alike), policies and holds come back in one snapshot, history
//! newest first, and a busy key's state item stays under 1 KB.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use courier::domain::{
    BreakerPosition, BucketForm, BucketId, BucketWrite, Cas, EpochMillis, FlowChange, FlowKey, FlowPolicy, FlowShared,
    Hold, PolicyScope, Rate, Reservation, Tally, TenantId, now_millis,
};
use courier::dynamo::DynamoStore;
use courier::ports::{FlowLimiter, FlowPolicies};
use courier::testing::FakeStore;

use crate::helpers::{sdk, unique_stack};

/// A store on a fresh table of its own.
async fn store() -> (DynamoStore, aws_sdk_dynamodb::Client, String) {
    let sdk = sdk().await;
    let outputs = courier_local::bootstrap::bootstrap(&sdk, &unique_stack("flows")).await.expect("bootstrap");
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let table = outputs.names.table.clone();
    (DynamoStore::new(client.clone(), &table, 90), client, table)
}

fn host() -> FlowKey {
    FlowKey::host("api.example.invalid:443")
}

fn idle(bucket: BucketId, base_us: i64, add_us: i64) -> BucketWrite {
    BucketWrite { bucket, form: BucketForm::Idle { base_us }, add_us }
}

fn busy(bucket: BucketId, base_us: i64, ceiling_us: i64, add_us: i64) -> BucketWrite {
    BucketWrite { bucket, form: BucketForm::Busy { base_us, ceiling_us }, add_us }
}

fn rate_only(now: EpochMillis, buckets: Vec<BucketWrite>) -> Reservation {
    Reservation { buckets, leases: Vec::new(), now }
}

fn leases_only(now: EpochMillis, leases: Vec<(u32, i64)>) -> Reservation {
    Reservation { buckets: Vec::new(), leases, now }
}

fn written(cas: Cas) -> FlowShared {
    match cas {
        Cas::Written(s) => s,
        Cas::Refused(s) => panic!("refused; stored: {s:?}"),
    }
}

fn refused(cas: Cas) -> FlowShared {
    match cas {
        Cas::Refused(s) => s,
        Cas::Written(s) => panic!("written: {s:?}"),
    }
}

fn policy(rate: &str) -> FlowPolicy {
    FlowPolicy {
        rate: Some(Rate::parse(rate).expect("rate")),
        burst: None,
        parallelism: Some(4),
        breaker: None,
        adaptive: true,
        updated_at: 1,
        updated_by: "admin".into(),
    }
}

#[tokio::test]
async fn an_idle_bucket_then_a_busy_one_are_written_and_a_busy_one_past_the_horizon_is_refused_with_the_old_state() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let now_us = now * 1_000;
    let first = written(
        store
            .reserve(&key, &rate_only(now, vec![idle(BucketId::Key, now_us, 300_000)]))
            .await
            .expect("the emulator answers"),
    );
    assert_eq!(first.next_us, Some(now_us + 300_000));
    // Idle again is refused: the bucket is busy now.
    let again = refused(
        store
            .reserve(&key, &rate_only(now, vec![idle(BucketId::Key, now_us, 100_000)]))
            .await
            .expect("the emulator answers"),
    );
    assert_eq!(again, first);
    let second = written(
        store
            .reserve(&key, &rate_only(now, vec![busy(BucketId::Key, now_us, now_us + 1_000_000, 200_000)]))
            .await
            .expect("present"),
    );
    assert_eq!(second.next_us, Some(now_us + 500_000));
    // The ceiling is now below `next`: full past the horizon.
    let full = refused(
        store
            .reserve(&key, &rate_only(now, vec![busy(BucketId::Key, now_us, now_us + 400_000, 100_000)]))
            .await
            .expect("present"),
    );
    assert_eq!(full, second);
    // A busy form on a key never written is refused with a fresh state, and writes nothing.
    let other = FlowKey::host("other.example.invalid:443");
    let none = refused(
        store
            .reserve(&other, &rate_only(now, vec![busy(BucketId::Key, now_us, now_us + 1_000, 1)]))
            .await
            .expect("the emulator answers"),
    );
    assert_eq!(none, FlowShared::new());
    assert_eq!(store.flow_state(&other, 5).await.expect("the emulator answers"), (None, Vec::new()));
}

#[tokio::test]
async fn one_reservation_writes_the_key_bucket_and_two_tenant_shares_or_none_of_them() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let now_us = now * 1_000;
    let (a, b) = (BucketId::share(&TenantId::generate()), BucketId::share(&TenantId::generate()));
    let r = rate_only(
        now,
        vec![idle(BucketId::Key, now_us, 10), idle(a.clone(), now_us - 5, 20), idle(b.clone(), now_us - 7, 30)],
    );
    let s = written(store.reserve(&key, &r).await.expect("the emulator answers"));
    assert_eq!(s.next_us, Some(now_us + 10));
    assert_eq!(s.next_of(&a), Some(now_us + 15));
    assert_eq!(s.next_of(&b), Some(now_us + 23));
    assert_eq!(s.shares.len(), 2);
    // Share `a` busy within its ceiling, share `b` idle (refused: it is busy): nothing moves.
    let r = rate_only(now, vec![busy(a.clone(), now_us - 100, now_us + 1_000, 20), idle(b.clone(), now_us - 100, 1)]);
    assert_eq!(refused(store.reserve(&key, &r).await.expect("the emulator answers")), s);
    let r = rate_only(now, vec![busy(a.clone(), now_us - 100, now_us + 1_000, 20)]);
    assert_eq!(written(store.reserve(&key, &r).await.expect("the emulator answers")).next_of(&a), Some(now_us + 35));
}

#[tokio::test]
async fn leases_are_taken_refused_while_live_free_after_expiry_and_released_only_by_their_value() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let lease = |expiry: EpochMillis, nonce: i64| expiry * 1_000 + nonce;
    let s = written(
        store
            .reserve(&key, &leases_only(now, vec![(0, lease(now + 5_000, 1)), (3, lease(now + 1_000, 2))]))
            .await
            .expect("present"),
    );
    assert_eq!(s.leases, BTreeMap::from([(0, lease(now + 5_000, 1)), (3, lease(now + 1_000, 2))]));
    assert_eq!(s.in_flight(now), 2);
    // Slot 3 is live at `now`: refused, slot 1 untouched.
    let r = leases_only(now, vec![(1, lease(now + 5_000, 3)), (3, lease(now + 5_000, 3))]);
    assert_eq!(refused(store.reserve(&key, &r).await.expect("the emulator answers")), s);
    // After slot 3 expired, another sender takes it over.
    let later = now + 2_000;
    let r = leases_only(later, vec![(3, lease(later + 5_000, 4))]);
    let s = written(store.reserve(&key, &r).await.expect("the emulator answers"));
    assert_eq!(s.leases.get(&3), Some(&lease(later + 5_000, 4)));
    // The first sender gives back slots 0 and 3: only slot 0 still holds its value.
    store.release(&key, &[(0, lease(now + 5_000, 1)), (3, lease(now + 1_000, 2))]).await.expect("the emulator answers");
    let (s, _) = store.flow_state(&key, 0).await.expect("the emulator answers");
    assert_eq!(s.expect("state").leases, BTreeMap::from([(3, lease(later + 5_000, 4))]));
    store.release(&key, &[(3, lease(later + 5_000, 4))]).await.expect("the emulator answers");
    let (s, _) = store.flow_state(&key, 0).await.expect("the emulator answers");
    assert!(s.expect("state").leases.is_empty());
    // Releasing on a key never written creates nothing.
    let other = FlowKey::host("other.example.invalid:443");
    store.release(&other, &[(0, 1)]).await.expect("the emulator answers");
    assert_eq!(store.flow_state(&other, 0).await.expect("the emulator answers").0, None);
}

#[tokio::test]
async fn reports_add_to_their_window_restart_an_older_one_and_count_into_a_newer_one() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let (w1, w2) = (now - now % 60_000, now - now % 60_000 + 60_000);
    let t = |requests, failures, throttles| Tally { requests, failures, throttles };
    let s = store.report(&key, &t(3, 1, 0), w1, now).await.expect("the emulator answers");
    assert_eq!((s.window_start, s.window_requests, s.window_failures), (Some(w1), 3, 1));
    assert_eq!((s.throttles, s.throttled_at), (0, None));
    let s = store.report(&key, &t(2, 2, 1), w1, now + 1).await.expect("the emulator answers");
    assert_eq!((s.window_start, s.window_requests, s.window_failures), (Some(w1), 5, 3));
    assert_eq!((s.throttles, s.throttled_at), (1, Some(now + 1)));
    let s = store.report(&key, &t(1, 0, 2), w2, now + 2).await.expect("the emulator answers");
    assert_eq!((s.window_start, s.window_requests, s.window_failures), (Some(w2), 1, 0));
    assert_eq!((s.throttles, s.throttled_at), (3, Some(now + 2)));
    // A late report of the older window counts into the stored, newer one.
    let s = store.report(&key, &t(4, 4, 0), w1, now + 3).await.expect("the emulator answers");
    assert_eq!((s.window_start, s.window_requests, s.window_failures), (Some(w2), 5, 4));
    assert_eq!(s.throttled_at, Some(now + 2));
}

#[tokio::test]
async fn the_breaker_opens_once_half_opens_only_when_due_and_closes_only_for_the_probe_owner() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let open = FlowChange::Open { trips: 1, until: now + 1_000, why: "7 of 10 failed".into() };
    let s = written(store.change(&key, &open, now).await.expect("the emulator answers"));
    assert_eq!(
        (s.breaker, s.breaker_until, s.breaker_since, s.trips),
        (BreakerPosition::Open, Some(now + 1_000), Some(now), 1)
    );
    assert_eq!(refused(store.change(&key, &open, now + 1).await.expect("the emulator answers")), s);
    // Open blocks every reservation.
    assert_eq!(refused(store.reserve(&key, &leases_only(now, vec![(0, 1)])).await.expect("the emulator answers")), s);

    let probe = |token: &str, until| FlowChange::HalfOpen { token: token.into(), until };
    assert_eq!(
        refused(store.change(&key, &probe("a", now + 5_000), now + 999).await.expect("the emulator answers")),
        s
    );
    let s = written(store.change(&key, &probe("a", now + 5_000), now + 1_000).await.expect("the emulator answers"));
    assert_eq!(
        (s.breaker, s.probe_token.as_deref(), s.breaker_until),
        (BreakerPosition::HalfOpen, Some("a"), Some(now + 5_000))
    );
    // The prober's deadline has not passed: nobody else takes over.
    assert_eq!(
        refused(store.change(&key, &probe("b", now + 9_000), now + 5_000).await.expect("the emulator answers")),
        s
    );
    assert_eq!(
        refused(
            store
                .change(&key, &FlowChange::Close { token: "b".into() }, now + 5_000)
                .await
                .expect("the emulator answers")
        ),
        s
    );
    // A dead prober: taken over after its deadline.
    let s = written(store.change(&key, &probe("b", now + 9_000), now + 5_001).await.expect("the emulator answers"));
    assert_eq!(s.probe_token.as_deref(), Some("b"));
    store
        .report(&key, &Tally { requests: 3, failures: 0, throttles: 0 }, now, now + 5_002)
        .await
        .expect("the emulator answers");

    let s = written(
        store.change(&key, &FlowChange::Close { token: "b".into() }, now + 6_000).await.expect("the emulator answers"),
    );
    assert_eq!(s.breaker, BreakerPosition::Closed);
    assert_eq!((s.breaker_until, s.probe_token.as_deref(), s.closed_at), (None, None, Some(now + 6_000)));
    assert_eq!((s.window_start, s.window_requests, s.window_failures), (None, 0, 0));
    assert_eq!(s.trips, 1);
    let snap = store.flow_snapshot().await.expect("the emulator answers");
    assert_eq!(snap.holds.get(&key), Some(&Hold { kind: "closed".into(), until: now + 6_000 }));

    // Open again, probe, and the probe fails: reopened only by its owner.
    written(
        store
            .change(&key, &FlowChange::Open { trips: 2, until: now + 7_000, why: "again".into() }, now + 6_500)
            .await
            .expect("present"),
    );
    written(store.change(&key, &probe("c", now + 8_000), now + 7_000).await.expect("the emulator answers"));
    let reopen = |token: &str| FlowChange::Reopen {
        token: token.into(),
        trips: 3,
        until: now + 20_000,
        why: "probe failed".into(),
    };
    refused(store.change(&key, &reopen("b"), now + 7_500).await.expect("the emulator answers"));
    let s = written(store.change(&key, &reopen("c"), now + 7_500).await.expect("the emulator answers"));
    assert_eq!(
        (s.breaker, s.trips, s.probe_token.as_deref(), s.breaker_until),
        (BreakerPosition::Open, 3, None, Some(now + 20_000))
    );
    let snap = store.flow_snapshot().await.expect("the emulator answers");
    assert_eq!(snap.holds.get(&key), Some(&Hold { kind: "open".into(), until: now + 20_000 }));
}

#[tokio::test]
async fn a_pause_only_extends_and_holds_reservations_until_it_ends() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    let pause = |until| FlowChange::Pause { until, why: "Retry-After: 2".into() };
    let s = written(store.change(&key, &pause(now + 2_000), now).await.expect("the emulator answers"));
    assert_eq!(s.paused_until, Some(now + 2_000));
    assert_eq!(refused(store.change(&key, &pause(now + 1_000), now).await.expect("the emulator answers")), s);
    assert_eq!(refused(store.change(&key, &pause(now + 2_000), now).await.expect("the emulator answers")), s);
    let s = written(store.change(&key, &pause(now + 3_000), now).await.expect("the emulator answers"));
    assert_eq!(s.paused_until, Some(now + 3_000));
    assert_eq!(
        store.flow_snapshot().await.expect("the emulator answers").holds.get(&key),
        Some(&Hold { kind: "paused".into(), until: now + 3_000 })
    );
    refused(store.reserve(&key, &leases_only(now + 2_999, vec![(0, 1)])).await.expect("the emulator answers"));
    written(store.reserve(&key, &leases_only(now + 3_000, vec![(0, 1)])).await.expect("the emulator answers"));
}

#[tokio::test]
async fn the_adaptive_factor_changes_only_from_the_stored_factor_and_clears_throttles() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    store
        .report(&key, &Tally { requests: 2, failures: 0, throttles: 2 }, now, now)
        .await
        .expect("the emulator answers");
    let factor = |from, to| FlowChange::Factor { from, to, why: "429s".into() };
    refused(store.change(&key, &factor(0.5, 0.25), now).await.expect("the emulator answers"));
    let s = written(store.change(&key, &factor(1.0, 0.5), now + 1).await.expect("the emulator answers"));
    assert_eq!((s.factor, s.factor_at, s.throttles), (0.5, Some(now + 1), 0));
    refused(store.change(&key, &factor(1.0, 0.5), now + 2).await.expect("the emulator answers"));
    let s = written(store.change(&key, &factor(0.5, 1.0), now + 3).await.expect("the emulator answers"));
    assert_eq!(s.factor, 1.0);
    // Stored as 1 now (not absent): still the full rate.
    assert_eq!(
        written(store.change(&key, &factor(1.0, 0.5), now + 4).await.expect("the emulator answers")).factor,
        0.5
    );
    // A key never written has the full rate.
    let other = FlowKey::host("other.example.invalid:443");
    assert_eq!(written(store.change(&other, &factor(1.0, 0.5), now).await.expect("the emulator answers")).factor, 0.5);
}

#[tokio::test]
async fn policies_are_created_replaced_deleted_and_come_back_with_the_holds_in_one_snapshot() {
    let (store, _, _) = store().await;
    let key = host();
    let tenant = TenantId::generate();
    let named = FlowKey::named(&tenant, "billing");
    let share = PolicyScope::Tenant(tenant.clone());
    assert!(store.put_policy(&key, &PolicyScope::Admin, &policy("10/s")).await.expect("the emulator answers"));
    assert!(!store.put_policy(&key, &PolicyScope::Admin, &policy("20/s")).await.expect("the emulator answers"));
    assert!(store.put_policy(&key, &share, &policy("5/s")).await.expect("the emulator answers"));
    assert!(store.put_policy(&named, &share, &policy("1/s")).await.expect("the emulator answers"));
    assert_eq!(store.get_policy(&key, &PolicyScope::Admin).await.expect("the emulator answers"), Some(policy("20/s")));
    assert_eq!(store.get_policy(&named, &PolicyScope::Admin).await.expect("the emulator answers"), None);
    let now = now_millis();
    written(
        store
            .change(&named, &FlowChange::Pause { until: now + 60_000, why: "503".into() }, now)
            .await
            .expect("the emulator answers"),
    );

    let snap = store.flow_snapshot().await.expect("the emulator answers");
    assert_eq!(snap.policies.len(), 3);
    assert_eq!(snap.policy(&key, &PolicyScope::Admin), Some(&policy("20/s")));
    assert_eq!(snap.policy(&key, &share), Some(&policy("5/s")));
    assert_eq!(snap.policy(&named, &share), Some(&policy("1/s")));
    assert_eq!(snap.holds.len(), 1);
    assert_eq!(snap.holds.get(&named), Some(&Hold { kind: "paused".into(), until: now + 60_000 }));

    assert!(store.delete_policy(&key, &share).await.expect("the emulator answers"));
    assert!(!store.delete_policy(&key, &share).await.expect("the emulator answers"));
    assert_eq!(store.get_policy(&key, &share).await.expect("the emulator answers"), None);
    assert_eq!(store.flow_snapshot().await.expect("the emulator answers").policies.len(), 2);
}

#[tokio::test]
async fn a_malformed_policy_item_is_skipped_by_the_snapshot() {
    let (store, client, table) = store().await;
    let key = host();
    store.put_policy(&key, &PolicyScope::Admin, &policy("10/s")).await.expect("the emulator answers");
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("FLOWS".into()))
        .item("sk", AttributeValue::S("POL#h:bad.example.invalid:443#admin".into()))
        .item("key", AttributeValue::S("h:bad.example.invalid:443".into()))
        .item("scope", AttributeValue::S("admin".into()))
        .item("policy", AttributeValue::S("{not json".into()))
        .send()
        .await
        .expect("raw put");
    let snap = store.flow_snapshot().await.expect("the emulator answers");
    assert_eq!(snap.policies.len(), 1);
    assert_eq!(snap.policy(&key, &PolicyScope::Admin), Some(&policy("10/s")));
}

#[tokio::test]
async fn flow_state_returns_the_state_and_the_last_transitions_newest_first() {
    let (store, _, _) = store().await;
    let key = host();
    let now = now_millis();
    written(
        store
            .change(&key, &FlowChange::Open { trips: 0, until: now + 10, why: "failing".into() }, now)
            .await
            .expect("the emulator answers"),
    );
    written(
        store
            .change(&key, &FlowChange::HalfOpen { token: "t".into(), until: now + 100 }, now + 10)
            .await
            .expect("the emulator answers"),
    );
    written(
        store.change(&key, &FlowChange::Close { token: "t".into() }, now + 20).await.expect("the emulator answers"),
    );
    written(
        store
            .change(&key, &FlowChange::Factor { from: 1.0, to: 0.5, why: "429".into() }, now + 30)
            .await
            .expect("the emulator answers"),
    );
    // A refused change leaves no history.
    refused(
        store.change(&key, &FlowChange::Close { token: "t".into() }, now + 40).await.expect("the emulator answers"),
    );

    let (state, events) = store.flow_state(&key, 3).await.expect("the emulator answers");
    assert_eq!(state.expect("state").factor, 0.5);
    let seen: Vec<(EpochMillis, &str, &str, Option<EpochMillis>)> =
        events.iter().map(|e| (e.at, e.to.as_str(), e.why.as_str(), e.until)).collect();
    assert_eq!(
        seen,
        vec![
            (now + 30, "rate_halved", "429", None),
            (now + 20, "closed", "probes succeeded", None),
            (now + 10, "half_open", "open span over: probing", None),
        ]
    );
    let (_, all) = store.flow_state(&key, 10).await.expect("the emulator answers");
    assert_eq!(all.last().map(|e| (e.at, e.to.as_str(), e.until)), Some((now, "open", Some(now + 10))));
    assert_eq!(all.len(), 4);
}

/// An item's size as DynamoDB counts it: each attribute's name plus its
/// value (a string's bytes; a number's significant digits, two to a byte, plus one).
fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, v)| {
            name.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => {
                        let digits = n.trim_start_matches('-').replace('.', "");
                        let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
                        significant.div_ceil(2) + 1
                    }
                    AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
                    other => panic!("unexpected attribute {other:?}"),
                }
        })
        .sum()
}

#[tokio::test]
async fn a_busy_key_state_item_with_eight_shares_and_thirty_two_leases_stays_under_one_kilobyte() {
    let (store, client, table) = store().await;
    let key = FlowKey::host("a-rather-long-host-name.api.example.invalid:8443");
    let now = now_millis();
    let now_us = now * 1_000;
    let mut buckets = vec![idle(BucketId::Key, now_us, 123_457)];
    buckets.extend((0..8).map(|_| idle(BucketId::share(&TenantId::generate()), now_us, 987_653)));
    let leases = (0..32).map(|slot| (slot, (now + 30_000) * 1_000 + 999)).collect();
    let s = written(store.reserve(&key, &Reservation { buckets, leases, now }).await.expect("the emulator answers"));
    assert_eq!((s.shares.len(), s.leases.len()), (8, 32));
    // Every other attribute set too: a breaker that tripped and is probing, a pause, a halved rate.
    store
        .report(&key, &Tally { requests: 99, failures: 77, throttles: 12 }, now, now)
        .await
        .expect("the emulator answers");
    let token = uuid::Uuid::new_v4().to_string();
    for change in [
        FlowChange::Factor { from: 1.0, to: 0.0625, why: "throttled".into() },
        FlowChange::Pause { until: now + 120_000, why: "Retry-After".into() },
        FlowChange::Open { trips: 12, until: now, why: "failing".into() },
        FlowChange::HalfOpen { token: token.clone(), until: now + 30_000 },
    ] {
        written(store.change(&key, &change, now).await.expect("the emulator answers"));
    }
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("FLOW#{key}")))
        .key("sk", AttributeValue::S("STATE".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("state item");
    let size = item_size(&item);
    assert!(size < 1_024, "state item is {size} bytes: {item:?}");
    // Every attribute is one the state reads back: no stray attribute grows the item.
    let known =
        ["pk", "sk", "expires_at", "nx", "pu", "f", "fa", "tc", "tl", "br", "bu", "bs", "bt", "tok", "w", "wr", "wf"];
    let stray: Vec<&String> =
        item.keys().filter(|k| !known.contains(&k.as_str()) && !k.starts_with("nx_") && !k.starts_with('l')).collect();
    assert!(stray.is_empty(), "unexpected attributes {stray:?}");
}

/// One scripted sequence of every call, its answers rendered for comparison.
async fn script<S: FlowLimiter + FlowPolicies>(store: &S, now: EpochMillis) -> Vec<String> {
    let key = host();
    let tenant = TenantId::parse("tnt_0123456789abcdef").expect("tenant id");
    let share = BucketId::share(&tenant);
    let now_us = now * 1_000;
    let mut out = Vec::new();
    let r = |now: EpochMillis, buckets, leases| Reservation { buckets, leases, now };
    let reservations = [
        r(
            now,
            vec![idle(BucketId::Key, now_us, 100), idle(share.clone(), now_us, 200)],
            vec![(0, (now + 50) * 1_000 + 1)],
        ),
        r(now, vec![idle(BucketId::Key, now_us, 100)], vec![]),
        r(now, vec![busy(BucketId::Key, now_us, now_us + 1_000, 100)], vec![(0, (now + 50) * 1_000 + 2)]),
        r(now, vec![busy(BucketId::Key, now_us, now_us + 1_000, 100)], vec![(1, (now + 50) * 1_000 + 2)]),
        r(now + 60, vec![busy(share.clone(), now_us, now_us + 1_000, 10)], vec![(0, (now + 90) * 1_000 + 3)]),
        r(now + 60, vec![busy(share.clone(), now_us, now_us + 100, 10)], vec![]),
    ];
    for res in &reservations {
        out.push(format!("reserve {:?}", store.reserve(&key, res).await.expect("the emulator answers")));
    }
    store
        .release(&key, &[(0, (now + 50) * 1_000 + 1), (1, (now + 50) * 1_000 + 2)])
        .await
        .expect("the emulator answers");
    out.push(format!("after release {:?}", store.flow_state(&key, 0).await.expect("the emulator answers")));
    let t = |requests, failures, throttles| Tally { requests, failures, throttles };
    for (tally, w, at) in [
        (t(5, 4, 1), now, now + 1),
        (t(6, 5, 0), now, now + 2),
        (t(1, 1, 2), now - 10, now + 3),
        (t(2, 0, 0), now + 10, now + 4),
    ] {
        out.push(format!("report {:?}", store.report(&key, &tally, w, at).await.expect("the emulator answers")));
    }
    let changes = [
        FlowChange::Open { trips: 1, until: now + 100, why: "9 of 11 failed".into() },
        FlowChange::Open { trips: 2, until: now + 200, why: "again".into() },
        FlowChange::HalfOpen { token: "p1".into(), until: now + 300 },
        FlowChange::HalfOpen { token: "p1".into(), until: now + 300 },
        FlowChange::Close { token: "p2".into() },
        FlowChange::Reopen { token: "p1".into(), trips: 2, until: now + 400, why: "probe failed".into() },
        FlowChange::HalfOpen { token: "p3".into(), until: now + 500 },
        FlowChange::Close { token: "p3".into() },
        FlowChange::Pause { until: now + 1_000, why: "Retry-After: 1".into() },
        FlowChange::Pause { until: now + 900, why: "shorter".into() },
        FlowChange::Factor { from: 0.5, to: 0.25, why: "stale".into() },
        FlowChange::Factor { from: 1.0, to: 0.5, why: "throttled".into() },
        FlowChange::Factor { from: 0.5, to: 1.0, why: "clean".into() },
    ];
    // Changes that succeed are at distinct milliseconds: history items of one millisecond have no order.
    let times = [90, 150, 99, 100, 150, 160, 400, 450, 460, 470, 480, 490, 500];
    for (change, dt) in changes.iter().zip(times) {
        out.push(format!("change {:?}", store.change(&key, change, now + dt).await.expect("the emulator answers")));
    }
    let pol = policy("10/s");
    out.push(format!("put {}", store.put_policy(&key, &PolicyScope::Admin, &pol).await.expect("the emulator answers")));
    out.push(format!("put {}", store.put_policy(&key, &PolicyScope::Admin, &pol).await.expect("the emulator answers")));
    out.push(format!(
        "put {}",
        store.put_policy(&key, &PolicyScope::Tenant(tenant.clone()), &pol).await.expect("the emulator answers")
    ));
    out.push(format!(
        "delete {}",
        store.delete_policy(&key, &PolicyScope::Tenant(tenant.clone())).await.expect("the emulator answers")
    ));
    out.push(format!(
        "delete {}",
        store.delete_policy(&key, &PolicyScope::Tenant(tenant)).await.expect("the emulator answers")
    ));
    out.push(format!("get {:?}", store.get_policy(&key, &PolicyScope::Admin).await.expect("the emulator answers")));
    let snap = store.flow_snapshot().await.expect("the emulator answers");
    let policies: BTreeMap<_, _> =
        snap.policies.iter().map(|((k, s), p)| (format!("{k} {s:?}"), format!("{p:?}"))).collect();
    let holds: BTreeMap<_, _> = snap.holds.iter().collect();
    out.push(format!("snapshot {policies:?} {holds:?}"));
    out.push(format!("state {:?}", store.flow_state(&key, 20).await.expect("the emulator answers")));
    out
}

#[tokio::test]
async fn the_fake_and_the_dynamodb_store_answer_one_scripted_sequence_alike() {
    let (dynamo, _, _) = store().await;
    let now = now_millis();
    let fake = FakeStore::new();
    let expected = script(&fake, now).await;
    let got = script(&dynamo, now).await;
    assert_eq!(expected.len(), got.len());
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(e, g, "step {i} differs");
    }
    // The script went through both outcomes of the conditional writes.
    assert!(
        got.iter().any(|l| l.starts_with("reserve Refused")) && got.iter().any(|l| l.starts_with("change Refused"))
    );
    assert!(got.iter().any(|l| l.starts_with("change Written")));
}
