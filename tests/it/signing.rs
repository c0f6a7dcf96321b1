//! Signed requests (Standard Webhooks) and W3C trace context, end to end:
//! secrets made, listed, rotated and revoked through the API; what the
//! target receives verified by the `standardwebhooks` package from PyPI (not
//! Courier's code); secrets sealed by KMS in the table; the trace of the
//! create request carried on every attempt.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::helpers::{Received, Target, TestStack, eventually, sdk, stack_options};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Whether the independent verifier accepts `received` under `secret`
/// (with its body as received, or `tampered` in its place).
fn verifies(secret: &str, received: &Received, tampered: Option<&[u8]>) -> bool {
    use std::io::Write;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let headers: serde_json::Map<String, Value> =
        received.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let doc = json!({
        "secret": secret,
        "headers": headers,
        "body_base64": B64.encode(tampered.unwrap_or(&received.body[..])),
    });
    let mut child = std::process::Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/tests/verify/standard_webhooks.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python runs (infra/tools.sh installs it)");
    child.stdin.take().expect("stdin").write_all(doc.to_string().as_bytes()).expect("write");
    let out = child.wait_with_output().expect("verifier ran");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => true,
        Some(1) if said.starts_with("rejected") => false,
        _ => panic!("the verifier failed to run: {said} {out:?}"),
    }
}

/// The requests the target received for one task, in order.
async fn received_for(target: &Target, task: &str, n: usize) -> Vec<Received> {
    eventually(Duration::from_secs(30), || async {
        let got: Vec<Received> =
            target.received().into_iter().filter(|r| r.header("courier-task-id") == Some(task)).collect();
        (got.len() >= n).then_some(got)
    })
    .await
    .unwrap_or_else(|| panic!("task {task} was not sent {n} times"))
}

async fn create(stack: &TestStack, body: Value, headers: &[(&str, &str)]) -> Value {
    let (status, _, task) = stack.api.call("POST", "/v1/tasks", Some(&body.to_string()), headers).await;
    assert_eq!(status, 201, "create answered {task}");
    task
}

