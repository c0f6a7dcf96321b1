//! Hosts a Lambda function binary behind the Lambda Runtime API, the way
//! Lambda does: the binary polls `GET /2018-06-01/runtime/invocation/next`,
//! answers on `/response` or `/error`. One process handles one invocation at a
//! time; several instances of a function share one queue of invocations.
//!
//! As on Lambda, each invocation gets `Lambda-Runtime-Deadline-Ms` (now plus
//! the function's timeout; `AWS_LAMBDA_FUNCTION_TIMEOUT` in the function's
//! environment overrides it, in seconds), a process that exits on its own is
//! replaced by a new one (Lambda starts a new instance) and its invocation in
//! flight fails at once with `Runtime.ExitError`, and an invocation that
//! outlives its timeout ends its sandbox: the function's processes are killed
//! and started again (with several instances, the others' invocations in
//! flight fail too).
//!
//! Each instance polls its own Runtime API port, so the harness knows which
//! invocation a process that died was holding.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

const API: &str = "/2018-06-01/runtime";

/// How to start a function.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    pub name: String,
    pub binary: PathBuf,
    /// Extra environment (Courier's configuration); the harness adds the Lambda variables.
    pub env: Vec<(String, String)>,
    /// How long one invocation may run.
    pub timeout: Duration,
    /// Processes to start (concurrent invocations).
    pub instances: usize,
    /// Where the processes' stdout and stderr go; `None` inherits.
    pub log_file: Option<PathBuf>,
}

/// An invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The function reported an error (`/error`): its JSON error document.
    #[error("function error: {0}")]
    Function(String),
    #[error("invocation timed out after {0:?}")]
    Timeout(Duration),
    #[error("the harness stopped")]
    Stopped,
}

struct Invocation {
    payload: Bytes,
    reply: oneshot::Sender<Result<Bytes, String>>,
}

/// The error document of an invocation whose process died, as Lambda reports it.
fn exit_error(message: &str) -> String {
    serde_json::json!({"errorType": "Runtime.ExitError", "errorMessage": message}).to_string()
}

/// An invocation handed to a process and not answered yet.
struct Pending {
    /// The instance whose process took it.
    instance: usize,
    reply: oneshot::Sender<Result<Bytes, String>>,
    /// When the process took it: Lambda bills from here, not from the queue.
    taken: Instant,
}

struct Shared {
    name: String,
    timeout: Duration,
    rx: Mutex<mpsc::Receiver<Invocation>>,
    /// Invocations handed to a process and not answered yet, by request id.
    pending: std::sync::Mutex<HashMap<String, Pending>>,
    /// Time from start to the first `/next`: the init time of a one-process host.
    first_next: std::sync::OnceLock<Duration>,
    started: Instant,
    /// Invocations answered and the wall time processes spent on them, from
    /// `/next` to the answer (what Lambda bills; time waiting for a free
    /// process is not billed).
    invocations: std::sync::atomic::AtomicU64,
    busy_us: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn bill(&self, taken: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        self.invocations.fetch_add(1, Relaxed);
        self.busy_us.fetch_add(taken.elapsed().as_micros() as u64, Relaxed);
    }

    /// Fails every invocation in flight (of one instance, or of all) as Lambda
    /// reports a runtime that exited.
    fn fail_pending(&self, instance: Option<usize>, message: &str) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = pending
            .iter()
            .filter(|(_, p)| instance.is_none_or(|i| p.instance == i))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            if let Some(p) = pending.remove(id) {
                self.bill(p.taken);
                let _ = p.reply.send(Err(exit_error(message)));
            }
        }
        ids.len()
    }
}

/// The Runtime API state one instance's port serves.
#[derive(Clone)]
struct Slot {
    shared: Arc<Shared>,
    instance: usize,
}

/// Watches one instance's process: restarts it when it exits on its own,
/// kills it when told to stop.
struct Supervisor {
    stop: oneshot::Sender<()>,
    /// The current process's id (0 while none runs).
    pid: Arc<std::sync::atomic::AtomicU32>,
}

