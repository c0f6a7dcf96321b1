//! Hosts a Lambda function binary behind the Lambda Runtime API, the way
//! Lambda does: the binary polls `GET /2018-06-01/runtime/invocation/next`,
//! answers on `/response` or `/error`. One process handles one invocation at a
//! time; several instances of a function share one queue of invocations.
//!
//! As on Lambda, each invocation gets `Lambda-Runtime-Deadline-Ms` (now plus
//! the function's timeout; `AWS_LAMBDA_FUNCTION_TIMEOUT` in the function's
//! environment overrides it, in seconds), an invocation whose process dies
//! fails at once, and an invocation that outlives its timeout ends its
//! sandbox: the function's processes are killed and started again (with
//! several instances, the others' invocations in flight fail too).

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

struct Shared {
    name: String,
    timeout: Duration,
    rx: Mutex<mpsc::Receiver<Invocation>>,
    /// Invocations handed to a process and not answered yet.
    pending: std::sync::Mutex<HashMap<String, oneshot::Sender<Result<Bytes, String>>>>,
    /// Time from start to the first `/next`: the init time of a one-process host.
    first_next: std::sync::OnceLock<Duration>,
    started: Instant,
    /// Invocations answered and the wall time spent in them (what Lambda bills).
    invocations: std::sync::atomic::AtomicU64,
    busy_us: std::sync::atomic::AtomicU64,
}

/// A running function: its Runtime API server and its processes.
pub struct FunctionHost {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Invocation>,
    spec: FunctionSpec,
    children: std::sync::Mutex<Vec<Child>>,
    server: tokio::task::JoinHandle<()>,
    pub runtime_api: String,
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
        let app = Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(response))
            .route(&format!("{API}/invocation/{{id}}/error"), post(error))
            .route(&format!("{API}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let runtime_api = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let host = Self { shared, tx, spec, children: std::sync::Mutex::new(Vec::new()), server, runtime_api };
        host.respawn()?;
        Ok(host)
    }

    /// Starts the function's processes (again, after [`Self::kill`]).
    pub fn respawn(&self) -> std::io::Result<()> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.spec.instances.max(1) {
            children.push(self.spawn(&self.spec, i)?);
        }
        Ok(())
    }

    fn spawn(&self, spec: &FunctionSpec, instance: usize) -> std::io::Result<Child> {
        let mut cmd = Command::new(&spec.binary);
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.runtime_api)
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

    /// Invokes the function with a JSON event and waits for its answer.
    pub async fn invoke(&self, event: &serde_json::Value) -> Result<serde_json::Value, InvokeError> {
        let bytes = self.invoke_raw(Bytes::from(event.to_string())).await?;
        serde_json::from_slice(&bytes).map_err(|e| InvokeError::Function(format!("response is not JSON: {e}")))
    }

    /// Invokes the function with a raw payload.
    pub async fn invoke_raw(&self, payload: Bytes) -> Result<Bytes, InvokeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Invocation { payload, reply }).await.map_err(|_| InvokeError::Stopped)?;
        let clock = Instant::now();
        let answer = tokio::time::timeout(self.shared.timeout, rx).await;
        use std::sync::atomic::Ordering::Relaxed;
        self.shared.invocations.fetch_add(1, Relaxed);
        self.shared.busy_us.fetch_add(clock.elapsed().as_micros() as u64, Relaxed);
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

    /// Invocations so far and the wall time they took (queueing for a free process included).
    pub fn usage(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.shared.invocations.load(Relaxed), Duration::from_micros(self.shared.busy_us.load(Relaxed)))
    }

    /// Kills every process of the function with SIGKILL (as a crash would);
    /// their invocations in flight fail at once, as Lambda reports a runtime
    /// that exited.
    pub fn kill(&self) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for c in children.iter_mut() {
            let _ = c.start_kill();
        }
        children.clear();
        let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (_, reply) in pending.drain() {
            let _ =
                reply.send(Err(r#"{"errorType":"Runtime.ExitError","errorMessage":"the process was killed"}"#.into()));
        }
    }

    /// Process ids, for callers that measure or manage processes themselves.
    pub fn pids(&self) -> Vec<u32> {
        self.children.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Child::id).collect()
    }
}

impl Drop for FunctionHost {
    fn drop(&mut self) {
        self.kill();
        self.server.abort();
    }
}

async fn next(State(s): State<Arc<Shared>>) -> Response {
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
    s.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), inv.reply);
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

async fn response(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match s.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
        Some(reply) => {
            let _ = reply.send(Ok(body));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn error(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match s.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
        Some(reply) => {
            let _ = reply.send(Err(String::from_utf8_lossy(&body).into_owned()));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn init_error(State(s): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::error!(function = %s.name, error = %text, "function init failed");
    StatusCode::ACCEPTED
}