#[tokio::test]
async fn signed_requests_verify_independently_through_a_rotation_and_a_tampered_body_does_not() {
    let mut opts = stack_options("sign");
    // Senders read the secrets on every delivery, so a rotation shows at once.
    opts.extra_env.push(("COURIER_SIGNING_CACHE_MS".into(), "1".into()));
    let log = opts.log_file.clone().expect("a log file");
    let stack = TestStack::start(opts).await;
    let target = Target::start(&[500, 200, 200, 200, 200, 200]).await;

    let (status, first) = stack.api.post("/v1/secrets", "").await;
    assert_eq!(status, 201, "{first}");
    let first_secret = first["secret"].as_str().expect("shown once").to_owned();
    assert!(first_secret.starts_with("whsec_"));
    assert_eq!(B64.decode(&first_secret["whsec_".len()..]).expect("base64").len(), 32);
    let (status, listed) = stack.api.get("/v1/secrets").await;
    assert_eq!(status, 200);
    assert_eq!(listed["secrets"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["secrets"][0]["id"], first["id"]);
    assert_eq!(listed["secrets"][0]["state"], "active");
    assert!(!listed.to_string().contains(&first_secret["whsec_".len()..]), "a listing never shows a secret");

    // One secret: a retried task keeps its webhook-id; each attempt is signed anew.
    let body = json!({"request": {"method": "POST", "url": target.url("/hook"), "json": {"order": 1, "note": "café"}},
        "retry": {"intervals": ["1s"]}});
    let task = create(&stack, body, &[("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")]).await;
    let id = task["id"].as_str().expect("id");
    assert_eq!(task["trace_id"], TRACE);
    assert_eq!(task["signing"], true);
    let got = received_for(&target, id, 2).await;
    let parents: Vec<&str> = got.iter().map(|r| r.header("traceparent").expect("traceparent")).collect();
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some(id), "the same id on every attempt");
        assert!(r.header("webhook-timestamp").is_some_and(|t| t.parse::<i64>().is_ok()));
        assert_eq!(r.header("webhook-signature").map(|s| s.split(' ').count()), Some(1));
        assert!(verifies(&first_secret, r, None), "attempt {:?} verifies", r.header("courier-attempt"));
        let mut tampered = r.body.to_vec();
        tampered.extend_from_slice(b" ");
        assert!(!verifies(&first_secret, r, Some(&tampered)), "a changed body does not verify");
        assert_eq!(r.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
    assert!(parents.iter().all(|p| p.starts_with(&format!("00-{TRACE}-")) && p.ends_with("-01")), "{parents:?}");
    assert_ne!(parents[0], parents[1], "a new parent id per attempt");
    assert_ne!(parents[0], TRACEPARENT);
    let stored = stack.api.wait_for_status(id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(stored["trace_id"], TRACE);
    // Every log line of the task, the API's and the sender's, carries its trace id.
    let text = std::fs::read_to_string(&log).expect("the stack's log");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&format!("\"task_id\":\"{id}\""))).collect();
    assert!(lines.iter().any(|l| l.contains("\"task created\"")), "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| l.contains("\"message\":\"attempt\"")).count(), 2, "{lines:#?}");
    let untraced: Vec<&&str> = lines.iter().filter(|l| !l.contains(TRACE)).collect();
    assert!(untraced.is_empty(), "lines without the trace id: {untraced:#?}");

    // A rotation: both secrets sign, either verifies, a stranger's does not.
    let (status, second) = stack.api.post("/v1/secrets/rotate", "{}").await;
    assert_eq!(status, 201, "{second}");
    let second_secret = second["secret"].as_str().expect("shown once").to_owned();
    assert_eq!(second["previous"][0]["id"], first["id"]);
    assert_eq!(second["previous"][0]["state"], "expiring");
    let rotated =
        create(&stack, json!({"request": {"method": "POST", "url": target.url("/hook"), "body": "rotated"}}), &[])
            .await;
    let rid = rotated["id"].as_str().expect("id");
    let r = received_for(&target, rid, 1).await.remove(0);
    assert_eq!(r.header("webhook-signature").map(|s| s.split(' ').count()), Some(2), "one entry per secret");
    assert!(verifies(&first_secret, &r, None), "the old secret still verifies");
    assert!(verifies(&second_secret, &r, None), "the new secret verifies");
    let stranger = format!("whsec_{}", B64.encode([7u8; 32]));
    assert!(!verifies(&stranger, &r, None));
    assert_eq!(rotated["trace_id"].as_str().map(str::len), Some(32), "no traceparent: a new trace");
    assert_ne!(rotated["trace_id"], TRACE);

    // Opting out: no signature headers, the body as given.
    let unsigned = create(
        &stack,
        json!({"request": {"method": "POST", "url": target.url("/hook"), "body": "plain"}, "signing": false}),
        &[],
    )
    .await;
    assert_eq!(unsigned["signing"], false);
    let r = received_for(&target, unsigned["id"].as_str().expect("id"), 1).await.remove(0);
    assert!(r.header("webhook-signature").is_none() && r.header("webhook-id").is_none());
    assert_eq!(&r.body[..], b"plain");

    // Revoking the old secret: only the new one signs.
    let old_id = first["id"].as_str().expect("id");
    assert_eq!(stack.api.delete(&format!("/v1/secrets/{old_id}")).await.0, 204);
    assert_eq!(stack.api.delete(&format!("/v1/secrets/{old_id}")).await.0, 404);
    let (_, listed) = stack.api.get("/v1/secrets").await;
    assert_eq!(listed["secrets"].as_array().map(Vec::len), Some(1));
    let after =
        create(&stack, json!({"request": {"method": "POST", "url": target.url("/hook"), "body": "after"}}), &[]).await;
    let r = received_for(&target, after["id"].as_str().expect("id"), 1).await.remove(0);
    assert_eq!(r.header("webhook-signature").map(|s| s.split(' ').count()), Some(1));
    assert!(verifies(&second_secret, &r, None));
    assert!(!verifies(&first_secret, &r, None), "a revoked secret no longer signs");

    // In the table the secrets are sealed: neither their text nor their bytes appear.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let items = ddb
        .query()
        .table_name(&stack.outputs().names.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :s)")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("TENANT#{}", stack.tenant)),
        )
        .expression_attribute_values(":s", aws_sdk_dynamodb::types::AttributeValue::S("SECRET#".into()))
        .send()
        .await
        .expect("query")
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 1);
    let raw = B64.decode(&second_secret["whsec_".len()..]).expect("base64");
    let sealed = items[0]["sealed"].as_b().expect("sealed is binary").as_ref().to_vec();
    assert!(sealed.windows(raw.len()).all(|w| w != raw.as_slice()), "the key bytes are not stored in clear");
    assert!(!format!("{:?}", items[0]).contains(&second_secret["whsec_".len()..]));

    // The audit log names each change and its secret, and holds no secret text.
    let (status, audit) = stack.api.get("/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{audit}");
    let entries: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["action"].as_str().unwrap_or_default(), e["resource"].as_str().unwrap_or_default()))
        .collect();
    let second_id = second["id"].as_str().expect("id");
    for want in [
        ("secret.create", format!("secrets/{old_id}")),
        ("secret.rotate", format!("secrets/{second_id}")),
        ("secret.revoke", format!("secrets/{old_id}")),
    ] {
        assert!(entries.iter().any(|(a, r)| *a == want.0 && *r == want.1), "{want:?} in {entries:?}");
    }
    assert!(!audit.to_string().contains("whsec_"), "{audit}");
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace_and_secrets_refuse_bad_input() {
    let mut opts = stack_options("trace");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let body = json!({"request": {"method": "POST", "url": "https://hooks.invalid/x"}, "schedule": {"delay": "1h"}});
    let task = create(&stack, body.clone(), &[("traceparent", "00-not-a-trace-01"), ("tracestate", "a=b")]).await;
    let trace = task["trace_id"].as_str().expect("a trace id");
    assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()));
    // A batch shares the request's trace.
    let batch = json!({"tasks": [body.clone(), body]}).to_string();
    let (status, _, out) =
        stack.api.call("POST", "/v1/tasks/batch", Some(&batch), &[("traceparent", TRACEPARENT)]).await;
    assert_eq!(status, 200, "{out}");
    for r in out["results"].as_array().expect("results") {
        assert_eq!(r["task"]["trace_id"], TRACE);
    }
    let (status, e) = stack
        .api
        .post("/v1/tasks", r#"{"request":{"method":"GET","url":"https://hooks.invalid/"},"signing":"no"}"#)
        .await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("signing")));
    let (status, e) = stack.api.post("/v1/secrets", r#"{"bytes": 8}"#).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("invalid")));
    assert_eq!(stack.api.delete("/v1/secrets/whs_0000000000000000").await.0, 404);
    assert_eq!(stack.api.delete("/v1/secrets/nope").await.0, 404);
    assert_eq!(stack.api.with_key(None).get("/v1/secrets").await.0, 401);
    for _ in 0..5 {
        assert_eq!(stack.api.post("/v1/secrets", "").await.0, 201);
    }
    let (status, e) = stack.api.post("/v1/secrets", "").await;
    assert_eq!((status, e["error"]["code"].as_str()), (409, Some("conflict")));
}