/// A running function: its Runtime API servers and its processes.
pub struct FunctionHost {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Invocation>,
    spec: FunctionSpec,
    /// One Runtime API address per instance.
    runtime_apis: Vec<String>,
    supervisors: std::sync::Mutex<Vec<Supervisor>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl FunctionHost {
    /// Starts the Runtime API on a free loopback port and the function's processes.
    pub async fn start(spec: FunctionSpec) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(64);
        let timeout = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "AWS_LAMBDA_FUNCTION_TIMEOUT")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .map_or(spec.timeout, Duration::from_secs);
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            timeout,
            rx: Mutex::new(rx),
            pending: std::sync::Mutex::new(HashMap::new()),
            first_next: std::sync::OnceLock::new(),
            started: Instant::now(),
            invocations: Default::default(),
            busy_us: Default::default(),
        });
        let mut runtime_apis = Vec::new();
        let mut servers = Vec::new();
        for instance in 0..spec.instances.max(1) {
            let app = Router::new()
                .route(&format!("{API}/invocation/next"), get(next))
                .route(&format!("{API}/invocation/{{id}}/response"), post(response))
                .route(&format!("{API}/invocation/{{id}}/error"), post(error))
                .route(&format!("{API}/init/error"), post(init_error))
                .with_state(Slot { shared: shared.clone(), instance });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            runtime_apis.push(listener.local_addr()?.to_string());
            servers.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        let host = Self { shared, tx, spec, runtime_apis, supervisors: std::sync::Mutex::new(Vec::new()), servers };
        host.respawn()?;
        Ok(host)
    }

    /// Starts the function's processes (again, after [`Self::kill`]).
    pub fn respawn(&self) -> std::io::Result<()> {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        for (instance, api) in self.runtime_apis.iter().enumerate() {
            let child = spawn(&self.spec, api, instance)?;
            let pid = Arc::new(std::sync::atomic::AtomicU32::new(child.id().unwrap_or(0)));
            let (stop, stopped) = oneshot::channel();
            let watch = Watch {
                shared: self.shared.clone(),
                spec: self.spec.clone(),
                api: api.clone(),
                instance,
                pid: pid.clone(),
            };
            tokio::spawn(watch.run(child, stopped));
            supervisors.push(Supervisor { stop, pid });
        }
        Ok(())
    }
}

/// What a supervisor task needs to restart one instance.
struct Watch {
    shared: Arc<Shared>,
    spec: FunctionSpec,
    api: String,
    instance: usize,
    pid: Arc<std::sync::atomic::AtomicU32>,
}

impl Watch {
    /// A process that lived shorter than this is restarted only after this
    /// long, so a binary that fails at init does not spin.
    const RESTART_BACKOFF: Duration = Duration::from_secs(1);

    async fn run(self, mut child: Child, mut stopped: oneshot::Receiver<()>) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let born = Instant::now();
            let status = tokio::select! {
                status = child.wait() => status,
                _ = &mut stopped => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return;
                }
            };
            self.pid.store(0, Relaxed);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let failed = self.shared.fail_pending(Some(self.instance), &format!("the process exited ({status})"));
            tracing::warn!(
                function = %self.shared.name,
                instance = self.instance,
                %status,
                failed_invocations = failed,
                "function process exited; starting a new one"
            );
            if born.elapsed() < Self::RESTART_BACKOFF {
                tokio::select! {
                    () = tokio::time::sleep(Self::RESTART_BACKOFF) => {}
                    _ = &mut stopped => return,
                }
            }
            child = match spawn(&self.spec, &self.api, self.instance) {
                Ok(c) => c,
                Err(error) => {
                    tracing::error!(function = %self.shared.name, instance = self.instance, %error, "function process cannot start again");
                    return;
                }
            };
            self.pid.store(child.id().unwrap_or(0), Relaxed);
        }
    }
}

fn spawn(spec: &FunctionSpec, runtime_api: &str, instance: usize) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.binary);
    cmd.env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", spec.name))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/{instance}"))
        // The operator's admin key (read by `courier-local up`) never reaches a
        // function, even when it is in the environment the harness inherits.
        .env_remove("COURIER_ADMIN_KEY")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = &spec.log_file {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    cmd.spawn()
}

