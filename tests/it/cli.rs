//! The `courier` binary against a real API and emulator: status, tasks,
//! replay by filter (dry-run count, interruption and resume), DLQ redrive,
//! purge.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::helpers::{Reply, Target, TestStack, bin_dir, eventually, stack_options, wait_until_queue_empty};

const WAIT: Duration = Duration::from_secs(60);

fn courier_cmd(stack: &TestStack, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin_dir().join("courier"));
    cmd.args(args)
        .env("COURIER_URL", &stack.local.api_url)
        .env("COURIER_API_KEY", stack.api.key.as_deref().unwrap_or_default())
        .env("COURIER_QUEUE_URL", &stack.outputs().queue_url)
        .env("COURIER_DLQ_URL", &stack.outputs().dlq_url)
        .env("COURIER_CONFIG", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `courier args…`; returns exit code, stdout, stderr.
async fn courier(stack: &TestStack, args: &[&str]) -> (i32, String, String) {
    let out = courier_cmd(stack, args).output().await.expect("courier runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn courier_json(stack: &TestStack, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = courier(stack, &all).await;
    assert_eq!(code, 0, "courier {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("courier {args:?} printed no JSON ({e}): {out}"))
}

#[tokio::test]
async fn status_and_task_commands_work_against_the_api() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("cli-tasks")).await;
    let url = target.url("/hook");
    let created =
        courier_json(&stack, &["tasks", "create", "--target", &url, "--json", r#"{"a":1}"#, "--header", "X-Trace: t1"])
            .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let file = std::env::temp_dir().join(format!("{}.json", stack.outputs().stack));
    std::fs::write(&file, json!({"request": {"method": "GET", "url": url}, "schedule": {"delay": "1h"}}).to_string())
        .expect("file");
    let later = courier_json(&stack, &["tasks", "create", "--file", file.to_str().expect("path")]).await;
    assert_eq!(later["status"], "scheduled");
    stack.api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(target.received()[0].header("x-trace"), Some("t1"));

    let listed = courier_json(&stack, &["tasks", "list", "--status", "succeeded"]).await;
    assert_eq!(listed["tasks"].as_array().map(Vec::len), Some(1));
    let (code, human, _) = courier(&stack, &["tasks", "show", &id]).await;
    assert_eq!(code, 0);
    assert!(human.contains(&id) && human.contains("succeeded") && human.contains("200"), "{human}");
    let (code, human, _) = courier(&stack, &["tasks", "list"]).await;
    assert_eq!(code, 0);
    assert!(human.starts_with("ID") && human.lines().count() == 3, "{human}");

    let cancelled = courier_json(&stack, &["tasks", "cancel", later["id"].as_str().expect("id")]).await;
    assert_eq!(cancelled["status"], "cancelled");
    let (code, _, err) = courier(&stack, &["tasks", "cancel", later["id"].as_str().expect("id")]).await;
    assert_ne!(code, 0);
    assert!(err.starts_with("courier: conflict 409") && err.lines().count() == 1, "{err}");

    let status = eventually(WAIT, || async {
        let s = courier_json(&stack, &["status"]).await;
        (s["counts"]["succeeded"] == 1 && s["counts"]["cancelled"] == 1).then_some(s)
    })
    .await
    .expect("counts catch up");
    assert_eq!(status["queue"]["visible"], 0);
    assert_eq!(status["dlq"], 0);
    let (code, human, _) = courier(&stack, &["status"]).await;
    assert_eq!(code, 0);
    assert!(human.contains("succeeded") && human.contains("queue: 0 visible"), "{human}");

    // --watch refreshes until Ctrl-C, then exits cleanly. Interrupted after its
    // second refresh is seen (not after a fixed time: a loaded machine is slow).
    let mut watch = courier_cmd(&stack, &["status", "--watch", "1", "--output", "json"]).spawn().expect("spawn");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut refreshes = 0;
    let seen = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            refreshes += usize::from(line.starts_with('{'));
            if refreshes >= 2 {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok() && refreshes >= 2, "refreshed {refreshes} times");
    let pid = watch.id().expect("pid").to_string();
    tokio::process::Command::new("kill").args(["-INT", &pid]).status().await.expect("kill");
    let out = watch.wait_with_output().await.expect("exit");
    assert_eq!(out.status.code(), Some(0), "Ctrl-C ends --watch cleanly");

    let (code, _, err) = courier(&stack, &["--api-key", "ck_wrong", "tasks", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("courier: unauthorized 401"), "{err}");
}

#[tokio::test]
async fn replay_of_hundreds_of_failed_tasks_counts_dry_runs_survives_interruption_and_resumes() {
    const N: usize = 240;
    let target = Target::start_with(vec![Reply::status(503); N]).await;
    let mut opts = stack_options("cli-replay");
    // Replaying failures needs failures: the target's breaker would hold most of these 240 instead.
    opts.function_env.insert("sender".into(), vec![("COURIER_BREAKER_MIN_REQUESTS".into(), "10000".into())]);
    let stack = TestStack::start(opts).await;
    for chunk in 0..N / 80 {
        let tasks: Vec<Value> = (0..80)
            .map(|i| json!({"request": {"method": "POST", "url": target.url(&format!("/r/{}", chunk * 80 + i))}, "retry": {"intervals": []}}))
            .collect();
        let body = json!({"tasks": tasks}).to_string();
        let (mut status, mut resp) = stack.api.post("/v1/tasks/batch", &body).await;
        // Two batches within one second pass the tenant's 100 creates/s: wait for the next second.
        for _ in 0..3 {
            if status != 429 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            (status, resp) = stack.api.post("/v1/tasks/batch", &body).await;
        }
        assert_eq!((status, resp["created"].as_u64()), (200, Some(80)));
    }
    let failed = eventually(WAIT, || async {
        let s = courier_json(&stack, &["status"]).await;
        (s["counts"]["failed"] == N).then_some(())
    })
    .await;
    assert!(failed.is_some(), "all {N} tasks fail first: {}", courier_json(&stack, &["status"]).await);

    let dry = courier_json(&stack, &["replay", "--status", "failed", "--code", "5xx", "--dry-run"]).await;
    assert_eq!(dry["matched"], N, "{dry}");
    assert_eq!(dry["sample"].as_array().map(Vec::len), Some(5));
    let none = courier_json(&stack, &["replay", "--code", "404", "--dry-run"]).await;
    assert_eq!(none["matched"], 0);

    // Start, interrupt with Ctrl-C (SIGINT), resume.
    let child = courier_cmd(&stack, &["replay", "--status", "failed", "--rate", "40/s"]).spawn().expect("spawn");
    let pid = child.id().expect("pid");
    // Interrupt once the first page has landed: a replayed task was delivered.
    let landed = eventually(WAIT, || async { (target.received().len() > N).then_some(()) }).await;
    assert!(landed.is_some(), "a replayed task is delivered");
    let kill = tokio::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().await.expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().await.expect("exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err} {}", String::from_utf8_lossy(&out.stdout));
    let replay_id = err.split("--resume ").nth(1).and_then(|s| s.split('`').next()).expect("resume hint").to_owned();
    // The page in flight finishes; no page follows.
    let paused = eventually(WAIT, || async {
        let (_, r) = stack.api.get(&format!("/v1/replays/{replay_id}")).await;
        (r["replayed"].as_u64().unwrap_or(0) > 0).then_some(r)
    })
    .await
    .expect("the first pages land");
    assert_eq!(paused["status"], "cancelled");
    // The chain's next page message is handled (and stops) and the replayed
    // tasks delivered once the queue is empty.
    wait_until_queue_empty(&stack.outputs().queue_url, WAIT).await;
    let (_, settled) = stack.api.get(&format!("/v1/replays/{replay_id}")).await;
    let first = settled["replayed"].as_u64().expect("count");
    assert!(first < N as u64, "interrupted part-way: {settled}");
    let done = courier_json(&stack, &["replay", "--resume", &replay_id]).await;
    assert_eq!(done["status"], "done", "{done}");
    // Every failed task is replayed exactly once. A page of the cancelled chain
    // still in flight when the replay resumed may overlap the new chain's
    // first page: those tasks are counted as skipped (no longer failed), at
    // most one page's worth.
    assert_eq!(done["replayed"].as_u64(), Some(N as u64), "{done}");
    assert!(done["skipped"].as_u64().is_some_and(|s| s <= 40), "{done}");
    assert_eq!(done["errored"], 0);
    let all_ok = eventually(WAIT, || async {
        let s = courier_json(&stack, &["status"]).await;
        (s["counts"]["succeeded"] == N).then_some(())
    })
    .await;
    assert!(all_ok.is_some(), "every replayed task succeeds");
    // History kept, numbering continued.
    let (_, page) = stack.api.get("/v1/tasks?limit=1").await;
    let id = page["tasks"][0]["id"].as_str().expect("id");
    let (_, attempts) = stack.api.get(&format!("/v1/tasks/{id}/attempts")).await;
    let codes: Vec<&Value> =
        attempts["attempts"].as_array().expect("attempts").iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(503), &json!(200)]);
}

#[tokio::test]
async fn the_dlq_is_listed_with_reasons_and_redriven() {
    let target = Target::start(&[404, 404, 404]).await;
    let stack = TestStack::start(stack_options("cli-dlq")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(stack.api.create("POST", &target.url(&format!("/d/{i}"))).await);
    }
    for id in &ids {
        stack.api.wait_for_status(id, "failed", WAIT).await;
    }
    let sqs = aws_sdk_sqs::Client::new(&crate::helpers::sdk().await);
    sqs.send_message().queue_url(&stack.outputs().dlq_url).message_body("not a task").send().await.expect("poison");
    let listed = courier_json(&stack, &["dlq", "list"]).await;
    let msgs = listed["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 4, "{listed}");
    let mut parked: Vec<&str> = msgs.iter().filter_map(|m| m["task_id"].as_str()).collect();
    parked.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(parked, expected);
    assert!(
        msgs.iter()
            .filter(|m| m["task_id"].is_string())
            .all(|m| m["reason"] == "stopped after attempt 1: client_error (HTTP 404)")
    );
    let one = msgs[0]["message_id"].as_str().expect("id");
    let shown = courier_json(&stack, &["dlq", "show", one]).await;
    assert_eq!(shown["message_id"], one);

    let redrive = courier_json(&stack, &["dlq", "redrive"]).await;
    assert_eq!(redrive, json!({"redriven": 3, "stale_removed": 0, "kept": 1}));
    for id in &ids {
        stack.api.wait_for_status(id, "succeeded", WAIT).await;
    }
    let left = courier_json(&stack, &["dlq", "list"]).await;
    assert_eq!(left["messages"].as_array().map(Vec::len), Some(1), "only the poison message stays");
}

#[tokio::test]
async fn a_failed_cron_run_on_the_dlq_is_redriven_by_its_run() {
    let target = Target::start(&[404]).await;
    let stack = TestStack::start(stack_options("cli-dlq-run")).await;
    let task = stack
        .api
        .create_task(json!({"request": {"method": "POST", "url": target.url("/run")},
                            "schedule": {"cron": "0 0 1 1 *", "timezone": "UTC"}, "retry": {"intervals": []}}))
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    let run = courier::domain::format_millis(courier::domain::now_millis() - 1_000);
    let firing = json!({"type": "cron.v1", "task_id": id, "scheduled_time": run}).to_string();
    let sqs = aws_sdk_sqs::Client::new(&crate::helpers::sdk().await);
    sqs.send_message().queue_url(&stack.outputs().queue_url).message_body(firing).send().await.expect("fire");
    let run_status = |want: &'static str| {
        let api = &stack.api;
        let id = id.clone();
        async move {
            eventually(WAIT, || async {
                let (_, t) = api.get(&format!("/v1/tasks/{id}")).await;
                (t["runs"][0]["status"] == want).then_some(t)
            })
            .await
        }
    };
    assert!(run_status("failed").await.is_some(), "the run fails on its 404");
    let listed = eventually(WAIT, || async {
        let l = courier_json(&stack, &["dlq", "list"]).await;
        (l["messages"].as_array().map(Vec::len) == Some(1)).then_some(l)
    })
    .await
    .expect("the failed run is parked");
    assert_eq!(listed["messages"][0]["body"]["run"], run.as_str());
    let redrive = courier_json(&stack, &["dlq", "redrive"]).await;
    assert_eq!(redrive, json!({"redriven": 1, "stale_removed": 0, "kept": 0}));
    let done = run_status("succeeded").await.expect("the redriven run succeeds");
    assert_eq!(done["runs"][0]["scheduled_time"], run.as_str());
    let got = target.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("courier-scheduled-time"), Some(run.as_str()));
    // A run that is no longer failed is a conflict; a cron task needs its run named.
    let (status, _) = stack.api.post(&format!("/v1/tasks/{id}/retry"), &json!({"run": run}).to_string()).await;
    assert_eq!(status, 409);
    let (status, e) = stack.api.post(&format!("/v1/tasks/{id}/retry"), "").await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("run")), "{e}");
}

