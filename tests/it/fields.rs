//! A task's secret values (sensitive headers, `auth` credentials) are stored
//! sealed under the stack's KMS key and opened only by the sender: the table
//! never holds them in clear, the target gets them as given, views stay
//! masked, and KMS is called once per data key, not once per delivery.

use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::helpers::{OwnIamLog, Target, TestStack, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn secret_values_are_sealed_in_the_table_and_opened_only_to_send() {
    let target = Target::start(&[]).await;
    let mut opts = stack_options("fields");
    let log = OwnIamLog::new(&mut opts);
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let token = "sk_live_6f1e0c2d9a7b4c3e";
    let n = 20;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = api
            .create_task(json!({"request": {"method": "POST", "url": target.url(&format!("/s/{i}")),
                                            "headers": {"authorization": format!("Bearer {token}"), "x-trace": "plain"}}}))
            .await;
        ids.push(t["id"].as_str().expect("id").to_owned());
    }
    let basic = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/basic"),
                                        "auth": {"type": "basic", "username": "shop", "password": "pw-5e3a9c"}}}))
        .await;
    ids.push(basic["id"].as_str().expect("id").to_owned());
    // A waiting task given a new secret header by PATCH: sealed too.
    let later = api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/later")}, "schedule": {"delay": "1h"}}))
        .await;
    let later = later["id"].as_str().expect("id").to_owned();
    let (status, patched) = api
        .patch(&format!("/v1/tasks/{later}"), &json!({"request": {"headers": {"x-api-key": "key-8d2f7a"}}}).to_string())
        .await;
    assert_eq!(status, 200, "{patched}");
    for id in &ids {
        api.wait_for_status(id, "succeeded", WAIT).await;
    }

    // The target got every value as given.
    let got = target.received();
    assert_eq!(got.iter().filter(|r| r.header("authorization") == Some(&format!("Bearer {token}"))).count(), n);
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("shop:pw-5e3a9c"));
    assert!(got.iter().any(|r| r.path == "/basic" && r.header("authorization") == Some(expected.as_str())));
    // No item of the table holds one in clear; the sealed form is there.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let mut dump = String::new();
    let mut start = None;
    loop {
        let page = ddb
            .scan()
            .table_name(&stack.outputs().names.table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        dump.push_str(&format!("{:?}", page.items()));
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    for secret in [token, "pw-5e3a9c", "key-8d2f7a", "c2hvcDpwdy01ZTNhOWM"] {
        assert!(!dump.contains(secret), "{secret} is stored in clear");
    }
    assert!(dump.contains("enc:v1:"), "the sealed values are stored");
    // The views stay masked.
    for id in [&ids[0], &later] {
        let (_, view) = api.get(&format!("/v1/tasks/{id}")).await;
        let text = view.to_string();
        assert!(!text.contains(token) && !text.contains("key-8d2f7a") && !text.contains("enc:v1"), "{text}");
    }

    // KMS: one Encrypt per API instance for the tenant's data key, one
    // Decrypt per sender instance per data key (two of each here): not one
    // per delivery.
    let (encrypts, decrypts) = (log.count(Some("api"), "kms:Encrypt"), log.count(Some("sender"), "kms:Decrypt"));
    let key_reads = log.count(Some("sender"), "dynamodb:GetItem");
    println!(
        "fields: {} deliveries with sealed values: {encrypts} kms:Encrypt (API), {decrypts} kms:Decrypt and {key_reads} GetItem (sender)",
        n + 1
    );
    assert!((1..=2).contains(&encrypts), "{encrypts} data keys for one tenant and two API instances");
    assert!((1..=4).contains(&decrypts), "{decrypts} kms:Decrypt for {} deliveries", n + 1);
    log.share();
}
