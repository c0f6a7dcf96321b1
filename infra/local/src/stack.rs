//! Everything of a local Courier started together: resources bootstrapped on
//! the emulator, the API function behind a local API Gateway front, the sender
//! behind the SQS event-source bridge, and the Scheduler bridge (and, for the
//! IAM check, a recording proxy in front of each function's AWS calls).
//! Dropping a [`LocalStack`] stops all of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use tokio::task::JoinHandle;

use crate::bootstrap::{Outputs, bootstrap_with_redrive};
use crate::event_source::{self, Mapping};
use crate::proxy::{RunningProxy, SERVICES, Upstreams};
use crate::runtime::{FunctionHost, FunctionSpec};
use crate::scheduler;

/// How to start a local stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Resource name prefix (`<stack>-tasks`, …).
    pub stack: String,
    /// Where the `api` and `sender` binaries are.
    pub bin_dir: PathBuf,
    /// Where the API front listens (`127.0.0.1:0` for any free port).
    pub api_addr: SocketAddr,
    pub api_instances: usize,
    pub sender_instances: usize,
    /// Concurrent pollers of the event-source bridge (0: none; drive it yourself).
    pub pollers: usize,
    pub batch_size: i32,
    /// Functions' log output; `None` inherits the terminal.
    pub log_file: Option<PathBuf>,
    /// Extra function environment (overrides).
    pub extra_env: Vec<(String, String)>,
    /// Environment for one function only (by name: `api`, `sender`, `reconciler`), applied last.
    pub function_env: std::collections::HashMap<String, Vec<(String, String)>>,
    /// Scheduler bridge period (`None`: no bridge).
    pub scheduler_tick: Option<Duration>,
    /// How often the reconciler runs, as EventBridge would (`None`: only when invoked).
    pub reconcile_every: Option<Duration>,
    /// Feed the status counter from the table's stream (off: no counts, no slot release).
    pub stream_counter: bool,
    /// How long the stream mapping gathers records per counter invocation
    /// (default: the deployed mapping's window, [`crate::streams::BATCHING_WINDOW`]).
    pub stream_window: Duration,
    /// Record every AWS call of each function (one proxy per function) as JSON
    /// lines of [`crate::iam::Record`] appended to this file, for the IAM check.
    /// Default: `COURIER_IAM_LOG` (unset or empty: no recording).
    pub iam_log: Option<PathBuf>,
    /// Receives after which the delivery queue moves a message to the DLQ
    /// (default: the deployed [`courier::resources::MAX_RECEIVE_COUNT`]).
    pub max_receive_count: i32,
    /// How often the local TTL sweeper deletes expired items (`None`: never,
    /// as the emulator: nothing expires).
    pub ttl_sweep: Option<Duration>,
    /// The issuer whose tokens the front's JWT authorizer accepts on `/jwt/…`
    /// (default: a new in-memory key; `courier-local up` keeps one in `.local/`).
    pub jwt: Option<Arc<crate::jwt::Issuer>>,
}

impl StackOptions {
    pub fn new(stack: impl Into<String>, bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            stack: stack.into(),
            bin_dir: bin_dir.into(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_instances: 2,
            sender_instances: 2,
            pollers: 2,
            batch_size: 10,
            log_file: None,
            extra_env: Vec::new(),
            function_env: Default::default(),
            scheduler_tick: Some(Duration::from_secs(1)),
            reconcile_every: Some(Duration::from_secs(60)),
            stream_counter: true,
            stream_window: crate::streams::BATCHING_WINDOW,
            iam_log: std::env::var_os("COURIER_IAM_LOG").filter(|v| !v.is_empty()).map(PathBuf::from),
            max_receive_count: courier::resources::MAX_RECEIVE_COUNT,
            jwt: crate::jwt::Issuer::generate().ok().map(Arc::new),
            ttl_sweep: None,
        }
    }
}

/// A running local stack.
pub struct LocalStack {
    pub api_url: String,
    pub outputs: Outputs,
    pub api: Arc<FunctionHost>,
    pub sender: Arc<FunctionHost>,
    pub reconciler: Arc<FunctionHost>,
    pub counter: Arc<FunctionHost>,
    tasks: Vec<JoinHandle<()>>,
    /// The functions' IAM recording proxies (empty unless `iam_log` is set).
    _recorders: Vec<RunningProxy>,
}

/// The event EventBridge sends a scheduled function.
pub fn scheduled_event(rule: &str) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc();
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": now.replace_nanosecond(0).unwrap_or(now).format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")],
        "detail": {},
    })
}