#[tokio::test]
async fn purge_deletes_finished_tasks_before_a_time_with_a_dry_run() {
    let target = Target::start(&[]).await;
    let stack = TestStack::start(stack_options("cli-purge")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(stack.api.create("POST", &target.url(&format!("/p/{i}"))).await);
    }
    for id in &ids {
        stack.api.wait_for_status(id, "succeeded", WAIT).await;
    }
    let keep = stack
        .api
        .create_task(json!({"request": {"method": "GET", "url": target.url("/k")}, "schedule": {"delay": "1h"}}))
        .await;
    let before = courier::domain::format_millis(courier::domain::now_millis() + 60_000);
    let dry = courier_json(&stack, &["purge", "--status", "succeeded", "--before", &before, "--dry-run"]).await;
    assert_eq!(dry, json!({"dry_run": true, "matched": 3, "purged": 0}));
    assert_eq!(stack.api.get(&format!("/v1/tasks/{}", ids[0])).await.0, 200, "a dry run deletes nothing");
    let done = courier_json(&stack, &["purge", "--status", "succeeded", "--before", &before]).await;
    assert_eq!(done["purged"], 3);
    for id in &ids {
        assert_eq!(stack.api.get(&format!("/v1/tasks/{id}")).await.0, 404);
        assert_eq!(stack.api.get(&format!("/v1/tasks/{id}/attempts")).await.0, 404);
    }
    assert_eq!(stack.api.get(&format!("/v1/tasks/{}", keep["id"].as_str().expect("id"))).await.0, 200);
    let (code, _, err) = courier(&stack, &["purge", "--status", "scheduled", "--before", &before]).await;
    assert_eq!(code, 1);
    assert!(err.contains("(status)"), "{err}");
}

