//! `GET /v1/metrics` on the local stack, parsed by the Prometheus project's
//! own Python parser (`prometheus_client`, pinned in infra/requirements.txt):
//! per-tenant counts, quota use, queue and DLQ depths, flow policies and holds.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestStack, bin_dir, eventually, stack_options};

/// Parses exposition text with `prometheus_client.parser`; returns
/// `{family: {"type", "help", "samples": [[name, labels, value]]}}`.
fn parse(text: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs ({e}): run infra/tools.sh", python.display()));
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

async fn scrape(base: &str, key: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("{base}/v1/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("API reachable");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, ct, resp.text().await.expect("body"))
}

fn value(doc: &Value, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    doc[family]["samples"].as_array()?.iter().find_map(|s| {
        let l = &s[1];
        labels.iter().all(|(k, v)| l[*k] == *v).then(|| s[2].as_f64()).flatten()
    })
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_show_each_caller_its_share() {
    let stack = TestStack::start(stack_options("metrics")).await;
    let tenant = stack.tenant.clone();
    for _ in 0..2 {
        stack
            .api
            .create_task(json!({"request": {"method": "GET", "url": "https://m.example.invalid/x"}, "schedule": {"delay": "1h"}}))
            .await;
    }
    assert_eq!(stack.admin.put("/v1/flows/m.example.invalid:443", r#"{"rate":"10/s"}"#).await.0, 201);
    assert_eq!(stack.api.put("/v1/flows/reports", r#"{"parallelism":2}"#).await.0, 201);
    let (_, _other_key) = stack.admin.new_tenant("other", json!({"max_active_tasks": 7})).await;
    let base = stack.local.api_url.clone();

    assert_eq!(scrape(&base, None).await.0, 401);
    // The admin: every tenant, the queues, every policy. Counts lag the stream by about a second.
    let doc = eventually(Duration::from_secs(30), || async {
        let (status, ct, text) = scrape(&base, Some(crate::helpers::ADMIN_KEY)).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        let doc = parse(&text);
        let scheduled = value(&doc, "courier_tasks", &[("tenant", &tenant), ("status", "scheduled")]);
        // The active count is the stream counter's too, written apart from the status counts.
        let active = value(&doc, "courier_active_tasks", &[("tenant", &tenant)]);
        (scheduled == Some(2.0) && active == Some(2.0)).then_some((doc, text))
    })
    .await;
    let (doc, text) = doc.expect("the admin's metrics count the two scheduled tasks");
    eprintln!("{text}");
    for family in [
        "courier_tasks",
        "courier_active_tasks",
        "courier_active_tasks_limit",
        "courier_queue_messages",
        "courier_dlq_depth",
        "courier_flow_policies",
        "courier_flow_hold",
    ] {
        assert_eq!(doc[family]["type"], "gauge", "{family} in {text}");
        assert!(!doc[family]["help"].as_str().unwrap_or_default().is_empty(), "{family} has HELP");
    }
    assert_eq!(value(&doc, "courier_tasks", &[("tenant", &tenant), ("status", "failed")]), Some(0.0));
    assert_eq!(value(&doc, "courier_active_tasks", &[("tenant", &tenant)]), Some(2.0));
    assert_eq!(value(&doc, "courier_active_tasks_limit", &[("tenant", &tenant)]), Some(10_000.0));
    let limits: Vec<f64> = doc["courier_active_tasks_limit"]["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|s| s[2].as_f64())
        .collect();
    assert!(limits.contains(&7.0), "the other tenant is listed too: {limits:?}");
    // Delayed an hour: both wait on the scheduler, not the queue.
    for state in ["visible", "in_flight", "delayed"] {
        assert!(value(&doc, "courier_queue_messages", &[("queue", "delivery"), ("state", state)]).is_some(), "{state}");
    }
    assert_eq!(value(&doc, "courier_dlq_depth", &[]), Some(0.0));
    assert_eq!(value(&doc, "courier_flow_policies", &[("scope", "admin")]), Some(1.0));
    assert_eq!(value(&doc, "courier_flow_policies", &[("scope", "tenant")]), Some(1.0));
    assert_eq!(
        value(&doc, "courier_flow_hold", &[("key", "m.example.invalid:443"), ("hold", "breaker_open")]),
        Some(0.0)
    );

    // A tenant: its own tenant and policies, no queues.
    let (status, _, text) = scrape(&base, stack.api.key.as_deref()).await;
    assert_eq!(status, 200);
    let mine = parse(&text);
    let tenants: std::collections::BTreeSet<String> = mine["courier_tasks"]["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|s| s[1]["tenant"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tenants.into_iter().collect::<Vec<_>>(), std::slice::from_ref(&tenant));
    assert!(mine.get("courier_queue_messages").is_none(), "queue depths are the admin's: {text}");
    assert_eq!(value(&mine, "courier_flow_policies", &[("scope", "tenant")]), Some(1.0));
    assert!(value(&mine, "courier_flow_hold", &[("key", "m.example.invalid:443")]).is_none(), "{text}");
    assert_eq!(value(&mine, "courier_flow_hold", &[("key", "reports"), ("hold", "paused")]), Some(0.0));

    // `courier metrics` prints the same text; `-o json` its samples.
    let out = tokio::process::Command::new(bin_dir().join("courier"))
        .args(["metrics", "-o", "json"])
        .env("COURIER_URL", &base)
        .env("COURIER_API_KEY", stack.api.key.as_deref().unwrap_or_default())
        .env("COURIER_CONFIG", "/nonexistent")
        .output()
        .await
        .expect("courier runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let limit = doc["samples"].as_array().expect("samples").iter().find(|s| s["name"] == "courier_active_tasks_limit");
    assert_eq!(limit.map(|s| s["value"].clone()), Some(json!(10_000.0)));
}
