//! Each schedule kind end to end: a delay and a near `at` through SQS
//! `DelaySeconds`, a far-future `at` through a Scheduler one-time schedule
//! fired early (and on time by the local bridge), and cron runs.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use courier::domain::{format_millis, now_millis};
use courier_local::scheduler::Bridge;
use serde_json::json;
use time::OffsetDateTime;

use crate::helpers::{Target, TestStack, eventually, sdk, stack_options, wait_until_queue_empty};

const WAIT: Duration = Duration::from_secs(30);

fn rfc3339(ms: i64) -> String {
    format_millis(ms)
}

#[tokio::test]
async fn a_delayed_task_and_a_near_at_task_leave_on_time_through_sqs() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("delay")).await;
    let api = &stack.api;
    let created = now_millis();
    let delayed = api
        .create_task(json!({"request": {"method": "GET", "url": target.url("/delay")}, "schedule": {"delay": "3s"}}))
        .await;
    let at = created + 4_000;
    let timed = api
        .create_task(json!({"request": {"method": "GET", "url": target.url("/at")}, "schedule": {"at": rfc3339(at)}}))
        .await;
    assert_eq!(delayed["status"], "scheduled");
    assert_eq!(timed["next_run_at"], rfc3339(at));
    // Nothing on the queue is visible yet: both wait as SQS delays.
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&stack.outputs().queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("attributes")
        .attributes
        .unwrap_or_default();
    assert_eq!(attrs.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed).map(String::as_str), Some("2"));
    for id in [&delayed["id"], &timed["id"]] {
        api.wait_for_status(id.as_str().expect("id"), "succeeded", WAIT).await;
    }
    let got = target.received();
    let arrival = |p: &str| got.iter().find(|r| r.path == p).map(|r| r.at_ms).expect("received");
    let (d, a) = (arrival("/delay") - (created + 3_000), arrival("/at") - at);
    println!("lateness: delay {d} ms, at {a} ms");
    assert!((0..2_500).contains(&d), "delay task arrived {d} ms after due");
    assert!((0..2_500).contains(&a), "at task arrived {a} ms after due");
}

#[tokio::test]
async fn a_far_future_task_gets_a_one_time_schedule_fired_early_with_the_rest_as_an_sqs_delay() {
    let mut opts = stack_options("far");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let due = now_millis() + 2 * 86_400_000 + 123;
    let task = stack
        .api
        .create_task(
            json!({"request": {"method": "GET", "url": "https://far.invalid/far"}, "schedule": {"at": rfc3339(due)}}),
        )
        .await;
    let id = task["id"].as_str().expect("id");
    assert_eq!(task["status"], "scheduled");

    let sdk = sdk().await;
    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let group = &stack.outputs().names.schedule_group;
    let s = scheduler.get_schedule().group_name(group).name(id).send().await.expect("schedule exists");
    // Fired 60 s early on a whole second; the delay ends on the first whole second not before due.
    let fire_s = (due - 60_000).div_euclid(1000);
    let fire = OffsetDateTime::from_unix_timestamp(fire_s).expect("time");
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    assert_eq!(s.schedule_expression(), Some(format!("at({})", fire.format(&f).expect("fmt")).as_str()));
    assert_eq!(s.action_after_completion().map(|a| a.as_str()), Some("DELETE"));
    let target = s.target().expect("target");
    assert_eq!(target.arn(), courier::schedules::SQS_SEND_MESSAGE_TARGET);
    let input: serde_json::Value = serde_json::from_str(target.input().expect("input")).expect("JSON input");
    assert_eq!(input["QueueUrl"], stack.outputs().queue_url.as_str());
    assert_eq!(input["DelaySeconds"], (due + 999).div_euclid(1000) - fire_s);
    let body: serde_json::Value =
        serde_json::from_str(input["MessageBody"].as_str().expect("body")).expect("JSON body");
    assert_eq!((&body["type"], &body["task_id"]), (&json!("deliver.v1"), &json!(id)));
    assert!(body["flow"]["h"].is_string(), "the flow keys ride along: {body}");

    // The bridge fires it at its time, not a second before.
    let mut bridge = Bridge::new(scheduler.clone(), aws_sdk_sqs::Client::new(&sdk), group.clone());
    assert!(bridge.tick(fire - time::Duration::seconds(1)).await.expect("tick").is_empty());
    assert_eq!(bridge.tick(fire).await.expect("tick"), [id.to_owned()]);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&stack.outputs().queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("attributes")
        .attributes
        .unwrap_or_default();
    assert_eq!(attrs.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed).map(String::as_str), Some("1"));
    assert!(scheduler.get_schedule().group_name(group).name(id).send().await.is_err(), "deleted after firing");
}

#[tokio::test]
async fn a_scheduler_routed_task_is_sent_within_a_second_or_two_of_its_due_time() {
    // Thresholds lowered so the Scheduler path runs in seconds: beyond 2 s goes
    // to Scheduler, which fires 2 s early.
    let target = Target::start(&[]).await;
    let mut opts = stack_options("ontime");
    opts.scheduler_tick = Some(Duration::from_millis(200));
    opts.extra_env.push(("COURIER_SQS_DELAY_MAX_S".into(), "2".into()));
    opts.extra_env.push(("COURIER_SCHEDULE_EARLY_S".into(), "2".into()));
    let stack = TestStack::start(opts).await;
    let due = now_millis() + 6_000;
    let task = stack
        .api
        .create_task(
            json!({"request": {"method": "GET", "url": target.url("/ontime")}, "schedule": {"at": rfc3339(due)}}),
        )
        .await;
    let id = task["id"].as_str().expect("id");
    let scheduler = aws_sdk_scheduler::Client::new(&sdk().await);
    assert!(scheduler.get_schedule().group_name(&stack.outputs().names.schedule_group).name(id).send().await.is_ok());
    stack.api.wait_for_status(id, "succeeded", WAIT).await;
    let late = target.received()[0].at_ms - due;
    println!("scheduler-routed task lateness: {late} ms");
    // Seconds, not minutes: SQS delays have a 1 s grain, and the suite shares two
    // cores with the chaos test's sender kills (precision is `make bench`'s job).
    assert!((0..5_000).contains(&late), "arrived {late} ms after due");
}