/// What the sender's and the API's AWS calls were over `n` deliveries of a
/// tenant with (or without) one signing secret: (sender `kms:Decrypt`, API
/// `kms:Encrypt`, sender `Query`, sender writes). From the recorded calls.
async fn delivery_costs(area: &str, with_secret: bool, n: usize) -> (usize, usize, usize, usize) {
    let mut opts = stack_options(area);
    let log = crate::helpers::OwnIamLog::new(&mut opts);
    let stack = TestStack::start(opts).await;
    let target = Target::start(&[]).await;
    if with_secret {
        assert_eq!(stack.api.post("/v1/secrets", "").await.0, 201);
    }
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"request": {"method": "POST", "url": target.url(&format!("/c/{i}")), "body": "x"}});
        ids.push(create(&stack, body, &[]).await["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        stack.api.wait_for_status(id, "succeeded", Duration::from_secs(60)).await;
    }
    let signed = target.received().iter().filter(|r| r.header("webhook-signature").is_some()).count();
    assert_eq!(signed, if with_secret { n } else { 0 }, "signed exactly when the tenant has a secret");
    // Each first-try success, signed or not, rides on its task's finishing
    // write: no task has an attempt item of its own.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    for id in &ids {
        let items = ddb
            .query()
            .table_name(&stack.outputs().names.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :a)")
            .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("TASK#{id}")))
            .expression_attribute_values(":a", aws_sdk_dynamodb::types::AttributeValue::S("ATTEMPT#".into()))
            .send()
            .await
            .expect("query")
            .count;
        assert_eq!(items, 0, "task {id} has its attempt inline");
    }
    let records = courier_local::iam::read_log(&log.text()).expect("log");
    let count = |function: &str, action: &str| {
        records
            .iter()
            .filter(|r| r.function == function && r.action == action && r.stack == stack.outputs().stack)
            .count()
    };
    assert_eq!(count("sender", "kms:Encrypt"), 0, "the sender never encrypts");
    assert_eq!(count("api", "kms:Decrypt"), 0, "the API never decrypts");
    let costs = (
        count("sender", "kms:Decrypt"),
        count("api", "kms:Encrypt"),
        count("sender", "dynamodb:Query"),
        count("sender", "dynamodb:UpdateItem") + count("sender", "dynamodb:PutItem"),
    );
    eprintln!(
        "{n} deliveries, secret: {with_secret}: sender kms:Decrypt {}, api kms:Encrypt {}, sender Query {}, \
         sender writes {} ({:.2} per delivery)",
        costs.0,
        costs.1,
        costs.2,
        costs.3,
        costs.3 as f64 / n as f64
    );
    costs
}

/// What signing costs the sender: with the default 60-second cache, one read
/// of the tenant's secrets and one KMS `Decrypt` per secret per sender
/// instance (the local stack runs two) for a whole run of deliveries, not one
/// per delivery; and no write at all.
#[tokio::test]
async fn signing_costs_one_secret_read_and_decrypt_per_sender_per_cache_period() {
    let (decrypts, encrypts, queries, writes) = delivery_costs("signcost", true, 20).await;
    assert_eq!(encrypts, 1, "one Encrypt when the secret was made");
    assert!((1..=2).contains(&decrypts), "one Decrypt per sender instance, not per delivery: {decrypts}");
    let (none_decrypts, _, none_queries, none_writes) = delivery_costs("nosigncost", false, 20).await;
    assert_eq!(none_decrypts, 0, "a tenant without a secret costs no KMS call");
    assert!(queries <= none_queries + 2, "at most one secret read per sender instance: {queries} vs {none_queries}");
    // Signing has no write of its own (each attempt rode inline, checked
    // above); a delivery's writes vary from run to run on a loaded machine (a
    // claim tried again, a message deferred), with or without it.
    assert!(writes.abs_diff(none_writes) <= 20 / 2, "writes with {writes}, without {none_writes}");
}
