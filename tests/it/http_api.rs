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
        ("not json", "invalid_json", Some("body")),
        ("", "invalid_json", Some("body")),
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
    // Stored sealed (see `fields`): the view shows nothing of it.
    assert_eq!(task["request"]["headers"]["authorization"], "***");
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
    assert_eq!((&msg["type"], &msg["task_id"]), (&serde_json::json!("deliver.v1"), &serde_json::json!(id)));
    // The flow keys ride along, so the sender gates the delivery before claiming it.
    assert_eq!(msg["flow"]["h"], "example.com:443", "{msg}");
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

/// The error document's shape: exactly `code`, `message` and `field`.
fn assert_error_shape(what: &str, ct: Option<&str>, doc: &serde_json::Value) {
    assert_eq!(ct, Some("application/json"), "{what}: content type");
    let err = doc["error"].as_object().unwrap_or_else(|| panic!("{what}: no error object in {doc}"));
    let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "field", "message"], "{what}: {doc}");
    assert!(err["code"].as_str().is_some_and(|c| !c.is_empty()), "{what}: {doc}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {doc}");
    assert!(doc.as_object().is_some_and(|o| o.len() == 1), "{what}: {doc}");
}

/// Sends raw bytes; returns status, content type and the JSON body (Null if not JSON).
async fn send_raw(
    base: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), format!("{base}{path}"))
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.expect("front reachable");
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = r.bytes().await.expect("body");
    (status, ct, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn every_error_from_every_layer_of_the_api_is_the_json_error_shape() {
    let mut opts = stack_options("shape");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let base = stack.api.base.clone();
    let key = stack.api.key.clone();
    let key = key.as_deref();
    let big = vec![b' '; 2 * 1024 * 1024];
    // (what, method, path, content type, body, status, code, field)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<u8>,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("body limit", "POST", "/v1/tasks", Some("application/json"), big.clone(), 413, "too_large", Some("body")),
        ("batch body limit", "POST", "/v1/tasks/batch", None, big, 413, "too_large", Some("body")),
        (
            "JSON syntax",
            "POST",
            "/v1/tasks",
            Some("application/json"),
            b"{\"request\":".to_vec(),
            400,
            "invalid_json",
            Some("body"),
        ),
        (
            "other content type",
            "POST",
            "/v1/tasks",
            Some("text/plain"),
            b"hello".to_vec(),
            400,
            "invalid_json",
            Some("body"),
        ),
        ("not an object", "POST", "/v1/tasks", None, b"[1]".to_vec(), 400, "invalid", Some("body")),
        ("path not UTF-8", "GET", "/v1/tasks/%FF%FE", None, vec![], 400, "invalid", Some("id")),
        ("unknown route", "GET", "/v2/anything", None, vec![], 404, "not_found", None),
        ("unknown task", "GET", "/v1/tasks/not-an-id", None, vec![], 404, "not_found", None),
        ("wrong method", "PUT", "/v1/tasks", None, vec![], 405, "method_not_allowed", None),
        ("bad query value", "GET", "/v1/tasks?limit=abc", None, vec![], 400, "invalid", Some("limit")),
        ("unknown query parameter", "GET", "/v1/tasks?colour=red", None, vec![], 400, "unknown_field", Some("colour")),
        ("query not UTF-8", "GET", "/v1/tasks?status=%FF", None, vec![], 400, "invalid", Some("status")),
        (
            "empty patch",
            "PATCH",
            "/v1/tasks/tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3",
            None,
            b"{}".to_vec(),
            404,
            "not_found",
            None,
        ),
    ];
    for (what, method, path, ct, body, status, code, field) in cases {
        let (got, got_ct, doc) = send_raw(&base, key, method, path, ct, body).await;
        assert_eq!(got, status, "{what}: {doc}");
        assert_error_shape(what, got_ct.as_deref(), &doc);
        assert_eq!(doc["error"]["code"], code, "{what}: {doc}");
        assert_eq!(doc["error"]["field"].as_str(), field, "{what}: {doc}");
    }
    // Without a key, and with the admin key on a tenant route.
    let (got, got_ct, doc) = send_raw(&base, None, "GET", "/v1/tasks", None, vec![]).await;
    assert_eq!(got, 401);
    assert_error_shape("no key", got_ct.as_deref(), &doc);
    let (got, got_ct, doc) = send_raw(&base, key, "GET", "/v1/tenants/tnt_0000000000000000", None, vec![]).await;
    assert_eq!(got, 403);
    assert_error_shape("tenant key on an admin route", got_ct.as_deref(), &doc);
}

