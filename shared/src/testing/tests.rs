//! The fakes' own contracts, where the workers' tests rely on them.

use std::time::Duration;

use super::*;
use crate::domain::{Quotas, ReplayFilter, TaskKind};
use crate::ports::{
    Claim, DeliveryLedger, DeliveryQueue, ListFilter, ReconcileIndex, ReplayStore, TaskStore, TenantStore, Transition,
};

const NOW: EpochMillis = 1_700_000_000_000;

fn unit(t: &NewTask) -> Unit {
    Unit { task: t.id.clone(), run: None }
}

#[tokio::test]
async fn a_second_claim_under_a_live_lease_is_refused_and_taken_once_it_expires() {
    let store = FakeStore::new();
    let t = new_task(&t1(), "https://a.invalid/", NOW, RetryPolicy::default());
    store.insert(&t);
    let Claim::Claimed { state, interrupted_at: None, .. } =
        store.claim(&unit(&t), NOW, 5_000, None).await.expect("the fakes never fail")
    else {
        panic!("the first claim takes the task");
    };
    assert_eq!((state.status, state.attempts, state.lease_until), (TaskStatus::Sending, 1, Some(NOW + 6_000)));
    assert_eq!(
        store.claim(&unit(&t), NOW + 1, 5_000, None).await.expect("the fakes never fail"),
        Claim::NotDue(NOW + 6_001),
        "comes back when the lease ends"
    );
    let again = store.claim(&unit(&t), NOW + 6_001, 5_000, None).await.expect("the fakes never fail");
    assert!(matches!(again, Claim::Claimed { interrupted_at: Some(NOW), .. }), "{again:?}");
}

#[tokio::test]
async fn a_claim_defers_a_task_not_due_and_refuses_one_that_does_not_fit() {
    let store = FakeStore::new();
    let t = new_task(&t1(), "https://a.invalid/", NOW + 60_000, RetryPolicy::default());
    store.insert(&t);
    assert_eq!(
        store.claim(&unit(&t), NOW, 5_000, None).await.expect("the fakes never fail"),
        Claim::NotDue(NOW + 60_000)
    );
    assert_eq!(
        store.claim(&unit(&t), NOW + 60_000, 5_000, Some(999)).await.expect("the fakes never fail"),
        Claim::NoTime
    );
    assert_eq!(store.state(&unit(&t)).map(|s| s.status), Some(TaskStatus::Pending));
}

#[tokio::test]
async fn only_the_lease_holders_attempt_finishes_a_task() {
    let store = FakeStore::new().with_reconcile_grace(10_000);
    let t = new_task(&t1(), "https://a.invalid/", NOW, RetryPolicy::default());
    store.insert(&t);
    store.claim(&unit(&t), NOW, 5_000, None).await.expect("the fakes never fail");
    let retry = Transition::Retry { due_at: NOW + 2_000, status: Some(500) };
    assert!(!store.finish(&unit(&t), 2, &retry, NOW, None).await.expect("the fakes never fail"));
    assert!(store.finish(&unit(&t), 1, &retry, NOW, None).await.expect("the fakes never fail"));
    assert!(
        !store
            .finish(&unit(&t), 1, &Transition::Succeeded { status: Some(200) }, NOW, None)
            .await
            .expect("the fakes never fail"),
        "no longer sending"
    );
    let st = store.state(&unit(&t)).expect("stored");
    assert_eq!((st.status, st.due_at, st.last_status), (TaskStatus::Retrying, Some(NOW + 2_000), Some(500)));
    assert_eq!(store.recon_at(&unit(&t)), Some(NOW + 12_000));
}

