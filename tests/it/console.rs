//! The admin console in a real browser: this test makes the tasks (one that
//! failed, one whose request and response hold markup), then runs
//! `tests/browser/console_test.py`, which drives Debian's Chromium with
//! Playwright through sign-in, counts, filters, a task's attempts, a retry,
//! the markup task and sign-out, and fails on any JavaScript error or failed
//! request. Screenshots land in `target/console/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{ADMIN_KEY, Reply, Target, TestStack, eventually, stack_options};

const WAIT: Duration = Duration::from_secs(60);

/// What the markup task sends and gets back: none of it may run or render as HTML.
const MARKUP_BODY: &str = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>";
const MARKUP_RESPONSE: &str = "<img src=x onerror=window.__xss=3><script>window.__xss=4</script>";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let failing = Target::start(&[500]).await;
    let markup = Target::start_with(vec![Reply::status(200).body(MARKUP_RESPONSE)]).await;
    let stack = TestStack::start(stack_options("console")).await;
    let api = &stack.api;

    let failed = api
        .create_task(json!({
            "business_id": "console-failed",
            "request": {"method": "POST", "url": failing.url("/fail"), "body": "{\"n\":1}"},
            "retry": {"max_attempts": 1},
        }))
        .await;
    let failed = failed["id"].as_str().expect("id").to_owned();
    api.wait_for_status(&failed, "failed", WAIT).await;
    let xss = api
        .create_task(json!({
            "request": {"method": "PUT", "url": markup.url("/x?q=<script>"), "body": MARKUP_BODY,
                        "headers": {"x-note": "<b>header</b>"}},
        }))
        .await;
    let xss = xss["id"].as_str().expect("id").to_owned();
    let later = api
        .create_task(
            json!({"request": {"method": "POST", "url": "https://later.invalid/hook"}, "schedule": {"delay": "1h"}}),
        )
        .await;
    let later = later["id"].as_str().expect("id").to_owned();
    api.wait_for_status(&xss, "succeeded", WAIT).await;
    // The counts and the minute figures come from the stream: wait for them.
    let settled = eventually(WAIT, || async {
        let (_, s) = api.get("/v1/stats").await;
        let sum = |col: &str| s["per_minute"].as_array().map_or(0, |m| m.iter().filter_map(|x| x[col].as_i64()).sum());
        (s["counts"]["failed"] == 1
            && s["counts"]["succeeded"] == 1
            && s["counts"]["scheduled"] == 1
            && sum("delivered") == 1
            && sum("failed") == 1)
            .then_some(())
    })
    .await;
    assert!(settled.is_some(), "the stream counter caught up: {}", api.get("/v1/stats").await.1);

    let shots = workspace().join("target/console");
    let python = workspace().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make tools` (make test does)", python.display());
    let out = tokio::process::Command::new(&python)
        .arg(workspace().join("tests/browser/console_test.py"))
        .env("COURIER_URL", &stack.local.api_url)
        .env("COURIER_ADMIN_KEY", ADMIN_KEY)
        .env("COURIER_TENANT", &stack.tenant)
        .env("COURIER_TENANT_KEY", api.key.as_deref().unwrap_or_default())
        .env("COURIER_FAILED_TASK", &failed)
        .env("COURIER_FAILED_BID", "console-failed")
        .env("COURIER_XSS_TASK", &xss)
        .env("COURIER_LATER_TASK", &later)
        .env("COURIER_TARGET_HOST", failing.addr.to_string())
        .env("COURIER_SHOTS", &shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the browser test runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    for shot in ["overview", "list", "detail", "xss", "phone-detail"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "screenshot {shot}.png");
    }
    // The retry the browser confirmed reached the target and the audit log.
    assert_eq!(failing.received().len(), 2, "the first attempt and the retry");
    let (_, audit) = stack.admin.get("/v1/audit?action=task.retry").await;
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["resource"].as_str().is_some_and(|r| r.contains(&failed))
            && e["actor"] == "admin"
            && e["tenant"] == stack.tenant.as_str()),
        "the console's retry is audited as the admin's, on the tenant: {audit}"
    );
    let (_, cancelled) = api.get(&format!("/v1/tasks/{later}")).await;
    assert_eq!(cancelled["status"], "cancelled");
    // The markup never reached the page as HTML (checked in the browser); the
    // target got the body as sent.
    assert_eq!(markup.received()[0].body, MARKUP_BODY.as_bytes());
}
