//! Each function binary, driven through the Lambda Runtime API with real
//! event JSON (fixtures in `tests/fixtures/`).

use std::time::Duration;

use courier_local::runtime::{FunctionHost, FunctionSpec, InvokeError};

use crate::delivery::receive_all;
use crate::helpers::{bin_dir, sdk, unique_stack};

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

async fn host(binary: &str, outputs: &courier_local::bootstrap::Outputs) -> FunctionHost {
    FunctionHost::start(FunctionSpec {
        name: binary.to_owned(),
        binary: bin_dir().join(binary),
        env: outputs.function_env(),
        timeout: Duration::from_secs(30),
        instances: 1,
        log_file: Some(bin_dir().join("it-logs").join(format!("{}-{binary}.log", outputs.stack))),
    })
    .await
    .expect("function starts")
}

#[tokio::test]
async fn the_api_binary_answers_an_http_api_v2_event() {
    std::fs::create_dir_all(bin_dir().join("it-logs")).expect("logs");
    let outputs = courier_local::bootstrap::bootstrap(&sdk().await, &unique_stack("rt-api")).await.expect("bootstrap");
    let api = host("api", &outputs).await;
    let resp = api.invoke(&fixture("apigw-v2-health.json")).await.expect("invocation");
    assert_eq!(resp["statusCode"], 200, "{resp}");
    let body: serde_json::Value = serde_json::from_str(resp["body"].as_str().expect("body")).expect("JSON body");
    assert_eq!(body["status"], "ok");
    assert!(api.init_duration().is_some(), "the binary polled /next");

    let resp = api.invoke(&fixture("apigw-v2-create-unauthenticated.json")).await.expect("invocation");
    assert_eq!(resp["statusCode"], 401, "{resp}");
    let body: serde_json::Value = serde_json::from_str(resp["body"].as_str().expect("body")).expect("JSON body");
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn the_sender_binary_parks_a_message_for_an_unknown_task_on_the_dlq() {
    std::fs::create_dir_all(bin_dir().join("it-logs")).expect("logs");
    let outputs = courier_local::bootstrap::bootstrap(&sdk().await, &unique_stack("rt-snd")).await.expect("bootstrap");
    let sender = host("sender", &outputs).await;
    let resp = sender.invoke(&fixture("sqs-event.json")).await.expect("invocation");
    // Neither record loops: the unknown task and the unreadable body both go to the DLQ.
    assert_eq!(resp, serde_json::json!({"batchItemFailures": []}));
    let parked = receive_all(&outputs.dlq_url, 2).await;
    let mut reasons: Vec<String> = parked
        .iter()
        .map(|m| {
            let doc: serde_json::Value = serde_json::from_str(m.body().unwrap_or_default()).expect("JSON");
            doc["reason"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["no task tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3", "unreadable message body"]);
}

#[tokio::test]
async fn a_function_process_that_dies_mid_invocation_fails_it_at_once_and_is_replaced() {
    std::fs::create_dir_all(bin_dir().join("it-logs")).expect("logs");
    let timeout = Duration::from_secs(30);
    let host = FunctionHost::start(FunctionSpec {
        name: "crashing".to_owned(),
        binary: bin_dir().join("courier-test-function"),
        env: Vec::new(),
        timeout,
        instances: 1,
        log_file: Some(bin_dir().join("it-logs").join(format!("{}-crashing.log", unique_stack("rt-exit")))),
    })
    .await
    .expect("function starts");
    let first = host.invoke(&serde_json::json!({"n": 1})).await.expect("first invocation");
    let first_pid = first["pid"].as_u64().expect("pid");

    let started = std::time::Instant::now();
    let died = host.invoke(&serde_json::json!({"exit": 3})).await;
    let took = started.elapsed();
    let Err(InvokeError::Function(doc)) = died else { panic!("the invocation fails: {died:?}") };
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("error document");
    assert_eq!(doc["errorType"], "Runtime.ExitError", "{doc}");
    assert!(took < Duration::from_secs(5), "failed after {took:?}, not at once (timeout {timeout:?})");

    let next = host.invoke(&serde_json::json!({"n": 2})).await.expect("a new process answers");
    assert_eq!(next["event"]["n"], 2);
    let next_pid = next["pid"].as_u64().expect("pid");
    assert_ne!(next_pid, first_pid, "another process");
    assert_eq!(host.pids(), [next_pid as u32]);
}
