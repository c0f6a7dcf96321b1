//! The commands. Each prints human output or, with `--output json`, one JSON
//! document; errors become a one-line reason and a non-zero exit code.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_sqs::types::QueueAttributeName;
use courier::domain::{DeadLetter, format_millis};
use serde_json::{Value, json};

use crate::api::{Api, Settings, enc};
use crate::output::{cell, colour_status, json as print_json, table};
use crate::{Cli, Command, CreateArgs, DlqCommand, Output, ReplayArgs, TasksCommand};

const STATUSES: [&str; 9] =
    ["scheduled", "pending", "sending", "retrying", "succeeded", "failed", "cancelled", "active", "paused"];

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&cli);
    let out = cli.output;
    match cli.command {
        Command::Status { watch } => status(&settings, out, watch).await,
        Command::Tasks(c) => tasks(&Api::new(&settings)?, out, c).await,
        Command::Replay(args) => replay(&Api::new(&settings)?, out, args).await,
        Command::Dlq(c) => dlq(&settings, out, c).await,
        Command::Flows(c) => crate::flows::run(&Api::new(&settings)?, out, c).await,
        Command::Secrets(c) => crate::secrets::run(&Api::new(&settings)?, out, c).await,
        Command::Tenants(c) => crate::tenants::run(&Api::new(&settings)?, out, c).await,
        Command::Audit(a) => crate::audit::run(&Api::new(&settings)?, out, a).await,
        Command::Metrics => crate::audit::metrics(&Api::new(&settings)?, out).await,
        Command::Archive(c) => crate::archive::run(out, c).await,
        Command::Purge { status, before, dry_run } => {
            purge(&Api::new(&settings)?, out, &status, &before, dry_run).await
        }
    }
}

async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await)
}

async fn queue_depths(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<Value> {
    let a = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .with_context(|| format!("cannot read queue {url}"))?
        .attributes
        .unwrap_or_default();
    let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(json!({
        "visible": n(QueueAttributeName::ApproximateNumberOfMessages),
        "in_flight": n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        "delayed": n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    }))
}

async fn status(settings: &Settings, out: Output, watch: Option<u64>) -> anyhow::Result<ExitCode> {
    let api = Api::new(settings)?;
    let mut ctrl_c = interrupts()?;
    let sqs = sqs().await;
    // The admin key sees every tenant's keys that expire within 30 days (and
    // has no tenant counts); a tenant key gets 403 there and its counts here.
    let expiring = |v: (u16, Value)| match v {
        (200, keys) => Ok(Some(keys["keys"].clone())),
        (403, _) => Ok(None),
        (status, v) => Err(anyhow::anyhow!(
            "{} {status}: {}",
            v["error"]["code"].as_str().unwrap_or("error"),
            v["error"]["message"].as_str().unwrap_or("no reason given")
        )),
    };
    loop {
        let keys = expiring(api.raw(reqwest::Method::GET, "/v1/keys/expiring?within=30d", None).await?)?;
        let stats = match &keys {
            Some(_) => json!({}),
            None => api.get("/v1/stats").await?,
        };
        let queue = match &settings.queue_url {
            Some(u) => queue_depths(&sqs, u).await?,
            None => Value::Null,
        };
        let dlq = match &settings.dlq_url {
            Some(u) => queue_depths(&sqs, u).await?["visible"].clone(),
            None => Value::Null,
        };
        let mut doc =
            json!({"counts": stats["counts"], "active_tasks": stats["active_tasks"], "queue": queue, "dlq": dlq});
        if let Some(k) = &keys {
            doc["keys_expiring_within_30d"] = k.clone();
        }
        if watch.is_some() && out == Output::Human {
            print!("\x1b[2J\x1b[H");
        }
        match out {
            Output::Json => println!("{doc}"),
            Output::Human => {
                if let Some(k) = &keys {
                    expiring_keys_table(k);
                } else {
                    let rows: Vec<Vec<String>> = STATUSES
                        .iter()
                        .map(|s| vec![colour_status(s), cell(&stats["counts"][*s])])
                        .filter(|r| r[1] != "0" || !["active", "paused"].iter().any(|s| r[0].contains(s)))
                        .collect();
                    table(&["status", "tasks"], &rows);
                }
                println!();
                if queue.is_null() {
                    println!("queue: give --queue-url (or COURIER_QUEUE_URL) to see its depths");
                } else {
                    println!(
                        "queue: {} visible, {} in flight, {} delayed",
                        queue["visible"], queue["in_flight"], queue["delayed"]
                    );
                }
                if !dlq.is_null() {
                    println!("dlq:   {dlq} messages");
                }
            }
        }
        let Some(every) = watch else { return Ok(ExitCode::SUCCESS) };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = ctrl_c.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The admin's view of keys that expire soon (expired ones first).
fn expiring_keys_table(keys: &Value) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let keys = keys.as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        println!("API keys: none expires within 30 days");
        return;
    }
    println!("API keys expiring within 30 days:");
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let at = k["expires_at"].as_str().unwrap_or("-");
            let left = courier::domain::parse_time("expires_at", at).ok().map(|ms| ms as i128 - now as i128).map_or(
                "-".to_owned(),
                |left| {
                    if left <= 0 {
                        "expired".to_owned()
                    } else {
                        format!("{}d {}h", left / 86_400_000, left % 86_400_000 / 3_600_000)
                    }
                },
            );
            vec![cell(&k["tenant"]), cell(&k["id"]), at.to_owned(), left]
        })
        .collect();
    table(&["tenant", "key", "expires", "left"], &rows);
}