#[tokio::test]
async fn the_reconcile_index_pages_in_check_time_order_and_reports_how_far_it_read() {
    let store = FakeStore::new().with_reconcile_grace(0);
    let mut tasks: Vec<NewTask> = Vec::new();
    while tasks.len() < 3 {
        let t = new_task(&t1(), "https://a.invalid/", NOW + 10 * tasks.len() as i64, RetryPolicy::default());
        if shard_of(&t.id) == 0 {
            tasks.push(t);
        }
    }
    for t in tasks.iter().rev() {
        store.insert(t);
    }
    let first = store.reconcile_page(0, NOW, NOW + 100, 2, None).await.expect("the fakes never fail");
    assert_eq!(
        first.items.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        [tasks[0].id.clone(), tasks[1].id.clone()]
    );
    assert_eq!(first.checked_to, NOW + 10);
    let last = store.reconcile_page(0, NOW, NOW + 100, 2, first.next.as_deref()).await.expect("the fakes never fail");
    assert_eq!((last.items.len(), last.next, last.checked_to), (1, None, NOW + 100));
}

#[tokio::test]
async fn a_replay_saves_only_over_the_version_it_read() {
    let store = FakeStore::new();
    let mut r = Replay::start(rpl1(), t1(), ReplayFilter::all_failed(), 1, NOW);
    store.put_replay(&r).await.expect("the fakes never fail");
    r.version = 2;
    assert!(store.save_replay(&r).await.expect("the fakes never fail"));
    assert!(!store.save_replay(&r).await.expect("the fakes never fail"), "the same version twice");
    assert_eq!(store.get_replay(&rpl1()).await.expect("the fakes never fail").map(|r| r.version), Some(2));
}

#[tokio::test]
async fn active_slots_are_reserved_within_the_quota_only() {
    let store = FakeStore::new();
    let quotas = Quotas { max_active_tasks: 3, create_rate_per_second: 10 };
    let tenant = Tenant { id: t1(), name: "t".into(), enabled: true, quotas, active: 0, created_at: NOW };
    store.create_tenant(&tenant).await.expect("the fakes never fail");
    assert!(store.reserve_active(&tenant, 2).await.expect("the fakes never fail"));
    assert!(!store.reserve_active(&tenant, 2).await.expect("the fakes never fail"));
    store.release_active(&t1(), 1).await.expect("the fakes never fail");
    assert!(store.reserve_active(&tenant, 2).await.expect("the fakes never fail"));
    assert_eq!(store.get_tenant(&t1()).await.expect("the fakes never fail").map(|t| t.active), Some(3));
}

#[tokio::test]
async fn a_listing_cursor_is_not_shifted_by_tasks_leaving_the_filter() {
    let store = FakeStore::new();
    for i in 0..3 {
        let t = new_task(&t1(), "https://a.invalid/", NOW + i, RetryPolicy::default());
        store.put_state(TaskState { status: TaskStatus::Failed, kind: TaskKind::Once, ..t.initial_state() }, None);
    }
    let failed = ListFilter { status: Some(TaskStatus::Failed), ..ListFilter::default() };
    let first = store.list(&t1(), &failed, 2, None, NOW).await.expect("the fakes never fail");
    assert_eq!(first.items.iter().map(|s| s.created_at).collect::<Vec<_>>(), [NOW + 2, NOW + 1]);
    for s in &first.items {
        store.put_state(TaskState { status: TaskStatus::Pending, ..s.clone() }, None);
    }
    let rest = store.list(&t1(), &failed, 2, first.cursor.as_deref(), NOW).await.expect("the fakes never fail");
    assert_eq!((rest.items.iter().map(|s| s.created_at).collect::<Vec<_>>(), rest.cursor), (vec![NOW], None));
}

#[tokio::test]
async fn the_queue_fake_records_messages_with_their_delays() {
    let queue = FakeQueue::default();
    let id = TaskId::generate();
    queue
        .enqueue(&crate::domain::QueueMessage::deliver(&id, None), Duration::from_secs(3))
        .await
        .expect("the fakes never fail");
    queue.retry_later("rh-1", Duration::from_secs(9)).await.expect("the fakes never fail");
    assert_eq!(queue.sent(), [(crate::domain::QueueMessage::deliver(&id, None), Duration::from_secs(3))]);
    assert_eq!(queue.retried(), [("rh-1".to_owned(), Duration::from_secs(9))]);
}
