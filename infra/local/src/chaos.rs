//! The chaos scenario: tasks created by concurrent clients, each with an
//! `Idempotency-Key` and retrying with the same key on 5xx, 429 and
//! connection errors, while a share of the functions' AWS calls fail (a
//! [`FaultProxy`] in front of the emulator) and the sender's processes are
//! SIGKILLed every few seconds and started again. A loopback receiver
//! records every request (task id, attempt, arrival, answer).
//!
//! It passes when every create that got a 2xx ends `succeeded` with at least
//! one request received, there are as many tasks as keys, nothing is stuck
//! once the reconciler (1 s grace, invoked every few seconds) has had its
//! turn, and every task received more than once is explained by a kill
//! during that very attempt. `make chaos` runs it long and prints the
//! figures; the integration suite runs it short.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use axum::Router;
use axum::extract::{Request, State};
use courier::domain::{EpochMillis, now_millis};
use serde_json::{Value, json};

use crate::fault_proxy::{Fault, FaultPlan, FaultProxy, Service, ServiceStats};
use crate::stack::{LocalStack, StackOptions, scheduled_event};

/// How to run the scenario.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub stack: String,
    /// Where the `api`, `sender` and `reconciler` binaries are.
    pub bin_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// The emulator the fault proxy forwards to.
    pub upstream: String,
    pub tasks: usize,
    /// Concurrent creating clients.
    pub clients: usize,
    /// Share of the functions' AWS calls that fail.
    pub fault_share: f64,
    pub seed: u64,
    /// Time between two kills of the sender.
    pub kill_every: Duration,
    /// How long the kills go on once every create is answered.
    pub kill_after_creates: Duration,
    /// Created but not yet received, at most (the emulator slows on deep queues).
    pub max_in_flight: usize,
    /// How long the tasks may take to settle once all are created.
    pub settle: Duration,
    /// How often the reconciler is invoked (its grace is 1 s).
    pub reconcile_every: Duration,
    /// Print a progress line this often (`None`: quiet).
    pub progress: Option<Duration>,
}

impl ChaosOptions {
    pub fn new(stack: impl Into<String>, bin_dir: impl Into<PathBuf>, upstream: impl Into<String>) -> Self {
        Self {
            stack: stack.into(),
            bin_dir: bin_dir.into(),
            log_file: None,
            upstream: upstream.into(),
            tasks: 100,
            clients: 8,
            fault_share: 0.1,
            seed: 1,
            kill_every: Duration::from_secs(3),
            kill_after_creates: Duration::from_secs(10),
            max_in_flight: 150,
            settle: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(2),
            progress: None,
        }
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub task: String,
    pub attempt: u32,
    pub arrived: EpochMillis,
    pub answered: EpochMillis,
}

/// A task received more than once, and why.
#[derive(Clone, Debug)]
pub struct Duplicate {
    pub task: String,
    pub requests: Vec<Arrival>,
    /// One line per extra request: the kill that explains it, or `None`.
    pub causes: Vec<Option<String>>,
}

impl Duplicate {
    pub fn explained(&self) -> bool {
        self.causes.iter().all(Option::is_some)
    }
}

/// What the scenario saw.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Keys whose create got a 2xx.
    pub created: usize,
    /// Keys given up on (no 2xx after every try).
    pub create_gave_up: usize,
    /// Create calls answered 5xx/429 or failed to connect (then retried).
    pub create_retries: usize,
    /// Keys answered with two different task ids.
    pub key_conflicts: Vec<String>,
    /// Tasks of the tenant in the table.
    pub tasks_in_table: usize,
    /// Created tasks that ended `succeeded` with at least one request received.
    pub delivered: usize,
    pub requests: usize,
    pub duplicates: Vec<Duplicate>,
    /// Created tasks not `succeeded` at the end, with their status, or succeeded with no request.
    pub stuck: Vec<(String, String)>,
    pub kills: usize,
    pub elapsed: Duration,
    /// Time until the last create was answered.
    pub create_elapsed: Duration,
    pub aws: BTreeMap<Service, ServiceStats>,
}