async fn tasks(api: &Api, out: Output, c: TasksCommand) -> anyhow::Result<ExitCode> {
    match c {
        TasksCommand::List { status, host, since, until, limit } => {
            let mut q = vec![format!("limit={}", limit.min(100))];
            for (k, v) in [("status", status), ("host", host), ("created_after", since), ("created_before", until)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let page = api.get(&format!("/v1/tasks?{}", q.join("&"))).await?;
            if out == Output::Json {
                print_json(&page);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = page["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        cell(&t["id"]),
                        colour_status(t["status"].as_str().unwrap_or_default()),
                        format!("{}/{}", t["attempts"], t["max_attempts"]),
                        cell(&t["host"]),
                        cell(&t["created_at"]),
                        cell(&t["next_run_at"]),
                    ]
                })
                .collect();
            table(&["id", "status", "attempts", "host", "created", "next run"], &rows);
            if let Some(c) = page["next_cursor"].as_str() {
                println!("(more: the API's cursor is {c})");
            }
        }
        TasksCommand::Show { id } => {
            let t = api.get(&format!("/v1/tasks/{}", enc(&id))).await?;
            let attempts = api.get(&format!("/v1/tasks/{}/attempts?limit=100", enc(&id))).await?;
            if out == Output::Json {
                print_json(&json!({"task": t, "attempts": attempts["attempts"]}));
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}  {}", cell(&t["id"]), colour_status(t["status"].as_str().unwrap_or_default()));
            println!("request   {} {}", cell(&t["request"]["method"]), cell(&t["request"]["url"]));
            println!("schedule  {}", t["schedule"]);
            println!("retry     {}", t["retry"]);
            println!("next run  {}", cell(&t["next_run_at"]));
            if let Some(r) = t["failure_reason"].as_str() {
                println!("failed    {r}");
            }
            println!();
            let rows: Vec<Vec<String>> = attempts["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        cell(&a["number"]),
                        cell(&a["started_at"]),
                        cell(&a["status_code"]),
                        colour_status(a["outcome"].as_str().unwrap_or_default()),
                        format!("{} ms", a["duration_ms"]),
                        cell(&a["next_delay_ms"]),
                        a["error"].as_str().unwrap_or("").chars().take(60).collect(),
                    ]
                })
                .collect();
            table(&["#", "started", "status", "outcome", "took", "next wait ms", "error"], &rows);
        }
        TasksCommand::Create(args) => {
            let body = create_body(args)?;
            let t = api.post("/v1/tasks", &body).await?;
            match out {
                Output::Json => print_json(&t),
                Output::Human => {
                    let verb = if t["created"] == false { "exists" } else { "created" };
                    println!(
                        "{verb} {} ({}, next run {})",
                        cell(&t["id"]),
                        cell(&t["status"]),
                        cell(&t["next_run_at"])
                    );
                }
            }
        }
        TasksCommand::Cancel { id } => {
            let t = api.delete(&format!("/v1/tasks/{}", enc(&id))).await?;
            match out {
                Output::Json => print_json(&t),
                Output::Human => println!("cancelled {}", cell(&t["id"])),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create_body(a: CreateArgs) -> anyhow::Result<Value> {
    if let Some(f) = a.file {
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()));
    }
    let Some(url) = a.target else { bail!("give --target (or --file)") };
    let mut headers = serde_json::Map::new();
    for h in a.headers {
        let Some((k, v)) = h.split_once(':') else { bail!("--header `{h}` is not `Name: value`") };
        headers.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
    }
    let mut request = json!({"method": a.method, "url": url, "headers": headers});
    if let Some(b) = a.body {
        request["body"] = Value::String(b);
    }
    if let Some(j) = a.json {
        request["json"] = serde_json::from_str(&j).context("--json is not JSON")?;
    }
    let mut body = json!({"request": request});
    if let Some(d) = a.delay {
        body["schedule"] = json!({"delay": d});
    } else if let Some(t) = a.at {
        body["schedule"] = json!({"at": t});
    } else if let Some(c) = a.cron {
        body["schedule"] = json!({"cron": c, "timezone": a.timezone.unwrap_or_else(|| "UTC".into())});
    }
    if let Some(b) = a.business_id {
        body["business_id"] = Value::String(b);
    }
    if a.no_signing {
        body["signing"] = Value::Bool(false);
    }
    Ok(body)
}

