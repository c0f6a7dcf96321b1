//! The local Scheduler bridge fires due `at()` schedules into the delivery
//! queue and deletes those whose ActionAfterCompletion is DELETE.

use aws_sdk_scheduler::types::{ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, Target};
use courier_local::scheduler::{Bridge, SQS_SEND_MESSAGE_TARGET};
use time::OffsetDateTime;

use crate::delivery::receive_all;
use crate::helpers::{sdk, unique_stack};

fn at(t: OffsetDateTime) -> String {
    format!(
        "at({})",
        t.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]")).expect("format")
    )
}

#[tokio::test]
async fn the_bridge_fires_due_schedules_once_and_leaves_future_ones() {
    let sdk = sdk().await;
    let out = courier_local::bootstrap::bootstrap(&sdk, &unique_stack("sched")).await.expect("bootstrap");
    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let group = out.names.schedule_group.clone();
    let now = OffsetDateTime::now_utc();
    let create = |name: &'static str, expr: String, target: Target, delete: bool| {
        let scheduler = scheduler.clone();
        let group = group.clone();
        async move {
            scheduler
                .create_schedule()
                .group_name(group)
                .name(name)
                .schedule_expression(expr)
                .flexible_time_window(
                    FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().expect("window"),
                )
                .target(target)
                .action_after_completion(if delete {
                    ActionAfterCompletion::Delete
                } else {
                    ActionAfterCompletion::None
                })
                .send()
                .await
                .expect("create schedule");
        }
    };
    let role = "arn:aws:iam::123456789012:role/courier-scheduler";
    // Templated SQS target: the input is the body, placeholders substituted.
    create(
        "due-templated",
        at(now - time::Duration::seconds(5)),
        Target::builder()
            .arn(&out.queue_arn)
            .role_arn(role)
            .input(r#"{"t":"<aws.scheduler.scheduled-time>"}"#)
            .build()
            .expect("target"),
        true,
    )
    .await;
    // Universal SendMessage target, as Courier's API uses for far-future tasks.
    let send = serde_json::json!({"QueueUrl": out.queue_url, "MessageBody": "universal", "DelaySeconds": 0});
    create(
        "due-universal",
        at(now - time::Duration::seconds(1)),
        Target::builder().arn(SQS_SEND_MESSAGE_TARGET).role_arn(role).input(send.to_string()).build().expect("target"),
        false,
    )
    .await;
    create(
        "future",
        at(now + time::Duration::hours(1)),
        Target::builder().arn(&out.queue_arn).role_arn(role).input("later").build().expect("target"),
        true,
    )
    .await;

    let mut bridge = Bridge::new(scheduler.clone(), aws_sdk_sqs::Client::new(&sdk), group.clone());
    let mut fired = bridge.tick(now).await.expect("tick");
    fired.sort();
    assert_eq!(fired, ["due-templated", "due-universal"]);
    // A second tick does not fire the kept schedule again.
    assert!(bridge.tick(now).await.expect("tick").is_empty());

    let mut bodies: Vec<String> =
        receive_all(&out.queue_url, 2).await.iter().map(|m| m.body().unwrap_or_default().to_owned()).collect();
    bodies.sort();
    let expected_time = at(now - time::Duration::seconds(5)).replace("at(", "").replace(')', "Z");
    let mut expected = [format!("{{\"t\":\"{expected_time}\"}}"), "universal".to_owned()];
    expected.sort();
    assert_eq!(bodies, expected);

    let left: Vec<String> = scheduler
        .list_schedules()
        .group_name(&group)
        .send()
        .await
        .expect("list")
        .schedules
        .iter()
        .filter_map(|s| s.name().map(str::to_owned))
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["due-universal", "future"], "DELETE schedules are gone once fired");
}