#[tokio::test]
async fn the_gateway_front_answers_its_own_errors_in_the_json_error_shape() {
    use courier_local::runtime::{FunctionHost, FunctionSpec};
    // A function that dies at once: every invocation fails (after its 1 s timeout).
    let host = FunctionHost::start(FunctionSpec {
        name: "broken-api".into(),
        binary: "/bin/false".into(),
        env: Vec::new(),
        timeout: std::time::Duration::from_secs(1),
        instances: 1,
        log_file: None,
    })
    .await
    .expect("host starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let front = tokio::spawn(courier_local::front::serve(listener, std::sync::Arc::new(host)));

    let over = vec![b'x'; 6 * 1024 * 1024 + 1];
    let (status, ct, doc) = send_raw(&base, None, "POST", "/v1/tasks", None, over).await;
    assert_eq!(status, 413, "{doc}");
    assert_error_shape("front body limit", ct.as_deref(), &doc);
    assert_eq!((doc["error"]["code"].as_str(), doc["error"]["field"].as_str()), (Some("too_large"), Some("body")));

    let (status, ct, doc) = send_raw(&base, None, "GET", "/v1/health", None, vec![]).await;
    assert_eq!(status, 500, "{doc}");
    assert_error_shape("failed invocation", ct.as_deref(), &doc);
    assert_eq!(doc["error"]["code"], "internal");
    front.abort();
}

#[tokio::test]
async fn input_the_store_would_refuse_is_a_4xx_naming_the_field_never_a_503() {
    let mut opts = stack_options("refuse");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let (api, admin) = (&stack.api, &stack.admin);
    let task = api.create("POST", "https://hooks.invalid/x").await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let long = "a".repeat(3_000);
    // An escaped JSON body past DynamoDB's 400 KB item limit (each "" stored as \"\").
    let huge_json =
        serde_json::json!({"request": {"method": "POST", "url": "https://hooks.invalid/x", "json": vec![""; 87_000]}});
    let huge_patch = serde_json::json!({"request": {"json": vec![""; 87_000]}});
    // (what, as whom, method, path, body, status, field)
    type Case<'a> = (&'a str, &'a crate::helpers::Api, &'a str, String, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "window ends before it starts",
            api,
            "GET",
            "/v1/tasks?created_after=2026-02-01T00:00:00Z&created_before=2026-01-01T00:00:00Z".into(),
            None,
            400,
            "created_after",
        ),
        ("cursor not base64", api, "GET", "/v1/tasks?cursor=%21%21%21".into(), None, 400, "cursor"),
        ("cursor not a task id", api, "GET", format!("/v1/tasks?cursor={}", b64("TASK#x")), None, 400, "cursor"),
        ("cursor too long", api, "GET", format!("/v1/tasks?cursor={}", b64(&long)), None, 400, "cursor"),
        (
            "attempts cursor too long",
            api,
            "GET",
            format!("/v1/tasks/{task}/attempts?cursor={}", b64(&format!("ATTEMPT#{long}"))),
            None,
            400,
            "cursor",
        ),
        (
            "attempts cursor of another kind",
            api,
            "GET",
            format!("/v1/tasks/{task}/attempts?cursor={}", b64("STATE")),
            None,
            400,
            "cursor",
        ),
        ("host filter too long", api, "GET", format!("/v1/tasks?host={long}"), None, 400, "host"),
        ("item over 400 KB", api, "POST", "/v1/tasks".into(), Some(huge_json.to_string()), 413, "request.body"),
        (
            "patch to over 400 KB",
            api,
            "PATCH",
            format!("/v1/tasks/{task}"),
            Some(huge_patch.to_string()),
            413,
            "request.body",
        ),
        (
            "replay window ends before it starts",
            api,
            "POST",
            "/v1/replays".into(),
            Some(r#"{"since":"2026-02-01T00:00:00Z","until":"2026-01-01T00:00:00Z","dry_run":true}"#.into()),
            400,
            "since",
        ),
        (
            "replay host too long",
            api,
            "POST",
            "/v1/replays".into(),
            Some(format!(r#"{{"host":"{long}","dry_run":true}}"#)),
            400,
            "host",
        ),
        (
            "purge cursor",
            api,
            "POST",
            "/v1/tasks/purge".into(),
            Some(format!(r#"{{"status":"failed","before":"2030-01-01T00:00:00Z","cursor":"{}"}}"#, b64(&long))),
            400,
            "cursor",
        ),
        ("tenant id past the key limit", admin, "GET", format!("/v1/tenants/{long}"), None, 404, ""),
        (
            "key id past the key limit",
            admin,
            "DELETE",
            format!("/v1/tenants/{}/keys/{long}", stack.tenant),
            None,
            404,
            "",
        ),
        ("replay id past the key limit", api, "GET", format!("/v1/replays/{long}"), None, 404, ""),
        ("business id past the limit", api, "GET", format!("/v1/tasks/by-business-id/{long}"), None, 404, ""),
    ];
    for (what, client, method, path, body, status, field) in cases {
        let (got, _, doc) = client.call(method, &path, body.as_deref(), &[]).await;
        assert_eq!(got, status, "{what}: {doc}");
        if !field.is_empty() {
            assert_eq!(doc["error"]["field"], field, "{what}: {doc}");
        }
    }
    // The batch names the item's field and stores nothing of it; the whole batch is no 503.
    let batch = serde_json::json!({"tasks": [huge_json]});
    let (status, doc) = api.post("/v1/tasks/batch", &batch.to_string()).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["results"][0]["error"]["field"], "tasks[0].request.body", "{doc}");
    // The one task of this test is the only one stored, unchanged.
    let (_, list) = api.get("/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, read) = api.get(&format!("/v1/tasks/{task}")).await;
    assert_eq!(read["request"]["body_size"], 7, "{read}");
}

#[tokio::test]
async fn the_store_reports_input_dynamodb_refuses_as_invalid_not_unavailable() {
    use courier::ports::{StoreError, TaskStore, TenantStore};
    let outputs =
        courier_local::bootstrap::bootstrap(&crate::helpers::sdk().await, &crate::helpers::unique_stack("inval"))
            .await
            .expect("bootstrap");
    let store = courier::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&crate::helpers::sdk().await),
        &outputs.names.table,
        90,
    );
    let now = courier::domain::now_millis();
    // A request the API would refuse, written around it: DynamoDB's item limit answers.
    let mut input =
        courier::domain::parse_create_task(br#"{"request":{"method":"POST","url":"https://hooks.invalid/x"}}"#, now)
            .expect("valid");
    input.spec.auth = Some(courier::domain::Auth::Bearer { token: "t".repeat(500_000) });
    let task = courier::domain::NewTask {
        id: courier::domain::TaskId::generate(),
        tenant: courier::domain::TenantId::parse("tnt_0000000000000000").expect("id"),
        spec: input.spec,
        retry: input.retry,
        schedule: input.schedule,
        business_id: None,
        created_at: now,
        due_at: now,
        on_scheduler: false,
        slot_taken: false,
    };
    let err = store.create(&task, None).await.expect_err("DynamoDB refuses an item over 400 KB");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // A key past DynamoDB's 2048-byte partition key limit (a business id the API would refuse).
    let long = courier::ports::UniqueKey::BusinessId("a".repeat(3_000));
    let err = store.create(&task, Some(&long)).await.expect_err("DynamoDB refuses the key");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // A plain read of a missing item is no error at all.
    let missing = courier::domain::TenantId::parse("tnt_0000000000000000").expect("id");
    assert!(store.get_tenant(&missing).await.expect("read").is_none());
}

#[tokio::test]
async fn a_repeat_create_answers_200_as_the_spec_documents() {
    let mut opts = stack_options("repeat");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let body = r#"{"request":{"method":"POST","url":"https://hooks.invalid/x"},"business_id":"order-7"}"#;
    let (first, _) = stack.api.post("/v1/tasks", body).await;
    let (status, headers, again) = stack.api.call("POST", "/v1/tasks", Some(body), &[]).await;
    assert_eq!((first, status), (201, 200), "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(headers["courier-idempotent-replay"], "true");
    let (_, spec) = stack.api.get("/v1/openapi.json").await;
    let documented = &spec["paths"]["/v1/tasks"]["post"]["responses"];
    for code in ["200", "201"] {
        assert_eq!(documented[code]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Task");
    }
}