impl LocalStack {
    pub async fn start(sdk: &SdkConfig, opts: StackOptions) -> anyhow::Result<Self> {
        let outputs = bootstrap_with_redrive(sdk, &opts.stack, opts.max_receive_count).await?;
        let mut env = outputs.function_env();
        // Local stacks send nothing off the machine unless the caller's environment says otherwise.
        for (name, default) in [("COURIER_TARGET_POLICY", "local-only"), ("COURIER_TARGET_ALLOWLIST", "")] {
            let set = std::env::var(name).ok().filter(|v| !v.is_empty() || name.ends_with("ALLOWLIST"));
            env.push((name.into(), set.unwrap_or_else(|| default.into())));
        }
        env.extend(opts.extra_env.iter().cloned());
        let function = |name: &str, timeout_s: u64, instances: usize| FunctionSpec {
            name: format!("{}-{name}", opts.stack),
            binary: opts.bin_dir.join(name),
            env: endpoint_follows(
                env.iter().chain(opts.function_env.get(name).into_iter().flatten()).cloned().collect(),
            ),
            timeout: Duration::from_secs(timeout_s),
            instances,
            log_file: opts.log_file.clone(),
        };
        let mut recorders = Vec::new();
        let mut start = async |name: &str, timeout_s: u64, instances: usize| -> anyhow::Result<Arc<FunctionHost>> {
            let spec = recorded(&opts, sdk, name, function(name, timeout_s, instances), &mut recorders).await?;
            Ok(Arc::new(FunctionHost::start(spec).await?))
        };
        let api = start("api", 30, opts.api_instances).await?;
        let sender = start("sender", courier::resources::SENDER_TIMEOUT_S as u64, opts.sender_instances).await?;
        let reconciler = start("reconciler", 60, 1).await?;
        let counter = start("counter", 60, 1).await?;

        let listener = tokio::net::TcpListener::bind(opts.api_addr).await?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let mut tasks = vec![tokio::spawn({
            let front = crate::front::Front { api: api.clone(), jwt: opts.jwt.clone() };
            async move {
                if let Err(e) = crate::front::serve_front(listener, front).await {
                    tracing::error!(error = %e, "API front stopped");
                }
            }
        })];
        let sqs = aws_sdk_sqs::Client::new(sdk);
        for _ in 0..opts.pollers {
            let mapping = Mapping {
                queue_url: outputs.queue_url.clone(),
                queue_arn: outputs.queue_arn.clone(),
                batch_size: opts.batch_size,
                wait_seconds: 2,
            };
            tasks.push(tokio::spawn(event_source::run(sqs.clone(), mapping, sender.clone())));
        }
        if let Some(tick) = opts.scheduler_tick {
            tasks.push(tokio::spawn(scheduler::run(
                aws_sdk_scheduler::Client::new(sdk),
                sqs.clone(),
                outputs.names.schedule_group.clone(),
                tick,
            )));
        }
        if let Some(every) = opts.reconcile_every {
            let reconciler = reconciler.clone();
            let rule = format!("{}-reconcile", opts.stack);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = reconciler.invoke(&scheduled_event(&rule)).await {
                        tracing::warn!(error = %e, "reconciler run failed");
                    }
                }
            }));
        }
        let swept = crate::ttl::Swept::default();
        if let Some(every) = opts.ttl_sweep {
            tasks.push(tokio::spawn(crate::ttl::run(
                aws_sdk_dynamodb::Client::new(sdk),
                outputs.names.table.clone(),
                every,
                swept.clone(),
            )));
        }
        if opts.stream_counter {
            tasks.push(tokio::spawn(crate::streams::run(
                aws_sdk_dynamodbstreams::Client::new(sdk),
                aws_sdk_dynamodb::Client::new(sdk),
                outputs.names.table.clone(),
                counter.clone(),
                opts.stream_window,
                swept,
            )));
        }
        Ok(Self { api_url, outputs, api, sender, reconciler, counter, tasks, _recorders: recorders })
    }
}

/// With `opts.iam_log`, puts the function behind a recording proxy of its own:
/// every endpoint variable of the function points at the proxy, which
/// forwards each service to where the function would have called it.
async fn recorded(
    opts: &StackOptions,
    sdk: &SdkConfig,
    name: &str,
    mut spec: FunctionSpec,
    recorders: &mut Vec<RunningProxy>,
) -> anyhow::Result<FunctionSpec> {
    let Some(log) = &opts.iam_log else { return Ok(spec) };
    // The function's own environment wins over the one it inherits.
    let env: std::collections::HashMap<String, String> = spec.env.iter().cloned().collect();
    let upstreams = Upstreams::from_lookup(|k| env.get(k).cloned().or_else(|| std::env::var(k).ok()))
        .or_else(|| sdk.endpoint_url().map(|url| Upstreams { default: url.to_owned(), by_service: Default::default() }))
        .ok_or_else(|| anyhow::anyhow!("recording IAM calls needs an emulator endpoint (AWS_ENDPOINT_URL)"))?;
    let proxy = crate::iam::record(&opts.stack, name, log, upstreams).await?;
    spec.env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));
    for service in SERVICES {
        spec.env.push((format!("AWS_ENDPOINT_URL_{service}"), proxy.url.clone()));
    }
    recorders.push(proxy);
    Ok(spec)
}

/// A function given an `AWS_ENDPOINT_URL` of its own (a proxy) sends every
/// service there, even when the caller's environment has per-service
/// endpoints (which the SDKs prefer): those follow it unless it sets them too.
fn endpoint_follows(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    let Some(url) = env.iter().rev().find(|(k, _)| k == "AWS_ENDPOINT_URL").map(|(_, v)| v.clone()) else { return env };
    for service in SERVICES {
        let key = format!("AWS_ENDPOINT_URL_{service}");
        if !env.iter().any(|(k, _)| *k == key) {
            env.push((key, url.clone()));
        }
    }
    env
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