impl ChaosReport {
    /// The scenario's pass condition.
    pub fn passed(&self) -> bool {
        self.created > 0
            && self.create_gave_up == 0
            && self.key_conflicts.is_empty()
            && self.tasks_in_table == self.created
            && self.delivered == self.created
            && self.stuck.is_empty()
            && self.duplicates.iter().all(Duplicate::explained)
    }

    /// The figures, as `make chaos` prints them.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let explained = self.duplicates.iter().filter(|d| d.explained()).count();
        let _ = writeln!(
            o,
            "created      {:>6}  (keys with a 2xx; {} create calls retried)",
            self.created, self.create_retries
        );
        let _ = writeln!(o, "tasks        {:>6}  (in the table; distinct keys {})", self.tasks_in_table, self.created);
        let _ = writeln!(
            o,
            "delivered    {:>6}  (succeeded, ≥ 1 request received; {} requests)",
            self.delivered, self.requests
        );
        let _ = writeln!(
            o,
            "duplicates   {:>6}  ({} explained by a sender killed during that attempt)",
            self.duplicates.len(),
            explained
        );
        let _ = writeln!(o, "stuck        {:>6}", self.stuck.len());
        let _ = writeln!(
            o,
            "elapsed      {:>8.1} s  (creates done after {:.1} s; {} sender kills)",
            self.elapsed.as_secs_f64(),
            self.create_elapsed.as_secs_f64(),
            self.kills
        );
        let _ = writeln!(o, "AWS calls of the functions (failed / total, by fault):");
        for (s, st) in &self.aws {
            let kinds: Vec<String> = Fault::ALL
                .iter()
                .map(|f| format!("{} {}", f.as_str(), st.faults.get(f).copied().unwrap_or(0)))
                .collect();
            let pct = if st.calls == 0 { 0.0 } else { 100.0 * st.faulted() as f64 / st.calls as f64 };
            let _ = writeln!(
                o,
                "  {:<10} {:>6} / {:<7} ({pct:>4.1} %)  {}",
                s.as_str(),
                st.faulted(),
                st.calls,
                kinds.join(", ")
            );
        }
        for d in &self.duplicates {
            let _ = writeln!(o, "duplicate {}: {} requests", d.task, d.requests.len());
            for (r, cause) in d.requests.iter().zip(&d.causes) {
                let _ = writeln!(
                    o,
                    "  attempt {} arrived {} answered {}: {}",
                    r.attempt,
                    r.arrived,
                    r.answered,
                    cause.as_deref().unwrap_or("UNEXPLAINED")
                );
            }
        }
        for (id, status) in &self.stuck {
            let _ = writeln!(o, "stuck {id}: {status}");
        }
        for k in &self.key_conflicts {
            let _ = writeln!(o, "key answered with two tasks: {k}");
        }
        let _ = writeln!(o, "{}", if self.passed() { "PASS" } else { "FAIL" });
        o
    }
}

#[derive(Default)]
struct Receiver {
    arrivals: Mutex<Vec<Arrival>>,
    tasks: Mutex<HashSet<String>>,
    seed: Mutex<Option<fastrand::Rng>>,
}

async fn receive(State(r): State<Arc<Receiver>>, req: Request) -> &'static str {
    let arrived = now_millis();
    let (task, attempt) = {
        let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (h("courier-task-id"), h("courier-attempt").parse().unwrap_or(0))
    };
    drop(req);
    // 20–300 ms per answer, so kills land during requests.
    let delay = r.seed.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map_or(50, |g| g.u64(20..300));
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let answered = now_millis();
    r.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(task.clone());
    r.arrivals.lock().unwrap_or_else(|p| p.into_inner()).push(Arrival { task, attempt, arrived, answered });
    "ok"
}