fn report(r: &Value) -> String {
    format!("replayed {}, skipped {} (no longer failed), errored {}", r["replayed"], r["skipped"], r["errored"])
}

/// A Ctrl-C listener that exists from now on (a signal between polls is not lost).
fn interrupts() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot listen for Ctrl-C")
}

async fn replay(api: &Api, out: Output, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut ctrl_c = interrupts()?;
    let (id, total) = if let Some(id) = a.resume {
        let r = api.post(&format!("/v1/replays/{}/resume", enc(&id)), &json!({})).await?;
        (r["id"].as_str().unwrap_or(&id).to_owned(), None)
    } else {
        let rate = a
            .rate
            .map(|r| r.trim_end_matches("/s").parse::<u32>().context("--rate must look like 100/s"))
            .transpose()?;
        let mut filter =
            json!({"status": a.status, "host": a.host, "since": a.since, "until": a.until, "code": a.code});
        if let Some(r) = rate {
            filter["rate"] = json!(r);
        }
        if let Some(o) = filter.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        let mut dry = filter.clone();
        dry["dry_run"] = json!(true);
        let counted = api.post("/v1/replays", &dry).await?;
        if a.dry_run {
            match out {
                Output::Json => print_json(&counted),
                Output::Human => {
                    println!(
                        "{} task(s) would be replayed{}",
                        counted["matched"],
                        if counted["complete"] == false { " (at least)" } else { "" }
                    );
                    for id in counted["sample"].as_array().into_iter().flatten() {
                        println!("  {}", cell(id));
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let started = api.post("/v1/replays", &filter).await?;
        (started["id"].as_str().unwrap_or_default().to_owned(), counted["matched"].as_u64())
    };
    let bar = (out == Output::Human).then(|| {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("replay {id}"));
        bar
    });
    let path = format!("/v1/replays/{}", enc(&id));
    let last = loop {
        let r = api.get(&path).await?;
        let done = r["replayed"].as_u64().unwrap_or(0)
            + r["skipped"].as_u64().unwrap_or(0)
            + r["errored"].as_u64().unwrap_or(0);
        if let Some(b) = &bar {
            if b.length().unwrap_or(0) < done {
                b.set_length(done);
            }
            b.set_position(done);
        }
        if r["done"] == true {
            break r;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = ctrl_c.recv() => {
                // Stop after the page in flight: every task is either replayed or untouched.
                let r = api.delete(&path).await?;
                if let Some(b) = &bar { b.abandon(); }
                eprintln!("courier: replay {id} cancelled; {}; resume with `courier replay --resume {id}`", report(&r));
                if out == Output::Json { print_json(&r); }
                return Ok(ExitCode::from(130));
            }
        }
    };
    if let Some(b) = &bar {
        b.finish();
    }
    match out {
        Output::Json => print_json(&last),
        Output::Human => println!("replay {id} {}: {}", cell(&last["status"]), report(&last)),
    }
    Ok(if last["errored"].as_u64().unwrap_or(0) > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Reads up to `limit` DLQ messages without consuming them (visibility 0).
async fn peek(sqs: &aws_sdk_sqs::Client, url: &str, limit: usize) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut quiet_rounds = 0;
    while out.len() < limit && quiet_rounds < 3 {
        let msgs = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .with_context(|| format!("cannot read the DLQ {url}"))?
            .messages
            .unwrap_or_default();
        let before = out.len();
        for m in msgs {
            if seen.insert(m.message_id().unwrap_or_default().to_owned()) {
                out.push(m);
            }
        }
        quiet_rounds = if out.len() == before { quiet_rounds + 1 } else { 0 };
    }
    out.truncate(limit);
    Ok(out)
}

/// A parked message as listed and shown: its summary fields, read as a
/// [`DeadLetter`] (a document of a version this CLI does not know shows its raw
/// fields), and the document itself.
fn parked(m: &aws_sdk_sqs::types::Message) -> Value {
    let body = m.body().unwrap_or_default();
    let doc: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (kind, task_id, tenant, reason) = match DeadLetter::from_body(body) {
        Some(DeadLetter::TaskFailedV1 { task_id, tenant, reason, .. }) => {
            (json!("task.failed.v1"), json!(task_id), json!(tenant), json!(reason))
        }
        Some(DeadLetter::PoisonV1 { reason, .. }) => (json!("poison.v1"), Value::Null, Value::Null, json!(reason)),
        None => (doc["type"].clone(), doc["task_id"].clone(), doc["tenant"].clone(), doc["reason"].clone()),
    };
    json!({
        "message_id": m.message_id(),
        "type": kind,
        "task_id": task_id,
        "tenant": tenant,
        "reason": reason,
        "body": doc,
    })
}

async fn dlq(settings: &Settings, out: Output, c: DlqCommand) -> anyhow::Result<ExitCode> {
    let Some(url) = settings.dlq_url.clone() else { bail!("no DLQ URL: give --dlq-url, COURIER_DLQ_URL or `dlq_url`") };
    let sqs = sqs().await;
    match c {
        DlqCommand::List { limit } => {
            let msgs: Vec<Value> = peek(&sqs, &url, limit).await?.iter().map(parked).collect();
            match out {
                Output::Json => print_json(&json!({"messages": msgs})),
                Output::Human => {
                    let rows: Vec<Vec<String>> = msgs
                        .iter()
                        .map(|m| {
                            vec![cell(&m["message_id"]), cell(&m["type"]), cell(&m["task_id"]), cell(&m["reason"])]
                        })
                        .collect();
                    table(&["message", "type", "task", "reason"], &rows);
                }
            }
        }
        DlqCommand::Show { message_id } => {
            let m = peek(&sqs, &url, 10_000).await?.into_iter().find(|m| m.message_id() == Some(message_id.as_str()));
            let Some(m) = m else { bail!("no message {message_id} on the DLQ") };
            print_json(&parked(&m));
        }
        DlqCommand::Redrive { limit } => {
            let api = Api::new(settings)?;
            let (mut redriven, mut stale, mut kept) = (0u64, 0u64, 0u64);
            let mut seen = HashSet::new();
            while ((redriven + stale + kept) as usize) < limit {
                let msgs = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(60)
                    .send()
                    .await?
                    .messages
                    .unwrap_or_default();
                let mut fresh = Vec::new();
                for m in msgs {
                    if seen.insert(m.message_id().unwrap_or_default().to_owned()) {
                        fresh.push(m);
                    } else if let Some(r) = m.receipt_handle() {
                        // Kept earlier and received again: leave it visible for the next reader.
                        sqs.change_message_visibility()
                            .queue_url(&url)
                            .receipt_handle(r)
                            .visibility_timeout(0)
                            .send()
                            .await?;
                    }
                }
                if fresh.is_empty() {
                    break;
                }
                for m in fresh {
                    let doc = DeadLetter::from_body(m.body().unwrap_or_default());
                    let receipt = m.receipt_handle().unwrap_or_default();
                    let verdict = match doc.as_ref().and_then(DeadLetter::task) {
                        // Poison, or unreadable (no task to retry): it stays for a person to read.
                        None => None,
                        Some((task, run)) => {
                            // A cron task's failed run is retried by naming the run.
                            let body = match run {
                                Some(run) => json!({"run": format_millis(run)}),
                                None => json!({}),
                            };
                            let (status, _) = api
                                .raw(
                                    reqwest::Method::POST,
                                    &format!("/v1/tasks/{}/retry", enc(task.as_str())),
                                    Some(&body),
                                )
                                .await?;
                            match status {
                                200 => Some(true),
                                409 => Some(false), // already retried or no longer failed: the message is stale
                                _ => None,          // another tenant's task, or an error: leave it
                            }
                        }
                    };
                    match verdict {
                        Some(retried) => {
                            sqs.delete_message().queue_url(&url).receipt_handle(receipt).send().await?;
                            if retried { redriven += 1 } else { stale += 1 }
                        }
                        None => {
                            sqs.change_message_visibility()
                                .queue_url(&url)
                                .receipt_handle(receipt)
                                .visibility_timeout(0)
                                .send()
                                .await?;
                            kept += 1;
                        }
                    }
                }
            }
            let doc = json!({"redriven": redriven, "stale_removed": stale, "kept": kept});
            match out {
                Output::Json => print_json(&doc),
                Output::Human => {
                    println!("redriven {redriven}, stale removed {stale}, kept {kept} (poison or not this tenant's)")
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(api: &Api, out: Output, status: &str, before: &str, dry_run: bool) -> anyhow::Result<ExitCode> {
    let (mut matched, mut purged, mut cursor) = (0u64, 0u64, None::<String>);
    loop {
        let mut body = json!({"status": status, "before": before, "dry_run": dry_run, "limit": 100});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let page = api.post("/v1/tasks/purge", &body).await?;
        matched += page["matched"].as_u64().unwrap_or(0);
        purged += page["purged"].as_u64().unwrap_or(0);
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let doc = json!({"dry_run": dry_run, "matched": matched, "purged": purged});
    match out {
        Output::Json => print_json(&doc),
        Output::Human if dry_run => println!("{matched} {status} task(s) created before {before} would be purged"),
        Output::Human => println!("purged {purged} {status} task(s) created before {before}"),
    }
    Ok(ExitCode::SUCCESS)
}