#[tokio::test]
async fn flows_set_show_list_and_delete_round_trip_through_the_api() {
    let mut opts = stack_options("cli-flows");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let as_admin = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--api-key".to_owned(), crate::helpers::ADMIN_KEY.to_owned()]);
        all
    };
    let key = "api.example.invalid:443";
    let args = as_admin(&[
        "flows",
        "set",
        key,
        "--rate",
        "10/s",
        "--burst",
        "3",
        "--parallelism",
        "4",
        "--breaker-window",
        "1m",
        "--probes",
        "2",
        "--no-adaptive",
    ]);
    let set = courier_json(&stack, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(set["policy"]["rate"], "10/s", "{set}");
    assert_eq!(set["policy"]["adaptive"], false, "{set}");
    assert_eq!(set["breaker_settings"]["window"], "1m", "{set}");
    assert_eq!(set["breaker_settings"]["probes"], 2, "{set}");

    // The tenant's share, above the admin's rate, is refused with the API's reason.
    let (code, _, err) = courier(&stack, &["flows", "set", key, "--rate", "20/s"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("above_admin_limit") && err.contains("(rate)"), "{err}");
    let share = courier_json(&stack, &["flows", "set", key, "--rate", "2/s"]).await;
    assert_eq!(share["effective"]["rate"], "2/s", "{share}");

    let args = as_admin(&["flows", "show", key]);
    let (code, human, err) = courier(&stack, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{err}");
    assert!(human.contains("rate 10/s, burst 3, parallelism 4") && human.contains("closed"), "{human}");
    let args = as_admin(&["flows", "list", "--tenant", &stack.tenant]);
    let list = courier_json(&stack, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "only the tenant's share: {list}");
    assert_eq!(list["items"][0]["policy"]["rate"], "2/s", "{list}");

    let args = as_admin(&["flows", "delete", key]);
    let (code, out, err) = courier(&stack, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (code, _, err) = courier(&stack, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_ne!(code, 0, "a second delete finds nothing");
    assert!(err.contains("not_found"), "{err}");
}

#[tokio::test]
async fn secrets_commands_create_list_rotate_and_revoke() {
    let mut opts = stack_options("cli-secrets");
    opts.pollers = 0;
    let stack = TestStack::start(opts).await;
    let (code, out, err) = courier(&stack, &["secrets", "create"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("whsec_")), "the secret is printed once: {out}");
    let rotated = courier_json(&stack, &["secrets", "rotate"]).await;
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")));
    let old = rotated["previous"][0]["id"].as_str().expect("the first secret was rotated out").to_owned();
    let (code, table, _) = courier(&stack, &["secrets", "list"]).await;
    assert_eq!(code, 0);
    assert!(table.contains(&old) && table.contains("expiring") && table.contains("active"), "{table}");
    assert!(!table.contains("whsec_"), "a listing shows no secret: {table}");
    let (code, out, _) = courier(&stack, &["secrets", "revoke", &old]).await;
    assert_eq!((code, out.trim()), (0, format!("revoked signing secret {old}").as_str()));
    let listed = courier_json(&stack, &["secrets", "list"]).await;
    assert_eq!(listed["secrets"].as_array().map(Vec::len), Some(1));
    let (code, _, err) = courier(&stack, &["secrets", "revoke", &old]).await;
    assert_ne!(code, 0, "revoking it again fails: {err}");
    let created = courier_json(
        &stack,
        &["tasks", "create", "--target", "https://hooks.invalid/x", "--delay", "1h", "--no-signing"],
    )
    .await;
    assert_eq!(created["signing"], false);
}