/// Runs the scenario. `sdk` reaches the emulator directly (no faults): the
/// local event source and the checks use it.
pub async fn run(sdk: &aws_config::SdkConfig, opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let proxy = FaultProxy::start(&opts.upstream, FaultPlan::uniform(opts.fault_share, opts.seed)).await?;
    proxy.set_enabled(false);
    let admin_key = format!("chaos-admin-{}", uuid::Uuid::new_v4().simple());
    let mut so = StackOptions::new(&opts.stack, &opts.bin_dir);
    so.log_file = opts.log_file.clone();
    so.scheduler_tick = None;
    // One process serves one API request at a time, as on Lambda.
    so.api_instances = opts.clients.clamp(1, 4);
    so.reconcile_every = None; // invoked below
    so.stream_counter = false; // off the delivery path
    so.extra_env.extend([
        ("COURIER_ADMIN_KEY_SHA256".to_owned(), courier::domain::hash_key(&admin_key)),
        // A dead sender's lease ends 3 s after its claim (timeout 1 s + 2 s).
        ("COURIER_LEASE_MARGIN_MS".to_owned(), "2000".to_owned()),
        ("COURIER_RECONCILE_GRACE_S".to_owned(), "1".to_owned()),
        ("COURIER_TARGET_POLICY".to_owned(), "local-only".to_owned()),
    ]);
    for f in ["api", "sender", "reconciler"] {
        so.function_env.insert(f.into(), vec![("AWS_ENDPOINT_URL".into(), proxy.url.clone())]);
    }
    let local = Arc::new(LocalStack::start(sdk, so).await?);

    let receiver =
        Arc::new(Receiver { seed: Mutex::new(Some(fastrand::Rng::with_seed(opts.seed))), ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("http://{}", listener.local_addr()?);
    let recv_server = tokio::spawn({
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        async move { axum::serve(listener, app).await }
    });

    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let tenant = http
        .post(format!("{}/v1/tenants", local.api_url))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "chaos", "max_active_tasks": 1_000_000, "create_rate_per_second": 100_000}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let key = tenant["api_key"]["key"].as_str().ok_or_else(|| anyhow::anyhow!("no tenant key: {tenant}"))?.to_owned();
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_owned();

    let t0 = Instant::now();
    proxy.set_enabled(true);
    let kills: Arc<Mutex<Vec<EpochMillis>>> = Arc::default();
    let killer = tokio::spawn({
        let (local, kills, every) = (local.clone(), kills.clone(), opts.kill_every);
        async move {
            loop {
                tokio::time::sleep(every).await;
                kills.lock().unwrap_or_else(|p| p.into_inner()).push(now_millis());
                local.sender.kill();
                if let Err(e) = local.sender.respawn() {
                    tracing::error!(error = %e, "sender respawn failed");
                }
            }
        }
    });
    let reconciler = tokio::spawn({
        let (local, every) = (local.clone(), opts.reconcile_every);
        async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = local.reconciler.invoke(&scheduled_event("chaos-reconcile")).await;
            }
        }
    });

    let progress = opts.progress.map(|every| {
        let (receiver, kills) = (receiver.clone(), kills.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let requests = receiver.arrivals.lock().unwrap_or_else(|p| p.into_inner()).len();
                let tasks = receiver.tasks.lock().unwrap_or_else(|p| p.into_inner()).len();
                let kills = kills.lock().unwrap_or_else(|p| p.into_inner()).len();
                println!(
                    "  {:>6.0} s: {tasks} tasks received ({requests} requests), {kills} kills",
                    t0.elapsed().as_secs_f64()
                );
            }
        })
    });
    // Clients: each takes the next key and creates until it gets a 2xx.
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<HashMap<usize, Vec<String>>>> = Arc::default();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut clients = Vec::new();
    for _ in 0..opts.clients.max(1) {
        let (http, next, retries, answers, receiver) =
            (http.clone(), next.clone(), retries.clone(), answers.clone(), receiver.clone());
        let (api, key, target, run_id, n, max_in_flight) =
            (local.api_url.clone(), key.clone(), target.clone(), run_id.clone(), opts.tasks, opts.max_in_flight);
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                while i.saturating_sub(receiver.tasks.lock().unwrap_or_else(|p| p.into_inner()).len()) > max_in_flight {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let body = json!({"request": {"method": "POST", "url": format!("{target}/t/{i}"), "json": {"i": i}, "timeout_ms": 1000}});
                let idem = format!("chaos-{run_id}-{i}");
                let mut wait = Duration::from_millis(100);
                for _ in 0..40 {
                    let (status, id) = create_once(&http, &api, &key, &idem, &body).await;
                    if let Some(id) = id {
                        answers.lock().unwrap_or_else(|p| p.into_inner()).entry(i).or_default().push(id);
                        // Every tenth key asks once more: the same key must name the same task.
                        if i % 10 == 0
                            && let (_, Some(again)) = create_once(&http, &api, &key, &idem, &body).await
                        {
                            answers.lock().unwrap_or_else(|p| p.into_inner()).entry(i).or_default().push(again);
                        }
                        break;
                    }
                    if status != 0 && status < 500 && status != 429 && !(200..300).contains(&status) {
                        tracing::error!(status, key = %idem, "create refused");
                        break;
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }));
    }
    for c in clients {
        c.await?;
    }
    let create_elapsed = t0.elapsed();
    let ids: HashMap<usize, Vec<String>> = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let created: HashSet<String> = ids.values().filter_map(|v| v.first().cloned()).collect();

    // Settle: wait until every created task is received and succeeded, kills
    // and faults going on for a while, then stopped.
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let table = local.outputs.names.table.clone();
    let settle_end = Instant::now() + opts.settle;
    // Kills go on a little past the creates, then stop so what is left can finish.
    let calm_at = Instant::now() + opts.kill_after_creates;
    let mut calm = false;
    let mut statuses;
    loop {
        statuses = read_statuses(&ddb, &table, &created).await?;
        let received = receiver.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let done =
            created.iter().all(|id| statuses.get(id).map(String::as_str) == Some("succeeded") && received.contains(id));
        if done || Instant::now() >= settle_end {
            break;
        }
        if !calm && Instant::now() >= calm_at {
            killer.abort();
            calm = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = t0.elapsed();
    killer.abort();
    reconciler.abort();
    if let Some(p) = progress {
        p.abort();
    }
    proxy.set_enabled(false);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let arrivals = receiver.arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let received: HashSet<String> = arrivals.iter().map(|a| a.task.clone()).collect();
    let kills = kills.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut report = ChaosReport {
        created: ids.len(),
        create_gave_up: opts.tasks - ids.len(),
        create_retries: retries.load(Ordering::Relaxed),
        requests: arrivals.len(),
        kills: kills.len(),
        elapsed,
        create_elapsed,
        ..Default::default()
    };
    for (i, got) in &ids {
        if got.iter().any(|id| id != &got[0]) {
            report.key_conflicts.push(format!("key {i}: {got:?}"));
        }
    }
    report.tasks_in_table = count_tenant_tasks(&ddb, &table, &tenant_id).await?;
    for id in &created {
        let status = statuses.get(id).cloned().unwrap_or_else(|| "missing".into());
        if status == "succeeded" && received.contains(id) {
            report.delivered += 1;
        } else {
            report.stuck.push((
                id.clone(),
                format!("{status}, {} requests", arrivals.iter().filter(|a| &a.task == id).count()),
            ));
        }
    }
    let mut by_task: BTreeMap<String, Vec<Arrival>> = BTreeMap::new();
    for a in arrivals {
        by_task.entry(a.task.clone()).or_default().push(a);
    }
    for (task, mut reqs) in by_task {
        if reqs.len() < 2 {
            continue;
        }
        reqs.sort_by_key(|r| r.arrived);
        let outcomes = attempt_outcomes(&ddb, &table, &task).await.unwrap_or_default();
        let mut causes: Vec<Option<String>> = Vec::new();
        for (k, r) in reqs.iter().enumerate() {
            let Some(next) = reqs.get(k + 1) else {
                causes.push(Some("the delivery that counted".into()));
                continue;
            };
            let recorded = outcomes.get(&r.attempt).cloned().unwrap_or_else(|| "no record".into());
            let kill = kills.iter().find(|t| **t >= r.arrived && **t <= next.arrived);
            causes.push(kill.map(|t| {
                let step = if recorded == "success" {
                    "after its attempt record, before the task's status change"
                } else {
                    "before its attempt was recorded"
                };
                let when = if *t <= r.answered {
                    format!("during the request, {} ms after it arrived", t - r.arrived)
                } else {
                    format!("{} ms after the answer, {step}", t - r.answered)
                };
                format!("sender killed {when}; attempt {} recorded as {recorded}", r.attempt)
            }));
        }
        report.duplicates.push(Duplicate { task, requests: reqs, causes });
    }
    report.aws = proxy.stats();
    recv_server.abort();
    Ok(report)
}

/// One create call: its status (0: no answer) and the task id of a 2xx answer.
async fn create_once(http: &reqwest::Client, api: &str, key: &str, idem: &str, body: &Value) -> (u16, Option<String>) {
    let res =
        http.post(format!("{api}/v1/tasks")).bearer_auth(key).header("idempotency-key", idem).json(body).send().await;
    let Ok(r) = res else { return (0, None) };
    let status = r.status().as_u16();
    if !r.status().is_success() {
        return (status, None);
    }
    let id = r.json::<Value>().await.ok().and_then(|v| v["id"].as_str().map(str::to_owned));
    (status, id)
}

/// The status of each task, read directly (not through the faults).
async fn read_statuses(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    ids: &HashSet<String>,
) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let ids: Vec<&String> = ids.iter().collect();
    for chunk in ids.chunks(100) {
        let keys: Vec<HashMap<String, AttributeValue>> = chunk
            .iter()
            .map(|id| {
                HashMap::from([
                    ("pk".to_owned(), AttributeValue::S(format!("TASK#{id}"))),
                    ("sk".to_owned(), AttributeValue::S("STATE".into())),
                ])
            })
            .collect();
        let mut req = Some(
            aws_sdk_dynamodb::types::KeysAndAttributes::builder().set_keys(Some(keys)).consistent_read(true).build()?,
        );
        while let Some(r) = req.take() {
            let res = ddb.batch_get_item().request_items(table, r).send().await?;
            for item in res.responses.unwrap_or_default().remove(table).unwrap_or_default() {
                let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                out.insert(s("pk").trim_start_matches("TASK#").to_owned(), s("status"));
            }
            req = res.unprocessed_keys.unwrap_or_default().remove(table);
        }
    }
    Ok(out)
}