#[tokio::test]
async fn cron_tasks_run_per_firing_once_each_and_pause() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("cron")).await;
    let api = &stack.api;
    let task = api
        .create_task(json!({
            "request": {"method": "POST", "url": target.url("/tick"), "body": "tick"},
            "schedule": {"cron": "* * * * *", "timezone": "Asia/Shanghai"},
            "business_id": "report-daily",
        }))
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(task["status"], "active");
    assert_eq!(task["kind"], "cron");
    assert!(task["next_run_at"].is_string());

    let sdk = sdk().await;
    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let group = stack.outputs().names.schedule_group.clone();
    let s = scheduler.get_schedule().group_name(&group).name(&id).send().await.expect("schedule");
    assert_eq!(s.schedule_expression(), Some("cron(* * * * ? *)"));
    assert_eq!(s.schedule_expression_timezone(), Some("Asia/Shanghai"));
    assert_eq!(s.target().map(|t| t.arn()), Some(stack.outputs().queue_arn.as_str()));

    // Fire two past occurrences through the bridge (its clock is the test's),
    // and one of them twice.
    let mut bridge = Bridge::new(scheduler.clone(), aws_sdk_sqs::Client::new(&sdk), group.clone());
    let now = OffsetDateTime::now_utc();
    let t0 = now.replace_second(0).and_then(|t| t.replace_nanosecond(0)).expect("minute");
    assert!(bridge.tick(t0 - time::Duration::minutes(3)).await.expect("first sight").is_empty());
    let first = t0 - time::Duration::minutes(2);
    assert_eq!(bridge.tick(first + time::Duration::seconds(1)).await.expect("tick"), std::slice::from_ref(&id));
    let received = eventually(WAIT, || async { (!target.received().is_empty()).then_some(()) }).await;
    assert!(received.is_some(), "first run delivered");
    let run_time = first.format(&time::format_description::well_known::Rfc3339).expect("fmt");
    // A duplicate firing of the same run is not sent again.
    let dup = json!({"type": "cron.v1", "task_id": id, "scheduled_time": run_time}).to_string();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    sqs.send_message().queue_url(&stack.outputs().queue_url).message_body(dup).send().await.expect("send");
    let second = t0;
    assert_eq!(bridge.tick(now).await.expect("tick"), std::slice::from_ref(&id));
    let two = eventually(WAIT, || async {
        let (_, t) = api.get(&format!("/v1/tasks/{id}")).await;
        let runs = t["runs"].as_array().cloned().unwrap_or_default();
        (runs.len() == 2 && runs.iter().all(|r| r["status"] == "succeeded")).then_some(t)
    })
    .await
    .expect("two runs succeed");
    // The duplicate firing went in before the second run: once the queue is
    // empty it has been handled.
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    let got = target.received();
    assert_eq!(got.len(), 2, "one request per run, the duplicate firing sent nothing");
    assert_eq!(got[0].header("courier-scheduled-time"), Some(format_millis(first.unix_timestamp() * 1000).as_str()));
    assert_eq!(got[0].header("courier-business-id"), Some("report-daily"));
    assert_eq!(two["status"], "active");
    assert_eq!(two["runs"][0]["scheduled_time"], format_millis(second.unix_timestamp() * 1000));
    let (_, attempts) = api.get(&format!("/v1/tasks/{id}/attempts")).await;
    assert_eq!(attempts["attempts"].as_array().map(Vec::len), Some(2));

    // Paused: the schedule is disabled, and a firing that still arrives sends
    // nothing, though its run (a minute never fired, already due) would be sent
    // at once were the task active.
    let (status, paused) = api.post(&format!("/v1/tasks/{id}/pause"), "").await;
    assert_eq!((status, paused["status"].as_str()), (200, Some("paused")), "{paused}");
    assert!(paused["next_run_at"].is_null());
    let s = scheduler.get_schedule().group_name(&group).name(&id).send().await.expect("schedule");
    assert_eq!(s.state().map(|s| s.as_str()), Some("DISABLED"));
    let missed = (t0 - time::Duration::minutes(1)).format(&time::format_description::well_known::Rfc3339).expect("fmt");
    let third = json!({"type": "cron.v1", "task_id": id, "scheduled_time": missed}).to_string();
    sqs.send_message().queue_url(&stack.outputs().queue_url).message_body(third).send().await.expect("send");
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    assert_eq!(target.received().len(), 2, "the paused task's firing sent nothing");
    let (_, t) = api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(t["runs"].as_array().map(Vec::len), Some(2), "no run started: {t}");
    let (status, resumed) = api.post(&format!("/v1/tasks/{id}/resume"), "").await;
    assert_eq!((status, resumed["status"].as_str()), (200, Some("active")));
    // Cancelled: the schedule is gone.
    let (status, _) = api.delete(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert!(scheduler.get_schedule().group_name(&group).name(&id).send().await.is_err());
    // Pausing a one-off task is a conflict.
    let once = api.create("GET", &target.url("/once")).await;
    assert_eq!(api.post(&format!("/v1/tasks/{once}/pause"), "").await.0, 409);
}
