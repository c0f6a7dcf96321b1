//! `make bench`: what one delivery costs and how fast the local stack goes,
//! on the two paths users take.
//!
//! Two scenarios, each on a fresh local stack with the reconciler (every
//! 10 s, plus one pass at the end) and the stream counter running:
//! - **single**: one task per `POST /v1/tasks`, each with its own
//!   `business_id`, from 16 concurrent clients;
//! - **batch**: 100 tasks per `POST /v1/tasks/batch`.
//!
//! Per successful first-try delivery it measures DynamoDB write and read
//! units by caller (API, sender, counter, reconciler; counted from the real
//! requests and the sizes of the items they touch), SQS requests, Scheduler
//! calls, Lambda invocations and GB-s, API Gateway requests and log bytes,
//! and turns them into list-price cost per million deliveries
//! (`infra/prices.json`); plus deliveries/s, creates/s, the latency of the
//! create calls, and the sender's CPU time. Every AWS call of the functions
//! and of the local event sources goes through a counting proxy in front of
//! the emulator (one per caller, routing each service where the caller's
//! environment says). Then the release functions' Lambda init time (process
//! start to the first Runtime API `/next`).
//!
//! The figures go to `target/bench.json` (`--json`); `--compare OLD.json`
//! prints an earlier run beside this one.
//!
//! `--flows` adds flow control's figures: a phase with two senders and a
//! 20/s policy on the target: overshoot over the limit in the worst 1-s
//! window, sustained rate, flow units per delivery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use clap::Parser;
use courier_local::arrivals::{max_per_second, sustained_rate};
use courier_local::proxy::{Exchange, Observer, RunningProxy, SERVICES, Upstreams};
use courier_local::runtime::{FunctionHost, FunctionSpec};
use courier_local::stack::{LocalStack, StackOptions, scheduled_event};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Courier's cost and speed benchmark (needs AWS_ENDPOINT_URL: the emulator)")]
struct Args {
    /// Tasks to create and deliver in each scenario.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// Created but not yet delivered, at most (the emulator slows down on deep queues).
    #[arg(long, default_value_t = 300)]
    max_in_flight: usize,
    /// Concurrent clients of the single scenario.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Directory of the release function binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Cold starts measured for the init time.
    #[arg(long, default_value_t = 40)]
    init_samples: usize,
    #[arg(long, default_value = "infra/prices.json")]
    prices: PathBuf,
    /// Where the figures are written as JSON.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// An earlier run's JSON, printed beside this one.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Only these scenarios (`single`, `batch`).
    #[arg(long, value_delimiter = ',', default_value = "single,batch")]
    scenarios: Vec<String>,
    /// Also run the flow-control phase (2 senders, a 20/s policy on the target).
    #[arg(long)]
    flows: bool,
    /// Tasks of the flow-control phase.
    #[arg(long, default_value_t = 600)]
    flow_tasks: usize,
}

/// Log bytes Lambda itself writes per invocation at the default system log
/// level, INFO (`START`, `END`, `REPORT` lines; about 260 bytes together on
/// arm64), which the local runtime does not: added to what the functions print.
const PLATFORM_LOG_BYTES: f64 = 260.0;

/// Log bytes Lambda writes per successful invocation at the system log level
/// `template.yaml` sets for every function (`Globals.Function.LoggingConfig`):
/// none at WARN, which keeps only failures and timeouts.
/// Lambda gives a function CPU in proportion to its memory, one vCPU at
/// 1,769 MB: a function with less runs its CPU-bound part that much slower.
const FULL_VCPU_MB: f64 = 1769.0;

/// The template's functions by the name the bench gives them.
const FUNCTIONS: [(&str, &str); 4] = [
    ("api", "ApiFunction"),
    ("sender", "SenderFunction"),
    ("counter", "CounterFunction"),
    ("reconciler", "ReconcilerFunction"),
];