/// Tasks of one tenant in the table (state items), by a direct scan.
async fn count_tenant_tasks(ddb: &aws_sdk_dynamodb::Client, table: &str, tenant: &str) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut start = None;
    loop {
        let res = ddb
            .scan()
            .table_name(table)
            .filter_expression("sk = :state AND tenant = :t")
            .expression_attribute_values(":state", AttributeValue::S("STATE".into()))
            .expression_attribute_values(":t", AttributeValue::S(tenant.into()))
            .set_exclusive_start_key(start)
            .send()
            .await?;
        count += res.count as usize;
        start = res.last_evaluated_key;
        if start.is_none() {
            return Ok(count);
        }
    }
}

/// Each recorded attempt's outcome, by number.
async fn attempt_outcomes(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    task: &str,
) -> anyhow::Result<HashMap<u32, String>> {
    let res = ddb
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :a)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("TASK#{task}")))
        .expression_attribute_values(":a", AttributeValue::S("ATTEMPT#".into()))
        .consistent_read(true)
        .send()
        .await?;
    let mut out = HashMap::new();
    for item in res.items.unwrap_or_default() {
        let Some(doc) = item.get("attempt").and_then(|v| v.as_s().ok()) else { continue };
        let v: Value = serde_json::from_str(doc).unwrap_or(Value::Null);
        if let Some(n) = v["number"].as_u64() {
            out.insert(n as u32, v["outcome"].as_str().unwrap_or("?").to_owned());
        }
    }
    Ok(out)
}