impl FunctionHost {
    /// Invokes the function with a JSON event and waits for its answer.
    pub async fn invoke(&self, event: &serde_json::Value) -> Result<serde_json::Value, InvokeError> {
        let bytes = self.invoke_raw(Bytes::from(event.to_string())).await?;
        serde_json::from_slice(&bytes).map_err(|e| InvokeError::Function(format!("response is not JSON: {e}")))
    }

    /// Invokes the function with a raw payload.
    pub async fn invoke_raw(&self, payload: Bytes) -> Result<Bytes, InvokeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Invocation { payload, reply }).await.map_err(|_| InvokeError::Stopped)?;
        let answer = tokio::time::timeout(self.shared.timeout, rx).await;
        match answer {
            Err(_) => {
                // Lambda ends a timed-out sandbox: whatever the function was still doing stops here.
                tracing::warn!(function = %self.shared.name, "invocation timed out; restarting the function's processes");
                self.kill();
                let _ = self.respawn();
                Err(InvokeError::Timeout(self.shared.timeout))
            }
            Ok(Err(_)) => Err(InvokeError::Stopped),
            Ok(Ok(Ok(b))) => Ok(b),
            Ok(Ok(Err(e))) => Err(InvokeError::Function(e)),
        }
    }

    /// Time from start to the first `/next` (the init time, for a
    /// one-process host); `None` until a process has asked for work.
    pub fn init_duration(&self) -> Option<Duration> {
        self.shared.first_next.get().copied()
    }

    /// Invocations answered so far and the time processes spent on them (from
    /// `/next` to the answer, as Lambda bills; waiting for a free process excluded).
    pub fn usage(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.shared.invocations.load(Relaxed), Duration::from_micros(self.shared.busy_us.load(Relaxed)))
    }

    /// Kills every process of the function with SIGKILL (as a crash would);
    /// their invocations in flight fail at once, as Lambda reports a runtime
    /// that exited.
    pub fn kill(&self) {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        for s in supervisors.drain(..) {
            let _ = s.stop.send(());
        }
        self.shared.fail_pending(None, "the process was killed");
    }

    /// Process ids, for callers that measure or manage processes themselves.
    pub fn pids(&self) -> Vec<u32> {
        use std::sync::atomic::Ordering::Relaxed;
        let supervisors = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        supervisors.iter().map(|s| s.pid.load(Relaxed)).filter(|pid| *pid != 0).collect()
    }
}

impl Drop for FunctionHost {
    fn drop(&mut self) {
        self.kill();
        for server in &self.servers {
            server.abort();
        }
    }
}

async fn next(State(Slot { shared: s, instance }): State<Slot>) -> Response {
    let _ = s.first_next.set(s.started.elapsed());
    let inv = {
        let mut rx = s.rx.lock().await;
        match rx.recv().await {
            Some(inv) => inv,
            None => return StatusCode::GONE.into_response(),
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000 + s.timeout.as_millis() as i128;
    s.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), Pending { instance, reply: inv.reply, taken: Instant::now() });
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("lambda-runtime-aws-request-id", id);
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set("lambda-runtime-invoked-function-arn", format!("arn:aws:lambda:us-east-1:123456789012:function:{}", s.name));
    set("lambda-runtime-trace-id", format!("Root=1-{}", uuid::Uuid::new_v4().simple()));
    set("content-type", "application/json".into());
    (StatusCode::OK, h, inv.payload).into_response()
}

async fn response(State(Slot { shared: s, .. }): State<Slot>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match s.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
        Some(Pending { reply, taken, .. }) => {
            s.bill(taken);
            let _ = reply.send(Ok(body));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn error(State(Slot { shared: s, .. }): State<Slot>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match s.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
        Some(Pending { reply, taken, .. }) => {
            s.bill(taken);
            let _ = reply.send(Err(String::from_utf8_lossy(&body).into_owned()));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn init_error(State(Slot { shared: s, .. }): State<Slot>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::error!(function = %s.name, error = %text, "function init failed");
    StatusCode::ACCEPTED
}
