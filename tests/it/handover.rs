//! Handing a task to Scheduler is recorded on its state: a cancel deletes
//! the schedule that holds the task (the API's one-time schedule, or the
//! sender's retry schedule) and makes no Scheduler call for a task that the
//! queue holds.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_scheduler::types::{ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, Target as Aim};
use courier::domain::{SchedulerHold, TaskId, TaskState};
use courier::dynamo::DynamoStore;
use courier::ports::{DeliveryLedger, TaskStore, Unit};
use courier::resources::{TABLE_HASH_KEY, TABLE_RANGE_KEY};
use serde_json::json;

use crate::helpers::{Target, TestStack, eventually, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(30);

async fn store(stack: &TestStack) -> DynamoStore {
    DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), &stack.outputs().names.table, 90)
}

async fn state(stack: &TestStack, id: &str) -> TaskState {
    let unit = Unit { task: TaskId::parse(id).expect("id"), run: None };
    store(stack).await.read_state(&unit).await.expect("read").expect("stored")
}

async fn scheduler() -> aws_sdk_scheduler::Client {
    aws_sdk_scheduler::Client::new(&sdk().await)
}

async fn schedule_exists(stack: &TestStack, name: &str) -> bool {
    let group = &stack.outputs().names.schedule_group;
    scheduler().await.get_schedule().group_name(group).name(name).send().await.is_ok()
}

/// A one-time schedule named `name` a day ahead (never fired during a test),
/// standing for one Courier would have made.
async fn put_schedule(stack: &TestStack, name: &str) {
    let out = stack.outputs();
    let day_ahead = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    scheduler()
        .await
        .create_schedule()
        .group_name(&out.names.schedule_group)
        .name(name)
        .schedule_expression(format!("at({})", day_ahead.format(&f).expect("format")))
        .flexible_time_window(FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().expect("window"))
        .target(
            Aim::builder()
                .arn(&out.queue_arn)
                .role_arn("arn:aws:iam::123456789012:role/courier-scheduler")
                .input("{}")
                .build()
                .expect("target"),
        )
        .action_after_completion(ActionAfterCompletion::Delete)
        .send()
        .await
        .expect("create schedule");
}

#[tokio::test]
async fn a_task_far_ahead_records_its_schedule_and_a_cancel_deletes_it() {
    let stack = TestStack::start(stack_options("h-far")).await;
    let t = stack
        .api
        .create_task(
            json!({"request": {"method": "POST", "url": "https://hook.invalid/far"}, "schedule": {"delay": "2h"}}),
        )
        .await;
    let id = t["id"].as_str().expect("id");
    assert_eq!(state(&stack, id).await.scheduler, SchedulerHold::Schedule(id.to_owned()));
    assert!(schedule_exists(&stack, id).await, "the API made its schedule");
    let (status, cancelled) = stack.api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(!schedule_exists(&stack, id).await, "the cancel deleted the schedule");
}

#[tokio::test]
async fn a_task_the_queue_holds_is_cancelled_without_a_scheduler_call() {
    let mut opts = stack_options("h-near");
    opts.pollers = 0; // it stays queued while the test looks
    let stack = TestStack::start(opts).await;
    let t = stack
        .api
        .create_task(
            json!({"request": {"method": "POST", "url": "https://hook.invalid/near"}, "schedule": {"delay": "10m"}}),
        )
        .await;
    let id = t["id"].as_str().expect("id");
    assert_eq!(state(&stack, id).await.scheduler, SchedulerHold::Nothing);
    // A schedule under its name (none of Courier's): a cancel that called
    // Scheduler for this task would delete it.
    put_schedule(&stack, id).await;
    let (status, cancelled) = stack.api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(schedule_exists(&stack, id).await, "no Scheduler call for a task the queue holds");
}

#[tokio::test]
async fn a_retry_wait_handed_to_scheduler_is_recorded_and_a_cancel_deletes_that_schedule() {
    let target = Target::start(&[500]).await;
    let stack = TestStack::start(stack_options("h-retry")).await;
    let t = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/x")}, "retry": {"intervals": ["13h"]}}))
        .await;
    let id = t["id"].as_str().expect("id").to_owned();
    stack.api.wait_for_status(&id, "retrying", WAIT).await;
    // The sender records the retry's schedule once Scheduler has it.
    let name = eventually(WAIT, || async {
        match state(&stack, &id).await.scheduler {
            SchedulerHold::Schedule(name) if name != id => Some(name),
            _ => None,
        }
    })
    .await
    .expect("the retry's schedule recorded on the task");
    assert!(name.starts_with(&format!("{id}-r")), "{name}");
    assert!(schedule_exists(&stack, &name).await, "the sender made it");
    let (status, cancelled) = stack.api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(!schedule_exists(&stack, &name).await, "the cancel deleted the retry's schedule");
    assert_eq!(target.received().len(), 1, "one attempt, no retry");
}

#[tokio::test]
async fn a_task_stored_before_the_hand_over_was_recorded_is_cancelled_as_it_was_derived_then() {
    let mut opts = stack_options("h-old");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let t = stack
        .api
        .create_task(
            json!({"request": {"method": "POST", "url": "https://hook.invalid/old"}, "schedule": {"delay": "2h"}}),
        )
        .await;
    let id = t["id"].as_str().expect("id");
    // What an item written before the flag looks like: no `on_scheduler`.
    aws_sdk_dynamodb::Client::new(&sdk().await)
        .update_item()
        .table_name(&stack.outputs().names.table)
        .key(TABLE_HASH_KEY, AttributeValue::S(format!("TASK#{id}")))
        .key(TABLE_RANGE_KEY, AttributeValue::S("STATE".into()))
        .update_expression("REMOVE on_scheduler")
        .send()
        .await
        .expect("update");
    assert_eq!(state(&stack, id).await.scheduler, SchedulerHold::Unrecorded);
    let (status, cancelled) = stack.api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert!(!schedule_exists(&stack, id).await, "derived from its times: the schedule is deleted");
    let listed = store(&stack).await.get(&TaskId::parse(id).expect("id")).await.expect("read").expect("task");
    assert_eq!(listed.state.status.as_str(), "cancelled");
}