fn template() -> serde_yaml::Value {
    let text = std::fs::read_to_string("template.yaml")
        .or_else(|_| std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml")))
        .unwrap_or_default();
    serde_yaml::from_str(&text).unwrap_or_default()
}

/// A function's memory (MB) as `template.yaml` sets it: its own `MemorySize`, else the Globals'.
fn memory_mb(caller: &str) -> f64 {
    let t = template();
    let id = FUNCTIONS.iter().find(|(c, _)| *c == caller).map_or("", |(_, id)| id);
    t["Resources"][id]["Properties"]["MemorySize"]
        .as_f64()
        .or_else(|| t["Globals"]["Function"]["MemorySize"].as_f64())
        .unwrap_or(128.0)
}

/// GB-s Lambda bills for `busy` seconds of invocations that spent `cpu`
/// seconds of CPU here (one full core each): the CPU part stretched to the
/// function's share of a vCPU, at its memory.
fn billed_gb_s(busy: f64, cpu: f64, memory_mb: f64) -> f64 {
    (busy + cpu * (FULL_VCPU_MB / memory_mb - 1.0).max(0.0)) * memory_mb / 1024.0
}

fn platform_log_bytes() -> f64 {
    match template()["Globals"]["Function"]["LoggingConfig"]["SystemLogLevel"].as_str() {
        Some("WARN") => 0.0,
        _ => PLATFORM_LOG_BYTES,
    }
}

/// Usage counted by one proxy (one caller: a function, or the event source).
#[derive(Default)]
struct Meter {
    ops: Mutex<HashMap<String, u64>>,
    wcu: Mutex<f64>,
    rcu: Mutex<f64>,
    /// The part of `wcu`/`rcu` spent on flow control's items.
    flow_wcu: Mutex<f64>,
    flow_rcu: Mutex<f64>,
    flow_calls: AtomicUsize,
}

impl Meter {
    fn reset(&self) {
        self.ops.lock().expect("lock").clear();
        *self.wcu.lock().expect("lock") = 0.0;
        *self.rcu.lock().expect("lock") = 0.0;
        *self.flow_wcu.lock().expect("lock") = 0.0;
        *self.flow_rcu.lock().expect("lock") = 0.0;
        self.flow_calls.store(0, Ordering::Relaxed);
    }

    fn count(&self, prefix: &str) -> u64 {
        self.ops.lock().expect("lock").iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }

    fn op(&self, name: &str) -> u64 {
        self.ops.lock().expect("lock").get(name).copied().unwrap_or(0)
    }
}

/// Sizes of items seen, by `pk|sk`, to bill updates by the item they touch.
type Sizes = Arc<Mutex<HashMap<String, usize>>>;

/// What one counting proxy does with each exchange it forwards.
struct Metering {
    meter: Arc<Meter>,
    sizes: Sizes,
}

/// DynamoDB's item size: attribute names plus values.
fn item_size(item: &Value) -> usize {
    item.as_object().map_or(0, |o| o.iter().map(|(k, v)| k.len() + value_size(v)).sum())
}

fn value_size(v: &Value) -> usize {
    let Some((t, inner)) = v.as_object().and_then(|o| o.iter().next()) else { return 0 };
    match t.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        "N" => inner.as_str().map_or(1, |n| n.trim_start_matches('-').len().div_ceil(2) + 1),
        "B" => inner.as_str().map_or(0, |b| b.len() * 3 / 4),
        "BOOL" | "NULL" => 1,
        "M" => 3 + item_size(inner),
        "L" => 3 + inner.as_array().map_or(0, |l| l.iter().map(|e| 1 + value_size(e)).sum()),
        "SS" | "NS" | "BS" => inner.as_array().map_or(0, |l| l.iter().map(|e| e.as_str().map_or(0, str::len)).sum()),
        _ => 0,
    }
}

fn key_of(item: &Value) -> String {
    let s = |k: &str| item[k]["S"].as_str().unwrap_or_default().to_owned();
    format!("{}|{}", s("pk"), s("sk"))
}

/// Index writes a put causes: one per (keys-only) index whose keys the item has.
fn index_writes(item: &Value) -> f64 {
    let has = |a: &str, b: &str| item.get(a).is_some() && item.get(b).is_some();
    f64::from(u8::from(has("gsi1pk", "gsi1sk")) + u8::from(has("recon_pk", "recon_at")))
}

/// Whether a DynamoDB call touches flow control's items: a key, an item or a
/// key condition value whose `pk` starts with `FLOW` (`FLOWS`, `FLOW#<key>`).
fn is_flow_call(req: &Value) -> bool {
    let flow_pk = |v: &Value| v["pk"]["S"].as_str().is_some_and(|pk| pk.starts_with("FLOW"));
    let flow_value = |v: &Value| v["S"].as_str().is_some_and(|s| s.starts_with("FLOW"));
    flow_pk(&req["Key"])
        || flow_pk(&req["Item"])
        || req["ExpressionAttributeValues"]
            .as_object()
            .is_some_and(|o| req["KeyConditionExpression"].is_string() && o.values().any(flow_value))
        || req["TransactItems"].as_array().is_some_and(|items| {
            items.iter().any(|t| {
                t.as_object().is_some_and(|o| o.values().any(|op| flow_pk(&op["Key"]) || flow_pk(&op["Item"])))
            })
        })
        || req["RequestItems"].as_object().is_some_and(|tables| {
            tables.values().any(|reqs| {
                reqs.as_array().is_some_and(|l| {
                    l.iter().any(|w| flow_pk(&w["PutRequest"]["Item"]) || flow_pk(&w["DeleteRequest"]["Key"]))
                }) || reqs["Keys"].as_array().is_some_and(|keys| keys.iter().any(flow_pk))
            })
        })
}

