//! A reconciler pass on the in-memory fakes: what it re-enqueues, what it
//! leaves alone, and how far it moves each shard's watermark.

use super::*;
use crate::domain::{RetryPolicy, TaskState};
use crate::testing::{FakeQueue, FakeStore, new_task, shard_of, t1};

const NOW: EpochMillis = 1_700_000_000_000;
const GRACE: Duration = Duration::from_secs(60);

fn unit(st: &TaskState) -> Unit {
    Unit { task: st.id.clone(), run: None }
}

/// A pending task due at `due`, in the index at `recon`.
fn pending(store: &FakeStore, due: EpochMillis, recon: EpochMillis) -> TaskState {
    let st = new_task(&t1(), "https://a.invalid/", due, RetryPolicy::default()).initial_state();
    store.put_state(st.clone(), Some(recon));
    st
}

#[tokio::test]
async fn a_pass_requeues_a_due_unqueued_task_leaves_one_within_its_grace_and_moves_the_watermarks() {
    let (store, queue) = (FakeStore::new(), FakeQueue::default());
    let reconciler = Reconciler::new(store.clone(), queue.clone(), GRACE);
    let stuck = pending(&store, NOW - 120_000, NOW - 60_000);
    // Its check time came, but its due time moved since: still within the grace.
    let recent = pending(&store, NOW - 10_000, NOW - 30_000);
    let later = pending(&store, NOW, NOW + 60_000);
    let report = reconciler.run_once(NOW).await.expect("the fakes never fail");
    assert_eq!((report.examined, report.requeued, report.complete), (2, 1, true));
    assert_eq!(report.sample, [stuck.id.to_string()]);
    assert_eq!(queue.sent(), [(QueueMessage::deliver(&stuck.id, None), Duration::ZERO)]);
    // Looked at again after the grace, in case this message is lost too.
    assert_eq!(store.recon_at(&unit(&stuck)), Some(NOW + 60_000));
    assert_eq!(store.recon_at(&unit(&recent)), Some(NOW - 30_000));
    assert_eq!(store.recon_at(&unit(&later)), Some(NOW + 60_000));
    for shard in 0..RECONCILE_SHARDS {
        assert_eq!(store.watermark_of(shard), Some(NOW), "shard {shard}");
    }
    assert_eq!(store.state(&unit(&stuck)).map(|s| s.status), Some(TaskStatus::Pending));
}

#[tokio::test]
async fn the_next_pass_starts_at_the_watermark_and_does_not_requeue_again() {
    let (store, queue) = (FakeStore::new(), FakeQueue::default());
    let reconciler = Reconciler::new(store.clone(), queue.clone(), GRACE);
    let stuck = pending(&store, NOW - 120_000, NOW - 60_000);
    reconciler.run_once(NOW).await.expect("the fakes never fail");
    let report = reconciler.run_once(NOW + 30_000).await.expect("the fakes never fail");
    assert_eq!((report.examined, report.requeued), (0, 0));
    assert_eq!(queue.sent().len(), 1);
    // A pass that found nothing leaves the watermark (one write fewer per shard and run)…
    assert_eq!(store.watermark_of(shard_of(&stuck.id)), Some(NOW));
    // …until it lags by ten minutes (or a page finds something).
    let later = NOW + 10 * 60_000;
    reconciler.run_once(later).await.expect("the fakes never fail");
    assert_eq!(store.watermark_of(shard_of(&stuck.id)), Some(later));
}

#[tokio::test]
async fn a_pass_cut_short_by_its_page_budget_keeps_the_watermark_where_it_stopped() {
    let (store, queue) = (FakeStore::new(), FakeQueue::default());
    let reconciler = Reconciler::new(store.clone(), queue.clone(), GRACE).with_paging(1, 1);
    let mut same_shard = Vec::new();
    while same_shard.len() < 2 {
        let st = new_task(&t1(), "https://a.invalid/", NOW - 200_000, RetryPolicy::default()).initial_state();
        if shard_of(&st.id) == 0 {
            same_shard.push(st);
        }
    }
    store.put_state(same_shard[0].clone(), Some(NOW - 90_000));
    store.put_state(same_shard[1].clone(), Some(NOW - 80_000));
    let report = reconciler.run_once(NOW).await.expect("the fakes never fail");
    assert_eq!((report.requeued, report.complete), (1, false));
    assert_eq!(report.sample, [same_shard[0].id.to_string()]);
    assert_eq!(store.watermark_of(0), Some(NOW - 90_000));
}

#[tokio::test]
async fn a_task_held_back_by_its_hosts_flow_limit_is_left_to_its_held_message_for_half_an_hour() {
    use crate::domain::{FlowKey, FlowPolicy, PolicyScope};
    use crate::ports::FlowPolicies;
    let (store, queue) = (FakeStore::new(), FakeQueue::default());
    let reconciler = Reconciler::new(store.clone(), queue.clone(), GRACE);
    let policy = FlowPolicy::parse_input(&serde_json::json!({"rate": "1/s"}), false).expect("policy");
    store.put_policy(&FlowKey::host("a.invalid:443"), &PolicyScope::Admin, &policy).await.expect("put");
    let held = pending(&store, NOW - 120_000, NOW - 60_000);
    let report = reconciler.run_once(NOW).await.expect("the fakes never fail");
    assert_eq!((report.requeued, report.postponed), (0, 1));
    assert!(queue.sent().is_empty());
    assert_eq!(store.recon_at(&unit(&held)), Some(NOW + 60_000));
    // Half an hour overdue, the reconciler no longer trusts the held message.
    let later = NOW + FLOW_HOLD_GRACE_MS;
    let report = reconciler.run_once(later).await.expect("the fakes never fail");
    assert_eq!(report.requeued, 1);
}
