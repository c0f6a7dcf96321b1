//! A replay step on the in-memory fakes: a page moved and saved, the next
//! page's message sent; a duplicate message doing nothing; the last page
//! ending the replay.

use std::time::Duration;

use super::*;
use crate::domain::{EpochMillis, Quotas, ReplayFilter, RetryPolicy, TaskKind, TaskState, TaskStatus, Tenant};
use crate::ports::Unit;
use crate::testing::{FakeQueue, FakeStore, ManualClock, new_task, rpl1, t1};

const NOW: EpochMillis = 1_700_000_000_000;

/// A tenant with three failed tasks and a replay of them, two per page.
async fn arrange(store: &FakeStore) -> Vec<TaskState> {
    let quotas = Quotas { max_active_tasks: 100, create_rate_per_second: 10 };
    let tenant = Tenant { id: t1(), name: "t".into(), enabled: true, quotas, active: 0, created_at: NOW };
    store.create_tenant(&tenant).await.expect("the fakes never fail");
    let mut failed = Vec::new();
    for i in 0..3 {
        let t = new_task(&t1(), "https://a.invalid/", NOW - 10_000 + i, RetryPolicy::default());
        let st = TaskState {
            status: TaskStatus::Failed,
            kind: TaskKind::Once,
            attempts: 4,
            due_at: None,
            ..t.initial_state()
        };
        store.put_state(st.clone(), None);
        failed.push(st);
    }
    let replay = Replay::start(rpl1(), t1(), ReplayFilter::all_failed(), 2, NOW);
    store.put_replay(&replay).await.expect("the fakes never fail");
    failed
}

fn delivered(queue: &FakeQueue) -> Vec<String> {
    queue
        .sent()
        .into_iter()
        .filter_map(|(m, _)| match m {
            QueueMessage::DeliverV1 { task_id, .. } => Some(task_id.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_page_moves_its_tasks_saves_the_cursor_and_sends_the_next_page_message() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let failed = arrange(&store).await;
    let out = step_with(&store, &queue, &clock, &rpl1(), 0, 0).await.expect("the fakes never fail");
    assert_eq!(out, StepOutcome::Page { replayed: 2, skipped: 0, errored: 0, advanced: true, done: false });
    // Newest first: the last two created.
    for st in &failed[1..] {
        let now = store.state(&Unit { task: st.id.clone(), run: None }).expect("stored");
        assert_eq!((now.status, now.due_at, now.retry_base, now.max_attempts), (TaskStatus::Pending, Some(NOW), 4, 8));
    }
    assert_eq!(delivered(&queue), [failed[2].id.to_string(), failed[1].id.to_string()]);
    let next = QueueMessage::ReplayV1 { replay_id: rpl1(), chain: 0, page: 1 };
    assert_eq!(queue.sent().last(), Some(&(next, Duration::from_secs(1))));
    let saved = store.get_replay(&rpl1()).await.expect("the fakes never fail").expect("stored");
    assert_eq!((saved.page, saved.version, saved.replayed, saved.updated_at), (1, 2, 2, NOW));
    assert!(saved.cursor.is_some());
    assert_eq!(store.get_tenant(&t1()).await.expect("the fakes never fail").map(|t| t.active), Some(2));
}

#[tokio::test]
async fn a_duplicate_page_message_does_nothing() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    arrange(&store).await;
    step_with(&store, &queue, &clock, &rpl1(), 0, 0).await.expect("the fakes never fail");
    let sent = queue.sent().len();
    assert_eq!(
        step_with(&store, &queue, &clock, &rpl1(), 0, 0).await.expect("the fakes never fail"),
        StepOutcome::Stale
    );
    assert_eq!(queue.sent().len(), sent);
    let saved = store.get_replay(&rpl1()).await.expect("the fakes never fail").expect("stored");
    assert_eq!((saved.page, saved.version, saved.replayed), (1, 2, 2));
}

#[tokio::test]
async fn the_last_page_ends_the_replay_without_another_message() {
    let (store, queue, clock) = (FakeStore::new(), FakeQueue::default(), ManualClock::at(NOW));
    let failed = arrange(&store).await;
    step_with(&store, &queue, &clock, &rpl1(), 0, 0).await.expect("the fakes never fail");
    clock.advance(1_000);
    let out = step_with(&store, &queue, &clock, &rpl1(), 0, 1).await.expect("the fakes never fail");
    assert_eq!(out, StepOutcome::Page { replayed: 1, skipped: 0, errored: 0, advanced: true, done: true });
    assert_eq!(delivered(&queue).last(), Some(&failed[0].id.to_string()));
    assert!(!queue.sent().iter().any(|(m, _)| matches!(m, QueueMessage::ReplayV1 { page: 2, .. })));
    let saved = store.get_replay(&rpl1()).await.expect("the fakes never fail").expect("stored");
    assert_eq!(
        (saved.status, saved.replayed, saved.cursor, saved.updated_at),
        (ReplayStatus::Done, 3, None, NOW + 1_000)
    );
}