fn write_units(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

fn read_units(size: usize, consistent: bool) -> f64 {
    size.div_ceil(4096).max(1) as f64 * if consistent { 1.0 } else { 0.5 }
}

impl Metering {
    /// Bills one DynamoDB call from its request and response.
    fn bill_dynamodb(&self, op: &str, req: &Value, resp: &Value) {
        let mut sizes = self.sizes.lock().expect("lock");
        let (mut w, mut r) = (0.0, 0.0);
        let put = |item: &Value, factor: f64, sizes: &mut HashMap<String, usize>| {
            let size = item_size(item);
            sizes.insert(key_of(item), size);
            factor * write_units(size) + index_writes(item)
        };
        match op {
            "PutItem" => w += put(&req["Item"], 1.0, &mut sizes),
            "BatchWriteItem" => {
                for reqs in req["RequestItems"].as_object().into_iter().flat_map(|o| o.values()) {
                    for wr in reqs.as_array().into_iter().flatten() {
                        if let Some(item) = wr.get("PutRequest").map(|p| &p["Item"]) {
                            w += put(item, 1.0, &mut sizes);
                        } else {
                            w += 1.0;
                        }
                    }
                }
            }
            "TransactWriteItems" => {
                for t in req["TransactItems"].as_array().into_iter().flatten() {
                    if let Some(p) = t.get("Put") {
                        w += put(&p["Item"], 2.0, &mut sizes);
                    } else if let Some(u) = t.get("Update") {
                        w += 2.0 * write_units(sizes.get(&key_of(&u["Key"])).copied().unwrap_or(1));
                    } else {
                        w += 2.0;
                    }
                }
            }
            "UpdateItem" => {
                let k = key_of(&req["Key"]);
                let before = sizes.get(&k).copied().unwrap_or(1);
                let after = resp.get("Attributes").map(item_size).unwrap_or(before);
                sizes.insert(k, after);
                w += write_units(before.max(after));
                let expr = req["UpdateExpression"].as_str().unwrap_or_default();
                let names = req["ExpressionAttributeNames"].to_string();
                if ["recon_at", "recon_pk", "gsi1pk", "gsi1sk"].iter().any(|a| expr.contains(a) || names.contains(a)) {
                    w += 2.0; // an index entry moves: delete + put
                }
            }
            "DeleteItem" => w += write_units(sizes.remove(&key_of(&req["Key"])).unwrap_or(1)),
            "GetItem" => {
                let consistent = req["ConsistentRead"].as_bool().unwrap_or(false);
                let size = resp.get("Item").map_or(1, item_size);
                r += read_units(size, consistent);
            }
            "Query" | "Scan" => {
                let consistent = req["ConsistentRead"].as_bool().unwrap_or(false);
                let size: usize = resp["Items"].as_array().map_or(0, |i| i.iter().map(item_size).sum());
                r += read_units(size, consistent);
            }
            "BatchGetItem" => {
                for items in resp["Responses"].as_object().into_iter().flat_map(|o| o.values()) {
                    for item in items.as_array().into_iter().flatten() {
                        r += read_units(item_size(item), false);
                    }
                }
            }
            _ => {}
        }
        *self.meter.wcu.lock().expect("lock") += w;
        *self.meter.rcu.lock().expect("lock") += r;
        if is_flow_call(req) {
            *self.meter.flow_wcu.lock().expect("lock") += w;
            *self.meter.flow_rcu.lock().expect("lock") += r;
            self.meter.flow_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Observer for Metering {
    fn observe(&self, x: &Exchange<'_>) {
        let target = x.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let op = match &target {
            Some(t) => t
                .replace("DynamoDBStreams_20120810.", "streams:")
                .replace("DynamoDB_20120810.", "dynamodb:")
                .replace("AmazonSQS.", "sqs:"),
            // Scheduler speaks REST: the method and the path's first segment.
            None => format!("scheduler:{} /{}", x.method, x.uri.path().split('/').nth(1).unwrap_or_default()),
        };
        *self.meter.ops.lock().expect("lock").entry(op.clone()).or_default() += 1;
        if let Some(ddb_op) = op.strip_prefix("dynamodb:") {
            let req: Value = serde_json::from_slice(x.request).unwrap_or(Value::Null);
            let resp: Value = serde_json::from_slice(x.response).unwrap_or(Value::Null);
            self.bill_dynamodb(ddb_op, &req, &resp);
        }
    }
}

/// A counting proxy for one caller, forwarding each service where this
/// process's environment says (`BENCH_AWS_ENDPOINT_URL_<SERVICE>`, else
/// `AWS_ENDPOINT_URL[_<SERVICE>]`: the callers themselves see only the
/// proxies, so per-service endpoints for the emulator are given apart).
async fn start_proxy(meter: Arc<Meter>, sizes: Sizes) -> anyhow::Result<RunningProxy> {
    let upstreams = Upstreams::from_lookup(|k| std::env::var(format!("BENCH_{k}")).or_else(|_| std::env::var(k)).ok())
        .ok_or_else(|| anyhow::anyhow!("AWS_ENDPOINT_URL must point at the emulator"))?;
    Ok(courier_local::proxy::start(upstreams, Arc::new(Metering { meter, sizes })).await?)
}

/// Every endpoint variable of a function, pointed at `url`.
fn endpoint_env(url: &str) -> Vec<(String, String)> {
    std::iter::once(("AWS_ENDPOINT_URL".to_owned(), url.to_owned()))
        .chain(SERVICES.iter().map(|s| (format!("AWS_ENDPOINT_URL_{s}"), url.to_owned())))
        .collect()
}

/// utime + stime of a process, from /proc (Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

async fn init_times(spec: FunctionSpec, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let host = FunctionHost::start(spec.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.init_duration().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        out.extend(host.init_duration());
    }
    out.sort();
    Ok(out)
}

/// One scenario's figures, in print order: (label, value). Labels starting
/// with two spaces are parts of the row above.
type Rows = Vec<(String, f64)>;

/// Who calls AWS, each behind its own counting proxy.
const CALLERS: [&str; 5] = ["api", "sender", "counter", "reconciler", "event sources"];

/// The figures of one scenario, per successful first-try delivery.
#[derive(Default)]
struct Usage {
    wcu: Vec<(String, f64)>,
    rcu: Vec<(String, f64)>,
    sqs: Vec<(String, f64)>,
    scheduler: f64,
    invocations: Vec<(String, f64)>,
    gb_s: Vec<(String, f64)>,
    api_gateway: f64,
    log_bytes: f64,
    sender_cpu_ms: f64,
    api_cpu_ms: f64,
    deliveries_per_s: f64,
    creates_per_s: f64,
    /// Latency of the create calls (ms): p50, p95, p99.
    create_ms: [f64; 3],
}

fn sum(parts: &[(String, f64)]) -> f64 {
    parts.iter().map(|(_, v)| v).sum()
}

impl Usage {
    fn rows(&self, price: &dyn Fn(&str) -> f64) -> Rows {
        let mut rows: Rows = Vec::new();
        let group = |label: &str, parts: &[(String, f64)], rows: &mut Rows| {
            rows.push((label.to_owned(), sum(parts)));
            rows.extend(parts.iter().map(|(k, v)| (format!("  {k}"), *v)));
        };
        group("DynamoDB write units", &self.wcu, &mut rows);
        group("DynamoDB read units", &self.rcu, &mut rows);
        group("SQS requests", &self.sqs, &mut rows);
        rows.push(("Scheduler calls".into(), self.scheduler));
        group("Lambda invocations", &self.invocations, &mut rows);
        group("Lambda GB-s", &self.gb_s, &mut rows);
        rows.push(("API Gateway requests".into(), self.api_gateway));
        rows.push(("log bytes".into(), self.log_bytes));
        rows.push(("sender CPU ms".into(), self.sender_cpu_ms));
        rows.push(("API CPU ms".into(), self.api_cpu_ms));
        let m = 1_000_000.0;
        let costs = [
            ("$/M DynamoDB writes", sum(&self.wcu) * price("dynamodb_per_million_write_request_units")),
            ("$/M DynamoDB reads", sum(&self.rcu) * price("dynamodb_per_million_read_request_units")),
            ("$/M SQS", sum(&self.sqs) * price("sqs_per_million_requests")),
            ("$/M Scheduler", self.scheduler * price("scheduler_per_million_invocations")),
            ("$/M Lambda requests", sum(&self.invocations) * price("lambda_per_million_requests")),
            ("$/M Lambda compute", sum(&self.gb_s) * m * price("lambda_arm64_per_gb_second")),
            ("$/M API Gateway", self.api_gateway * price("api_gateway_http_per_million_requests")),
            ("$/M CloudWatch Logs", self.log_bytes * m / 1e9 * price("cloudwatch_logs_per_gb_ingested")),
        ];
        rows.push(("$/M total".into(), costs.iter().map(|(_, c)| c).sum()));
        rows.extend(costs.iter().map(|(k, v)| (format!("  {}", k.trim_start_matches("$/M ")), *v)));
        rows.push(("deliveries/s".into(), self.deliveries_per_s));
        rows.push(("creates/s".into(), self.creates_per_s));
        rows.push(("create call p50 ms".into(), self.create_ms[0]));
        rows.push(("create call p95 ms".into(), self.create_ms[1]));
        rows.push(("create call p99 ms".into(), self.create_ms[2]));
        rows
    }
}

/// Scenarios side by side: one row per figure, one column per scenario.
fn table(columns: &[(String, Rows)]) -> String {
    let mut out = format!("{:<26}", "per first-try delivery");
    for (name, _) in columns {
        out += &format!("{name:>14}");
    }
    out.push('\n');
    let Some((_, first)) = columns.first() else { return out };
    for (i, (label, _)) in first.iter().enumerate() {
        out += &format!("{label:<26}");
        for (_, rows) in columns {
            out += &rows.get(i).map_or_else(|| format!("{:>14}", "-"), |(_, v)| format!("{:>14}", fmt(*v)));
        }
        out.push('\n');
    }
    out
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 { format!("{v:.1}") } else { format!("{v:.4}") }
}

/// An earlier run beside this one: per scenario and figure, old, new, change.
fn comparison(old: &Value, new: &Value) -> String {
    let mut out = String::new();
    let Some(scenarios) = new["scenarios"].as_object() else { return out };
    for (name, rows) in scenarios {
        out += &format!("\n== {name}: {:<26}{:>14}{:>14}{:>10}\n", "", "before", "after", "change");
        // A row is known by its label under the last top-level row (`  api` under writes, reads…).
        let keyed = |rows: &Value| -> Vec<(String, Option<f64>)> {
            let mut section = String::new();
            let mut out = Vec::new();
            for row in rows.as_array().into_iter().flatten() {
                let label = row[0].as_str().unwrap_or_default();
                if !label.starts_with(' ') {
                    section = label.to_owned();
                }
                out.push((format!("{section}|{label}"), row[1].as_f64()));
            }
            out
        };
        let olds = keyed(&old["scenarios"][name]);
        for (key, after) in keyed(rows) {
            let label = key.split_once('|').map_or(key.as_str(), |(s, l)| if s == l { s } else { l });
            let Some(after) = after else { continue };
            let before = olds.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v);
            let change = match before {
                Some(b) if b != 0.0 => format!("{:+.0} %", (after - b) / b * 100.0),
                _ => "-".into(),
            };
            let b = before.map_or_else(|| "-".to_owned(), fmt);
            out += &format!("{label:<34}{b:>14}{:>14}{change:>10}\n", fmt(after));
        }
    }
    for kind in ["init_ms", "flows"] {
        for (k, v) in new[kind].as_object().into_iter().flatten() {
            let b = old[kind][k].as_f64().map_or_else(|| "-".to_owned(), fmt);
            out += &format!("{kind} {k:<27}{b:>14}{:>14}\n", v.as_f64().map_or_else(|| "-".to_owned(), fmt));
        }
    }
    out
}

/// The meters and proxies one scenario's callers share.
struct Meters {
    meters: Vec<(&'static str, Arc<Meter>)>,
    proxies: Vec<RunningProxy>,
}

impl Meters {
    async fn start() -> anyhow::Result<Self> {
        let sizes: Sizes = Arc::default();
        let mut meters = Vec::new();
        let mut proxies = Vec::new();
        for caller in CALLERS {
            let m = Arc::new(Meter::default());
            proxies.push(start_proxy(m.clone(), sizes.clone()).await?);
            meters.push((caller, m));
        }
        Ok(Self { meters, proxies })
    }

    fn meter(&self, caller: &str) -> &Meter {
        &self.meters.iter().find(|(c, _)| *c == caller).expect("a caller").1
    }

    fn url(&self, caller: &str) -> &str {
        let i = CALLERS.iter().position(|c| *c == caller).expect("a caller");
        &self.proxies[i].url
    }

    fn reset(&self) {
        for (_, m) in &self.meters {
            m.reset();
        }
    }

    /// DynamoDB calls of the functions (the event sources poll all the time).
    fn function_writes(&self) -> u64 {
        self.meters.iter().filter(|(c, _)| *c != "event sources").map(|(_, m)| m.count("dynamodb:")).sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Single,
    Batch,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch => "batch",
        }
    }
}

/// Runs one scenario on a fresh local stack; returns its figures.
async fn run_scenario(
    scenario: Scenario,
    args: &Args,
    bin_dir: &Path,
    price: &dyn Fn(&str) -> f64,
) -> anyhow::Result<Rows> {
    let meters = Meters::start().await?;
    let esm_sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(meters.url("event sources"))
        .load()
        .await;
    let stack = format!("bench-{}-{}", scenario.name(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::create_dir_all(".local")?;
    let log = PathBuf::from(format!(".local/{stack}.log"));
    let admin_key = format!("bench-admin-{}", uuid::Uuid::new_v4().simple());
    let mut opts = StackOptions::new(&stack, bin_dir);
    opts.log_file = Some(log.clone());
    opts.scheduler_tick = None;
    opts.reconcile_every = Some(Duration::from_secs(10));
    opts.stream_counter = true;
    // As many API instances as clients: Lambda gives each concurrent request its own.
    opts.api_instances = if scenario == Scenario::Single { args.clients.min(8) } else { 2 };
    opts.extra_env.push(("COURIER_ADMIN_KEY_SHA256".into(), courier::domain::hash_key(&admin_key)));
    opts.extra_env.push(("RUST_LOG".into(), "info".into()));
    for f in ["api", "sender", "counter", "reconciler"] {
        opts.function_env.insert(f.into(), endpoint_env(meters.url(f)));
    }
    let local = LocalStack::start(&esm_sdk, opts).await?;

    // A target that answers 200 and counts.
    let received = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("http://{}/hook", listener.local_addr()?);
    let counter = received.clone();
    tokio::spawn(async move {
        let app = Router::new().fallback(move || {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        });
        axum::serve(listener, app).await
    });

    let http = reqwest::Client::new();
    let tenant = http
        .post(format!("{}/v1/tenants", local.api_url))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "bench", "max_active_tasks": 10_000_000, "create_rate_per_second": 100_000}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let key = tenant["api_key"]["key"].as_str().ok_or_else(|| anyhow::anyhow!("no key: {tenant}"))?.to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let api = local.api_url.clone();
    // Single creates name their task (a business id each), as most users do; batch
    // creates are the bulk path, without business ids.
    let named = scenario == Scenario::Single;
    let task = move |n: usize| {
        let mut t = json!({"request": {"method": "POST", "url": target, "json": {"n": n}}});
        if named {
            t["business_id"] = json!(format!("bench-{run}-{n}"));
        }
        t
    };
    let wait_for = |n: usize, within: Duration| {
        let received = received.clone();
        async move {
            let deadline = Instant::now() + within;
            while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            received.load(Ordering::Relaxed) >= n
        }
    };
    // Warm up (cold starts and first connections are not what we measure).
    let warm: Vec<Value> = (0..20).map(|i| task(1_000_000 + i)).collect();
    http.post(format!("{api}/v1/tasks/batch")).bearer_auth(&key).json(&json!({"tasks": warm})).send().await?;
    anyhow::ensure!(wait_for(20, Duration::from_secs(60)).await, "warm-up tasks were not delivered");
    tokio::time::sleep(Duration::from_secs(2)).await;
    meters.reset();
    let base = received.load(Ordering::Relaxed);
    let hosts = [&local.api, &local.sender, &local.counter, &local.reconciler];
    let cpu_of = |h: &FunctionHost| h.pids().into_iter().map(cpu_time).sum::<Duration>();
    let cpu0: Vec<Duration> = hosts.iter().map(|h| cpu_of(h)).collect();
    let usage0: Vec<(u64, Duration)> = hosts.iter().map(|h| h.usage()).collect();
    let log0 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let n = args.tasks;
    let per_call = if scenario == Scenario::Single { 1 } else { 100 };
    println!(
        "\n{}: creating and delivering {n} tasks ({}; at most {} in flight)…",
        scenario.name(),
        if per_call == 1 { format!("one per call, {} clients", args.clients) } else { "100 per call".into() },
        args.max_in_flight
    );
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let clients = if per_call == 1 { args.clients } else { 1 };
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (http, key, api, next, latencies, received, task) =
            (http.clone(), key.clone(), api.clone(), next.clone(), latencies.clone(), received.clone(), task.clone());
        let max_in_flight = args.max_in_flight;
        workers.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(per_call, Ordering::Relaxed);
                if start >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let k = (n - start).min(per_call);
                while start.saturating_sub(received.load(Ordering::Relaxed) - base) + k > max_in_flight {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let sent = Instant::now();
                let resp = if per_call == 1 {
                    http.post(format!("{api}/v1/tasks")).bearer_auth(&key).json(&task(start)).send().await?
                } else {
                    let tasks: Vec<Value> = (start..start + k).map(&task).collect();
                    http.post(format!("{api}/v1/tasks/batch"))
                        .bearer_auth(&key)
                        .json(&json!({"tasks": tasks}))
                        .send()
                        .await?
                };
                let status = resp.status();
                let body: Value = resp.json().await?;
                latencies.lock().expect("lock").push(sent.elapsed());
                let ok = if per_call == 1 { status == 201 } else { body["created"] == k };
                anyhow::ensure!(ok, "create failed ({status}): {body}");
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let created_in = t0.elapsed();
    anyhow::ensure!(wait_for(base + n, Duration::from_secs(900)).await, "not every task was delivered");
    let elapsed = t0.elapsed();
    // Let the last finishes and counts land, then one more reconciler pass (its
    // steady-state cost, counted with the rest).
    let mut last = meters.function_writes();
    loop {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let now = meters.function_writes();
        if now == last {
            break;
        }
        last = now;
    }
    local.reconciler.invoke(&scheduled_event(&format!("{stack}-reconcile"))).await?;
    let cpu: Vec<f64> = hosts.iter().zip(&cpu0).map(|(h, c0)| cpu_of(h).saturating_sub(*c0).as_secs_f64()).collect();
    let usage: Vec<(u64, Duration)> =
        hosts.iter().zip(&usage0).map(|(h, (i0, b0))| (h.usage().0 - i0, h.usage().1.saturating_sub(*b0))).collect();
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0).saturating_sub(log0);
    let nf = n as f64;
    let per = |x: f64| x / nf;
    let callers = ["api", "sender", "counter", "reconciler"];
    let by = |f: &dyn Fn(&Meter) -> f64| -> Vec<(String, f64)> {
        callers.iter().map(|c| ((*c).to_owned(), per(f(meters.meter(c))))).collect()
    };
    let esm = meters.meter("event sources");
    let mut sqs = by(&|m| m.count("sqs:") as f64);
    // The event source's receives and deletes are billed like any SQS request (streams reads by Lambda are free).
    sqs.push(("event source".into(), per((esm.op("sqs:DeleteMessageBatch") + esm.op("sqs:ReceiveMessage")) as f64)));
    let invocations: Vec<(String, f64)> =
        callers.iter().zip(&usage).map(|(c, (inv, _))| ((*c).to_owned(), per(*inv as f64))).collect();
    let gb_s: Vec<(String, f64)> = callers
        .iter()
        .zip(usage.iter().zip(&cpu))
        .map(|(c, ((_, busy), cpu))| ((*c).to_owned(), per(billed_gb_s(busy.as_secs_f64(), *cpu, memory_mb(c)))))
        .collect();
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort();
    let ms = |p: f64| percentile(&lat, p).as_secs_f64() * 1e3;
    let u = Usage {
        wcu: by(&|m| *m.wcu.lock().expect("lock")),
        rcu: by(&|m| *m.rcu.lock().expect("lock")),
        sqs,
        scheduler: per(callers.iter().map(|c| meters.meter(c).count("scheduler:")).sum::<u64>() as f64),
        gb_s,
        api_gateway: per((n as f64 / per_call as f64).ceil()),
        log_bytes: per(log_bytes as f64 + sum(&invocations) * nf * platform_log_bytes()),
        invocations,
        sender_cpu_ms: per(cpu[1] * 1000.0),
        api_cpu_ms: per(cpu[0] * 1000.0),
        deliveries_per_s: nf / elapsed.as_secs_f64(),
        creates_per_s: nf / created_in.as_secs_f64(),
        create_ms: [ms(0.5), ms(0.95), ms(0.99)],
    };
    let calls = |caller: &str| -> String {
        let mut v: Vec<_> =
            meters.meter(caller).ops.lock().expect("lock").iter().map(|(k, v)| format!("{k}={v}")).collect();
        v.sort();
        v.join(" ")
    };
    println!("{}: {n} delivered in {:.1} s; AWS calls by caller:", scenario.name(), elapsed.as_secs_f64());
    for caller in CALLERS {
        println!("  {caller:<13} {}", calls(caller));
    }
    drop(local);
    Ok(u.rows(price))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(std::env::var("AWS_ENDPOINT_URL").is_ok(), "AWS_ENDPOINT_URL must point at the emulator");
    let prices: Value = serde_json::from_str(&std::fs::read_to_string(&args.prices)?)?;
    let price = |k: &str| prices[k].as_f64().unwrap_or(0.0);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let mut columns: Vec<(String, Rows)> = Vec::new();
    for s in [Scenario::Single, Scenario::Batch] {
        if args.scenarios.iter().any(|x| x == s.name()) {
            columns.push((s.name().to_owned(), run_scenario(s, &args, &bin_dir, &price).await?));
        }
    }
    println!("\n== per successful first-try delivery ({} tasks each; prices: {})", args.tasks, args.prices.display());
    print!("{}", table(&columns));

    let mut flows = serde_json::Map::new();
    if args.flows {
        let meters = Meters::start().await?;
        let esm_sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(meters.url("event sources"))
            .load()
            .await;
        let phase = FlowPhase {
            bin_dir: &bin_dir,
            esm_sdk: &esm_sdk,
            api_proxy: meters.url("api"),
            sender_proxy: meters.url("sender"),
        };
        flows = phase.run(args.flow_tasks, meters.meter("sender")).await?;
    }

    let spec = |name: &str| FunctionSpec {
        name: format!("bench-{name}"),
        binary: bin_dir.join(name),
        env: vec![
            ("COURIER_TABLE".into(), "t".into()),
            ("COURIER_QUEUE_URL".into(), "http://127.0.0.1:9/q".into()),
            ("COURIER_DLQ_URL".into(), "http://127.0.0.1:9/d".into()),
            ("COURIER_QUEUE_ARN".into(), "arn:aws:sqs:us-east-1:123456789012:q".into()),
            ("COURIER_SCHEDULE_GROUP".into(), "g".into()),
            ("COURIER_SCHEDULER_ROLE_ARN".into(), "arn:aws:iam::123456789012:role/r".into()),
        ],
        timeout: Duration::from_secs(10),
        instances: 1,
        log_file: Some(PathBuf::from(".local/bench-init.log")),
    };
    println!("\n== Lambda init (process start → first Runtime API /next, {} cold starts each)", args.init_samples);
    let mut init = serde_json::Map::new();
    for name in ["sender", "api"] {
        let t = init_times(spec(name), args.init_samples).await?;
        let (p50, p90) = (percentile(&t, 0.5).as_secs_f64() * 1e3, percentile(&t, 0.9).as_secs_f64() * 1e3);
        let min = t.first().copied().unwrap_or_default().as_secs_f64() * 1e3;
        println!("{name:<8} median {p50:>6.2} ms   p90 {p90:>6.2} ms   min {min:>6.2} ms");
        init.insert(format!("{name} median"), json!(p50));
        init.insert(format!("{name} p90"), json!(p90));
    }

    let report = json!({
        "tasks": args.tasks,
        "scenarios": columns.iter().map(|(name, rows)| (name.clone(), json!(rows))).collect::<serde_json::Map<_, _>>(),
        "init_ms": init,
        "flows": flows,
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nfigures written to {}", args.json.display());
    if let Some(old) = &args.compare {
        let old: Value = serde_json::from_str(&std::fs::read_to_string(old)?)?;
        println!("\n== compared with {}", args.compare.as_ref().map_or(String::new(), |p| p.display().to_string()));
        print!("{}", comparison(&old, &report));
    }
    Ok(())
}

/// What the flow-control phase shares with the cost run: the binaries and the counting proxies.
struct FlowPhase<'a> {
    bin_dir: &'a PathBuf,
    esm_sdk: &'a aws_config::SdkConfig,
    api_proxy: &'a str,
    sender_proxy: &'a str,
}

impl FlowPhase<'_> {
    /// Two senders, a 20/s policy on a loopback target, `n` tasks (at most
    /// 300 waiting): prints the overshoot in the worst 1-s window after the
    /// first second, the sustained rate over the middle 80 %, and the flow
    /// units the senders spent per delivery.
    async fn run(&self, n: usize, sender_m: &Meter) -> anyhow::Result<serde_json::Map<String, Value>> {
        const LIMIT: f64 = 20.0;
        let stack = format!("bench-flows-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let admin_key = format!("bench-admin-{}", uuid::Uuid::new_v4().simple());
        let mut opts = StackOptions::new(&stack, self.bin_dir);
        opts.log_file = Some(PathBuf::from(format!(".local/{stack}.log")));
        opts.scheduler_tick = None;
        opts.reconcile_every = None;
        opts.stream_counter = false;
        opts.sender_instances = 2;
        opts.extra_env.push(("COURIER_ADMIN_KEY_SHA256".into(), courier::domain::hash_key(&admin_key)));
        opts.function_env.insert("api".into(), endpoint_env(self.api_proxy));
        opts.function_env.insert("sender".into(), endpoint_env(self.sender_proxy));
        let local = LocalStack::start(self.esm_sdk, opts).await?;

        let arrivals = Arc::new(Mutex::new(Vec::<i64>::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = arrivals.clone();
        tokio::spawn(async move {
            let app = Router::new().fallback(move || {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push(courier::domain::now_millis());
                    "ok"
                }
            });
            axum::serve(listener, app).await
        });
        let http = reqwest::Client::new();
        let policy = http
            .put(format!("{}/v1/flows/{addr}", local.api_url))
            .bearer_auth(&admin_key)
            .json(&json!({"rate": "20/s"}))
            .send()
            .await?;
        anyhow::ensure!(policy.status().is_success(), "PUT /v1/flows/{addr} answered {}", policy.status());
        let tenant = http
            .post(format!("{}/v1/tenants", local.api_url))
            .bearer_auth(&admin_key)
            .json(&json!({"name": "bench-flows", "max_active_tasks": 10_000_000, "create_rate_per_second": 100_000}))
            .send()
            .await?
            .json::<Value>()
            .await?;
        let key = tenant["api_key"]["key"].as_str().ok_or_else(|| anyhow::anyhow!("no key: {tenant}"))?.to_owned();
        sender_m.reset();
        println!("\n== flow control: 2 senders, policy 20/s on the target, {n} tasks");
        let t0 = Instant::now();
        let mut created = 0;
        while created < n {
            let delivered = arrivals.lock().expect("lock").len();
            if created - delivered.min(created) + 100 > 300 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let k = (n - created).min(100);
            let tasks: Vec<Value> = (0..k)
                .map(|i| json!({"request": {"method": "POST", "url": format!("http://{addr}/f"), "json": {"n": created + i}}}))
                .collect();
            let resp = http
                .post(format!("{}/v1/tasks/batch", local.api_url))
                .bearer_auth(&key)
                .json(&json!({"tasks": tasks}))
                .send()
                .await?
                .json::<Value>()
                .await?;
            anyhow::ensure!(resp["created"] == k, "batch create failed: {resp}");
            created += k;
        }
        while arrivals.lock().expect("lock").len() < n {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "not every flow task was delivered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut at = arrivals.lock().expect("lock").clone();
        at.sort_unstable();
        let max_window = max_per_second(&at, at[0] + 1000);
        let nf = n as f64;
        let figures = [
            ("max requests in 1 s", max_window as f64),
            ("overshoot %", (max_window as f64 - LIMIT) / LIMIT * 100.0),
            ("sustained rate /s", sustained_rate(&at)),
            ("flow write units", *sender_m.flow_wcu.lock().expect("lock") / nf),
            ("flow read units", *sender_m.flow_rcu.lock().expect("lock") / nf),
            ("flow calls", sender_m.flow_calls.load(Ordering::Relaxed) as f64 / nf),
        ];
        println!("max requests in 1 s    {max_window:>8}  (after the first second)");
        println!("overshoot              {:>8.1} %", figures[1].1);
        println!("sustained rate         {:>8.2} /s  (middle 80 % of arrivals)", figures[2].1);
        println!(
            "flow write units       {:>8.3}  per delivery (flow read units {:.3}, flow calls {:.3})",
            figures[3].1, figures[4].1, figures[5].1
        );
        drop(local);
        Ok(figures.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_billed_at_the_templates_memory_with_cpu_at_their_vcpu_share() {
        assert_eq!((memory_mb("api"), memory_mb("sender"), memory_mb("counter")), (128.0, 256.0, 256.0));
        assert_eq!(platform_log_bytes(), 0.0, "the template drops START/REPORT lines");
        // 100 ms waiting and 1 ms of CPU: at 1,769 MB the CPU is already in the wall time.
        assert!((billed_gb_s(0.1, 0.001, FULL_VCPU_MB) - 0.1 * FULL_VCPU_MB / 1024.0).abs() < 1e-12);
        // At 128 MB that 1 ms takes 13.8 ms: 12.8 ms more are billed.
        let at_128 = billed_gb_s(0.1, 0.001, 128.0);
        assert!((at_128 - (0.1 + 0.001 * (FULL_VCPU_MB / 128.0 - 1.0)) * 0.125).abs() < 1e-12, "{at_128}");
    }

    #[test]
    fn item_sizes_follow_dynamodb_rules() {
        let item = json!({"pk": {"S": "TASK#1"}, "n": {"N": "12345"}, "b": {"BOOL": true}});
        // pk: 2 + 6; n: 1 + (5 digits → 3 + 1); b: 1 + 1
        assert_eq!(item_size(&item), 8 + 5 + 2);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(100, false), 0.5);
        assert_eq!(index_writes(&json!({"gsi1pk": {}, "gsi1sk": {}, "recon_pk": {}, "recon_at": {}})), 2.0);
    }

    #[test]
    fn scenarios_print_side_by_side_and_compare_with_an_earlier_run() {
        let u = Usage {
            wcu: vec![("api".into(), 2.0), ("sender".into(), 2.0)],
            rcu: vec![("api".into(), 1.0)],
            sqs: vec![("api".into(), 1.0)],
            invocations: vec![("api".into(), 1.0), ("sender".into(), 0.1)],
            api_gateway: 1.0,
            ..Default::default()
        };
        let prices = json!({"dynamodb_per_million_write_request_units": 0.625, "api_gateway_http_per_million_requests": 1.0,
                            "sqs_per_million_requests": 0.4, "dynamodb_per_million_read_request_units": 0.125,
                            "lambda_per_million_requests": 0.2});
        let price = |k: &str| prices[k].as_f64().unwrap_or(0.0);
        let rows = u.rows(&price);
        let get = |label: &str| rows.iter().find(|(l, _)| l == label).map(|(_, v)| *v);
        assert_eq!(get("DynamoDB write units"), Some(4.0));
        assert_eq!(get("  sender"), Some(2.0));
        let total = 4.0 * 0.625 + 0.125 + 0.4 + 1.1 * 0.2 + 1.0;
        assert!((get("$/M total").expect("total") - total).abs() < 1e-9);
        let t = table(&[("single".into(), rows.clone()), ("batch".into(), rows.clone())]);
        assert!(t.lines().any(|l| l.starts_with("DynamoDB write units") && l.matches("4.0000").count() == 2), "{t}");
        let new = json!({"scenarios": {"single": rows}, "init_ms": {"sender median": 8.0}});
        let mut old = new.clone();
        old["scenarios"]["single"][0][1] = json!(8.0);
        old["init_ms"]["sender median"] = json!(16.0);
        let c = comparison(&old, &new);
        assert!(c.lines().any(|l| l.starts_with("DynamoDB write units") && l.ends_with("-50 %")), "{c}");
        assert!(c.contains("sender median"), "{c}");
    }

    #[test]
    fn flow_calls_are_the_ones_on_flow_items() {
        assert!(is_flow_call(&json!({"Key": {"pk": {"S": "FLOW#h:a.example:443"}, "sk": {"S": "STATE"}}})));
        assert!(is_flow_call(&json!({"Item": {"pk": {"S": "FLOWS"}, "sk": {"S": "POL#x#ADMIN"}}})));
        assert!(is_flow_call(
            &json!({"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "FLOWS"}}})
        ));
        assert!(!is_flow_call(&json!({"Key": {"pk": {"S": "TASK#tsk_1"}, "sk": {"S": "TASK"}}})));
        assert!(!is_flow_call(&json!({"TransactItems": [{"Update": {"Key": {"pk": {"S": "TENANT#t"}}}}]})));
    }
}
