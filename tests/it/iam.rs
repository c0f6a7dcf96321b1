//! What the functions are given, as deployed. IAM: each function's AWS calls
//! go through a proxy of its own and are logged as (function, action,
//! resource); the local bridges' calls are not the functions' and are not
//! logged. `make test` then checks the whole suite's log against
//! `template.yaml` (`courier-local iam-check`). Secrets: the API function's
//! environment holds the admin key's SHA-256, never the key.

use std::time::Duration;

use courier_local::iam::{self, LocalIdentities, Record};

use crate::helpers::{ADMIN_KEY, Target, TestStack, eventually, stack_options};

fn records(log: &crate::helpers::OwnIamLog) -> Vec<Record> {
    iam::read_log(&log.text()).expect("the log is JSON lines")
}

fn has(records: &[Record], function: &str, action: &str, resource: &str) -> bool {
    records.iter().any(|r| r.function == function && r.action == action && r.resource == resource)
}

#[tokio::test]
async fn each_functions_calls_are_recorded_with_their_iam_action_and_resource() {
    let mut opts = stack_options("iam");
    // A log of its own, so this test sees only this stack's calls.
    let log = crate::helpers::OwnIamLog::new(&mut opts);
    let stack = TestStack::start(opts).await;
    let target = Target::start(&[]).await;
    let id = stack.api.create("POST", &target.url("/hook")).await;
    stack.api.wait_for_status(&id, "succeeded", Duration::from_secs(30)).await;
    stack
        .local
        .reconciler
        .invoke(&courier_local::stack::scheduled_event("iam-test"))
        .await
        .expect("the reconciler runs");

    let out = stack.outputs();
    let table = format!("arn:aws:dynamodb:us-east-1:{}:table/{}", iam::LOCAL_ACCOUNT, out.names.table);
    // The stream bridge feeds the counter a moment after the status changes.
    let recorded = eventually(Duration::from_secs(20), || async {
        let r = records(&log);
        r.iter().any(|r| r.function == "counter" && r.resource == table).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("the counter's calls were recorded: {:?}", records(&log)));

    assert!(recorded.iter().all(|r| r.stack == out.stack), "only this stack's functions");
    assert!(has(&recorded, "api", "sqs:SendMessage", &out.queue_arn), "the API enqueued the task: {recorded:?}");
    assert!(has(&recorded, "sender", "dynamodb:UpdateItem", &table), "the sender claimed it: {recorded:?}");
    assert!(
        has(
            &recorded,
            "reconciler",
            "dynamodb:Query",
            &format!("{table}/index/{}", courier::resources::RECONCILE_INDEX)
        ),
        "the reconciler read its index: {recorded:?}"
    );
    // The event-source bridge received and deleted the message; the stream
    // bridge read the stream: AWS does that, not the functions.
    for bridge_action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "dynamodb:GetRecords"] {
        assert!(!recorded.iter().any(|r| r.action == bridge_action), "{bridge_action} is not a function's call");
    }

    let template: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).expect("template"),
    )
    .expect("YAML");
    let verdict = iam::check(&template, &recorded, &LocalIdentities::of_local_stack()).expect("the template resolves");
    assert!(verdict.passed(), "calls the template does not grant: {:#?}", verdict.denied);
    let _ = std::fs::remove_file(&log.0);
}

#[tokio::test]
async fn the_api_function_holds_the_admin_keys_hash_never_the_key() {
    let stack = TestStack::start(stack_options("adm")).await;
    // The admin API works (the test stack's admin created the tenant) …
    assert_eq!(stack.admin.get(&format!("/v1/tenants/{}", stack.tenant)).await.0, 200);
    // … with only the hash in the function's environment.
    let pids = stack.local.api.pids();
    assert!(!pids.is_empty(), "the API function runs");
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the function's environment");
        let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        assert!(vars.contains(&format!("COURIER_ADMIN_KEY_SHA256={}", courier::domain::hash_key(ADMIN_KEY))));
        assert!(!vars.iter().any(|v| v.contains(ADMIN_KEY)), "the admin key is in the API function's environment");
        assert!(!vars.iter().any(|v| v.starts_with("COURIER_ADMIN_KEY=")));
    }
}
