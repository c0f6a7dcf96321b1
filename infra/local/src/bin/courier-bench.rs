//! `make bench`: what one delivery costs and how fast the local stack goes.
//!
//! Creates N tasks (batch create, 100 per call) against a loopback target and
//! measures, per successful first-try delivery: DynamoDB write and read units
//! (counted from the real requests and the sizes of the items they touch),
//! SQS requests, Scheduler calls, Lambda invocations and time, log bytes, and
//! the list-price cost per million deliveries (prices: `infra/prices.json`);
//! plus deliveries/s and the sender's CPU time per delivery. Every AWS call of
//! the functions and of the local event source goes through a counting proxy
//! in front of the emulator. Then it measures the release sender's Lambda init
//! time (process start to its first Runtime API `/next`).
//!
//! `--flows` adds flow control's figures: the DynamoDB units spent on flow
//! items (key `pk` starting with `FLOW`) per delivery without a policy, and
//! a phase with two senders and a 20/s policy on the target: overshoot over
//! the limit in the worst 1-s window, sustained rate, flow units per delivery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use courier_local::arrivals::{max_per_second, sustained_rate};
use courier_local::runtime::{FunctionHost, FunctionSpec};
use courier_local::stack::{LocalStack, StackOptions};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Courier's cost and speed benchmark (needs AWS_ENDPOINT_URL: the emulator)")]
struct Args {
    /// Tasks to create and deliver.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// Created but not yet delivered, at most (the emulator slows down on deep queues).
    #[arg(long, default_value_t = 300)]
    max_in_flight: usize,
    /// Directory of the release `api`, `sender` and `reconciler` binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Cold starts measured for the init time.
    #[arg(long, default_value_t = 40)]
    init_samples: usize,
    #[arg(long, default_value = "infra/prices.json")]
    prices: PathBuf,
    /// Also run the flow-control phase (2 senders, a 20/s policy on the target).
    #[arg(long)]
    flows: bool,
    /// Tasks of the flow-control phase.
    #[arg(long, default_value_t = 600)]
    flow_tasks: usize,
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

struct Proxy {
    upstream: String,
    http: reqwest::Client,
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

impl Proxy {
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

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let op = match &target {
        Some(t) => t.replace("DynamoDB_20120810.", "dynamodb:").replace("AmazonSQS.", "sqs:"),
        // Scheduler speaks REST: the method and the path's first segment.
        None => format!("scheduler:{} /{}", parts.method, parts.uri.path().split('/').nth(1).unwrap_or_default()),
    };
    *p.meter.ops.lock().expect("lock").entry(op.clone()).or_default() += 1;
    let url = format!("{}{}", p.upstream, parts.uri.path_and_query().map_or("/", |q| q.as_str()));
    let mut fwd = p.http.request(parts.method.clone(), url).body(body.clone());
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let Ok(resp) = fwd.send().await else { return axum::http::StatusCode::BAD_GATEWAY.into_response() };
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    if let Some(ddb_op) = op.strip_prefix("dynamodb:") {
        let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let resp_json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        p.bill_dynamodb(ddb_op, &req_json, &resp_json);
    }
    let mut out = Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if k != "content-length" && k != "transfer-encoding" {
            out.headers_mut().append(k, v.clone());
        }
    }
    out
}

async fn start_proxy(upstream: &str, meter: Arc<Meter>, sizes: Sizes) -> anyhow::Result<String> {
    let proxy = Arc::new(Proxy { upstream: upstream.to_owned(), http: reqwest::Client::new(), meter, sizes });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(forward).with_state(proxy)).await });
    Ok(url)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .map_err(|_| anyhow::anyhow!("AWS_ENDPOINT_URL must point at the emulator"))?;
    let prices: Value = serde_json::from_str(&std::fs::read_to_string(&args.prices)?)?;
    let price = |k: &str| prices[k].as_f64().unwrap_or(0.0);
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let sizes: Sizes = Arc::default();
    let (api_m, sender_m, esm_m) = (Arc::new(Meter::default()), Arc::new(Meter::default()), Arc::new(Meter::default()));
    let api_proxy = start_proxy(&upstream, api_m.clone(), sizes.clone()).await?;
    let sender_proxy = start_proxy(&upstream, sender_m.clone(), sizes.clone()).await?;
    let esm_proxy = start_proxy(&upstream, esm_m.clone(), sizes.clone()).await?;
    let esm_sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(&esm_proxy).load().await;

    let stack = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::create_dir_all(".local")?;
    let log = PathBuf::from(format!(".local/{stack}.log"));
    let admin_key = format!("bench-admin-{}", uuid::Uuid::new_v4().simple());
    let mut opts = StackOptions::new(&stack, &bin_dir);
    opts.log_file = Some(log.clone());
    opts.scheduler_tick = None;
    opts.reconcile_every = None;
    // The stream counter is off the delivery path (one small transaction per
    // stream batch on AWS); the emulator's transactions copy the whole table,
    // which would make it dominate this run.
    opts.stream_counter = false;
    opts.extra_env.push(("COURIER_ADMIN_KEY_SHA256".into(), courier::domain::hash_key(&admin_key)));
    opts.extra_env.push(("RUST_LOG".into(), "info".into()));
    opts.function_env.insert("api".into(), vec![("AWS_ENDPOINT_URL".into(), api_proxy.clone())]);
    opts.function_env.insert("sender".into(), vec![("AWS_ENDPOINT_URL".into(), sender_proxy.clone())]);
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
    let admin = http
        .post(format!("{}/v1/tenants", local.api_url))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "bench", "max_active_tasks": 10_000_000, "create_rate_per_second": 100_000}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let key = admin["api_key"]["key"].as_str().ok_or_else(|| anyhow::anyhow!("no key: {admin}"))?.to_owned();
    let create = |n: usize| {
        let tasks: Vec<Value> =
            (0..n).map(|i| json!({"request": {"method": "POST", "url": target, "json": {"n": i}}})).collect();
        http.post(format!("{}/v1/tasks/batch", local.api_url)).bearer_auth(&key).json(&json!({"tasks": tasks})).send()
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
    create(20).await?;
    anyhow::ensure!(wait_for(20, Duration::from_secs(60)).await, "warm-up tasks were not delivered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in [&api_m, &sender_m, &esm_m] {
        m.reset();
    }
    let base = received.load(Ordering::Relaxed);
    let cpu0: Duration = local.sender.pids().into_iter().map(cpu_time).sum();
    let (inv0, busy0) = local.sender.usage();
    let (api_inv0, api_busy0) = local.api.usage();
    let log0 = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let n = args.tasks;
    println!("creating and delivering {n} tasks (batches of 100, at most {} in flight)…", args.max_in_flight);
    let t0 = Instant::now();
    let mut created = 0;
    while created < n {
        let delivered = received.load(Ordering::Relaxed) - base;
        if created - delivered.min(created) + 100 > args.max_in_flight {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let k = (n - created).min(100);
        let resp = create(k).await?.json::<Value>().await?;
        anyhow::ensure!(resp["created"] == k, "batch create failed: {resp}");
        created += k;
    }
    anyhow::ensure!(wait_for(base + n, Duration::from_secs(600)).await, "not every task was delivered");
    let elapsed = t0.elapsed();
    // Let the last finishes land.
    let mut last = sender_m.count("dynamodb:");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sender_m.count("dynamodb:");
        if now == last {
            break;
        }
        last = now;
    }
    let cpu = local.sender.pids().into_iter().map(cpu_time).sum::<Duration>().saturating_sub(cpu0);
    let (inv, busy) = local.sender.usage();
    let (api_inv, api_busy) = local.api.usage();
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0).saturating_sub(log0);
    let nf = n as f64;

    let per = |x: f64| x / nf;
    let wcu_api = per(*api_m.wcu.lock().expect("lock"));
    let wcu_sender = per(*sender_m.wcu.lock().expect("lock"));
    let rcu_api = per(*api_m.rcu.lock().expect("lock"));
    let rcu_sender = per(*sender_m.rcu.lock().expect("lock"));
    let sqs_api = per(api_m.count("sqs:") as f64);
    let sqs_sender = per(sender_m.count("sqs:") as f64);
    let sqs_esm_work = per((esm_m.op("sqs:DeleteMessageBatch") + esm_m.op("sqs:ReceiveMessage")) as f64);
    let scheduler = per((api_m.count("scheduler:") + sender_m.count("scheduler:")) as f64);
    let lambda_requests = per((inv - inv0 + api_inv - api_inv0) as f64);
    let gb_s = per(((busy - busy0) + (api_busy - api_busy0)).as_secs_f64()) * price("lambda_memory_gb");
    let api_calls = (n as f64 / 100.0).ceil() / nf;

    let million = 1_000_000.0;
    let costs = [
        ("DynamoDB writes", (wcu_api + wcu_sender) * price("dynamodb_per_million_write_request_units")),
        ("DynamoDB reads", (rcu_api + rcu_sender) * price("dynamodb_per_million_read_request_units")),
        ("SQS requests", (sqs_api + sqs_sender + sqs_esm_work) * price("sqs_per_million_requests")),
        ("Scheduler", scheduler * price("scheduler_per_million_invocations")),
        ("Lambda requests", lambda_requests * price("lambda_per_million_requests")),
        ("Lambda compute", gb_s * million * price("lambda_arm64_per_gb_second")),
        ("API Gateway", api_calls * price("api_gateway_http_per_million_requests")),
        ("CloudWatch Logs", per(log_bytes as f64) * million / 1e9 * price("cloudwatch_logs_per_gb_ingested")),
    ];
    let total: f64 = costs.iter().map(|(_, c)| c).sum();

    println!("\n== per successful first-try delivery ({n} tasks, batch create)");
    println!("DynamoDB write units   {:>8.3}  (API {wcu_api:.3}, sender {wcu_sender:.3})", wcu_api + wcu_sender);
    println!("DynamoDB read units    {:>8.3}  (API {rcu_api:.3}, sender {rcu_sender:.3})", rcu_api + rcu_sender);
    println!(
        "flow write units       {:>8.3}  (no policy; flow read units {:.3})",
        per(*sender_m.flow_wcu.lock().expect("lock")),
        per(*sender_m.flow_rcu.lock().expect("lock"))
    );
    println!(
        "SQS requests           {:>8.3}  (API {sqs_api:.3}, sender {sqs_sender:.3}, event source receive+delete {sqs_esm_work:.3})",
        sqs_api + sqs_sender + sqs_esm_work
    );
    println!("Scheduler calls        {scheduler:>8.3}");
    println!("Lambda invocations     {lambda_requests:>8.3}  ({:.4} GB-s)", gb_s);
    println!("log bytes              {:>8.0}", per(log_bytes as f64));
    println!("sender CPU time        {:>8.3} ms", per(cpu.as_secs_f64() * 1000.0));
    println!("\n== cost per million deliveries (list prices, {})", args.prices.display());
    for (name, cost) in costs {
        println!("{name:<22} ${cost:>8.4}");
    }
    println!("{:<22} ${total:>8.4}", "total");
    println!("\n== speed (emulator-bound: moto serves every AWS call on one core)");
    println!("deliveries/s           {:>8.1}  ({n} in {:.1} s)", nf / elapsed.as_secs_f64(), elapsed.as_secs_f64());
    let sender_ops: Vec<(String, u64)> = {
        let mut v: Vec<_> = sender_m.ops.lock().expect("lock").iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    };
    println!(
        "sender calls           {}",
        sender_ops.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    );
    drop(local);

    if args.flows {
        let phase =
            FlowPhase { bin_dir: &bin_dir, esm_sdk: &esm_sdk, api_proxy: &api_proxy, sender_proxy: &sender_proxy };
        phase.run(args.flow_tasks, &sender_m).await?;
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
    for name in ["sender", "api"] {
        let t = init_times(spec(name), args.init_samples).await?;
        println!(
            "{name:<8} median {:>6.2} ms   p90 {:>6.2} ms   min {:>6.2} ms",
            percentile(&t, 0.5).as_secs_f64() * 1e3,
            percentile(&t, 0.9).as_secs_f64() * 1e3,
            t.first().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
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
    async fn run(&self, n: usize, sender_m: &Meter) -> anyhow::Result<()> {
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
        opts.function_env.insert("api".into(), vec![("AWS_ENDPOINT_URL".into(), self.api_proxy.to_owned())]);
        opts.function_env.insert("sender".into(), vec![("AWS_ENDPOINT_URL".into(), self.sender_proxy.to_owned())]);
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
        println!("max requests in 1 s    {max_window:>8}  (after the first second)");
        println!("overshoot              {:>8.1} %", (max_window as f64 - LIMIT) / LIMIT * 100.0);
        println!("sustained rate         {:>8.2} /s  (middle 80 % of arrivals)", sustained_rate(&at));
        println!(
            "flow write units       {:>8.3}  per delivery (flow read units {:.3}, flow calls {:.3})",
            *sender_m.flow_wcu.lock().expect("lock") / nf,
            *sender_m.flow_rcu.lock().expect("lock") / nf,
            sender_m.flow_calls.load(Ordering::Relaxed) as f64 / nf
        );
        drop(local);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
