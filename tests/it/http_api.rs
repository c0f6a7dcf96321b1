//! The HTTP API through the local API Gateway front and the real `api`
//! binary: creation, lookup, and a 4xx naming the field for bad input.

use crate::helpers::{TestStack, stack_options};

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_field_and_rule() {
    let mut opts = stack_options("badin");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("not json", "invalid_json", None),
        ("", "invalid_json", None),
        ("{}", "required", Some("request")),
        (r#"{"request":{"url":"https://example.com"}}"#, "required", Some("request.method")),
        (r#"{"request":{"method":"POST"}}"#, "required", Some("request.url")),
        (r#"{"request":{"method":"BREW","url":"https://example.com"}}"#, "invalid", Some("request.method")),
        (r#"{"request":{"method":"GET","url":"mailto:a@b.c"}}"#, "invalid", Some("request.url")),
        (r#"{"request":{"method":"GET","url":"https://"}}"#, "invalid", Some("request.url")),
        (r#"{"request":{"method":"GET","url":"https://e.com","timeout":5}}"#, "unknown_field", Some("request.timeout")),
        (
            r#"{"request":{"method":"GET","url":"https://e.com","headers":{"Connection":"close"}}}"#,
            "invalid",
            Some("request.headers.Connection"),
        ),
    ];
    for (body, code, field) in cases {
        let (status, resp) = api.post("/v1/tasks", body).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["error"]["code"], *code, "{body} → {resp}");
        assert_eq!(resp["error"]["field"].as_str(), *field, "{body} → {resp}");
        assert!(resp["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A body over the limit is refused whole, never half-stored.
    let big =
        serde_json::json!({"request": {"method": "POST", "url": "https://e.com", "body": "x".repeat(300 * 1024)}});
    let (status, resp) = api.post("/v1/tasks", &big.to_string()).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (413, Some("too_large")), "{resp}");
    // Nothing was stored for any of them: the table holds no item.
    let ddb = aws_sdk_dynamodb::Client::new(&crate::helpers::sdk().await);
    let scan = ddb
        .scan()
        .table_name(&stack.outputs().names.table)
        .filter_expression("begins_with(pk, :t) OR begins_with(pk, :u)")
        .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::S("TASK#".into()))
        .expression_attribute_values(":u", aws_sdk_dynamodb::types::AttributeValue::S("UNIQUE#".into()))
        .send()
        .await
        .expect("scan");
    assert_eq!(scan.count(), 0, "no task or unique key was stored");
}

#[tokio::test]
async fn unknown_tasks_and_routes_are_404_and_wrong_methods_405() {
    let mut opts = stack_options("404");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let (status, resp) = api.get("/v1/tasks/tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").await;
    assert_eq!((status, resp["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = api.get("/v1/tasks/not-an-id").await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/v2/anything").await;
    assert_eq!(status, 404);
    let (status, resp) = api.post("/v1/health", "{}").await;
    assert_eq!((status, resp["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    let (status, resp) = api.get("/v1/health").await;
    assert_eq!((status, resp["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn a_created_task_is_stored_enqueued_and_readable_with_secrets_masked() {
    let mut opts = stack_options("create");
    opts.pollers = 0; // keep the message on the queue to look at it
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let body = serde_json::json!({"request": {
        "method": "PUT",
        "url": "https://example.com/hook?x=1",
        "headers": {"Authorization": "Bearer super-secret-token-123", "X-Trace": "t1"},
        "body": "hello",
    }});
    let (status, task) = api.post("/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id");
    assert!(id.starts_with("tsk_"));
    assert_eq!(task["status"], "pending");
    assert_eq!(task["attempts"], 0);
    assert_eq!(task["request"]["method"], "PUT");
    assert_eq!(task["request"]["headers"]["authorization"], "Be***");
    assert_eq!(task["request"]["headers"]["x-trace"], "t1");
    assert_eq!(task["request"]["body_size"], 5);

    let (status, read) = api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["id"], id);
    assert!(read["last_attempt"].is_null());

    let sqs = aws_sdk_sqs::Client::new(&crate::helpers::sdk().await);
    let msgs = sqs
        .receive_message()
        .queue_url(&stack.outputs().queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(msgs.len(), 1);
    let msg: serde_json::Value = serde_json::from_str(msgs[0].body().unwrap_or_default()).expect("JSON body");
    assert_eq!(msg, serde_json::json!({"type": "deliver.v1", "task_id": id}));
}

#[tokio::test]
async fn a_body_at_the_size_limit_is_stored_whole() {
    let mut opts = stack_options("bigbody");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    use base64::Engine;
    let bytes: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let body = serde_json::json!({"request": {"method": "PUT", "url": "https://example.com/blob", "body_base64": b64}});
    let (status, task) = stack.api.post("/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["request"]["body_size"], 256 * 1024);
    let (_, read) = stack.api.get(&format!("/v1/tasks/{}", task["id"].as_str().expect("id"))).await;
    assert_eq!(read["request"]["body_size"], 256 * 1024);
}
