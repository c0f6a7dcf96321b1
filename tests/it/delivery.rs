//! Tasks created through the API and delivered by the real sender binary,
//! fed by the SQS event-source bridge.

use std::time::Duration;

use aws_sdk_sqs::types::Message;

use crate::helpers::{Target, TestStack, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_created_task_is_delivered_once_and_shows_succeeded() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("deliver")).await;
    let api = &stack.api;
    let body = serde_json::json!({"request": {
        "method": "POST",
        "url": target.url("/hook?a=1"),
        "headers": {"content-type": "application/json", "x-custom": "yes"},
        "body": "{\"n\":1}",
    }});
    let (status, created) = api.post("/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");

    let task = api.wait_for_status(id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 1);
    assert!(task["next_run_at"].is_null());
    let last = &task["last_attempt"];
    assert_eq!(last["number"], 1);
    assert_eq!(last["status_code"], 200);
    assert_eq!(last["outcome"], "success");
    assert_eq!(last["response_body"], "answer 200");
    assert!(last["duration_ms"].as_u64().is_some());

    let got = target.received();
    assert_eq!(got.len(), 1, "exactly one request");
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook?a=1"));
    assert_eq!(&r.body[..], b"{\"n\":1}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("courier-task-id"), Some(id));
    assert_eq!(r.header("courier-attempt"), Some("1"));
    assert!(r.header("user-agent").is_some_and(|ua| ua.starts_with("Courier/")));
}

#[tokio::test]
async fn a_failing_target_gets_the_message_redelivered_until_it_succeeds() {
    let target = Target::start(&[500, 503]).await;
    let stack = TestStack::start(stack_options("retry")).await;
    let api = &stack.api;
    let id = api.create("POST", &target.url("/flaky")).await;

    let task = api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 3);
    assert_eq!(task["last_attempt"]["status_code"], 200);
    let attempts: Vec<String> =
        target.received().iter().map(|r| r.header("courier-attempt").unwrap_or_default().to_owned()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

#[tokio::test]
async fn a_client_error_fails_the_task_and_parks_it_on_the_dlq() {
    let target = Target::start(&[404]).await;
    let stack = TestStack::start(stack_options("stop")).await;
    let api = &stack.api;
    let id = api.create("DELETE", &target.url("/gone")).await;

    let task = api.wait_for_status(&id, "failed", WAIT).await;
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["failure_reason"], "stopped after attempt 1: client_error (HTTP 404)");
    assert_eq!(task["last_attempt"]["outcome"], "client_error");
    assert_eq!(target.received().len(), 1, "no retry after a 404");

    let dlq = receive_all(&stack.outputs().dlq_url, 1).await;
    let doc: serde_json::Value = serde_json::from_str(dlq[0].body().unwrap_or_default()).expect("JSON");
    assert_eq!(doc["task_id"], id.as_str());
    assert_eq!(doc["reason"], "stopped after attempt 1: client_error (HTTP 404)");
}

#[tokio::test]
async fn a_duplicate_sqs_delivery_sends_the_request_once() {
    let target = Target::start(&[]).await;
    let mut opts = stack_options("dupe");
    opts.pollers = 0; // this test plays the event source itself
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let id = api.create("POST", &target.url("/once")).await;

    // SQS delivers at least once: put a second copy of the message on the queue.
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let copy = serde_json::json!({"type": "deliver.v1", "task_id": id}).to_string();
    sqs.send_message().queue_url(&stack.outputs().queue_url).message_body(copy).send().await.expect("send copy");
    let both = receive_all(&stack.outputs().queue_url, 2).await;

    // Both copies in one batch, handled concurrently by the sender.
    let event = courier_local::event_source::sqs_event(&both, &stack.outputs().queue_arn);
    let resp = stack.local.sender.invoke(&event).await.expect("sender answers");
    assert_eq!(resp["batchItemFailures"], serde_json::json!([]), "{resp}");
    assert_eq!(target.received().len(), 1, "one request for two deliveries");

    // A late redelivery after success is acknowledged without sending.
    let resp = stack.local.sender.invoke(&event).await.expect("sender answers");
    assert_eq!(resp["batchItemFailures"], serde_json::json!([]));
    assert_eq!(target.received().len(), 1);
    let task = api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(task["attempts"], 1);
}

/// Receives until `n` messages have arrived.
pub async fn receive_all(queue_url: &str, n: usize) -> Vec<Message> {
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let mut got = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .send()
            .await
            .expect("receive");
        got.extend(out.messages.unwrap_or_default());
        if got.len() >= n {
            return got;
        }
    }
    panic!("only {} of {n} messages arrived on {queue_url}", got.len());
}
