//! Shared test plumbing: SDK config for the emulator, unique stack names,
//! the function binaries' location, a scriptable loopback target (that also
//! counts the requests it holds open at once), polling.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use courier_local::stack::{LocalStack, StackOptions};

/// SDK configuration pointing at the test emulator.
pub async fn sdk() -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| !v.is_empty()),
        "AWS_ENDPOINT_URL is not set: run the integration tests with `make test` (it starts an emulator)"
    );
    courier::aws::load().await
}

/// The test tenant's listing groups (`LIST#…` items: the one index entry the
/// tasks of a batch create share), read by a scan.
pub async fn listing_groups(stack: &TestStack) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let out = ddb
        .scan()
        .table_name(&stack.outputs().names.table)
        .filter_expression("begins_with(pk, :l) AND tenant = :t")
        .expression_attribute_values(":l", AttributeValue::S(courier::resources::LIST_GROUP_PREFIX.into()))
        .expression_attribute_values(":t", AttributeValue::S(stack.tenant.clone()))
        .send()
        .await
        .expect("scan for listing groups");
    out.items.unwrap_or_default()
}

/// Whether a task's state item carries its own `by-tenant` index keys
/// (`None`: no such task).
pub async fn own_index_entry(stack: &TestStack, id: &str) -> Option<bool> {
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let out = ddb
        .get_item()
        .table_name(&stack.outputs().names.table)
        .key("pk", AttributeValue::S(format!("TASK#{id}")))
        .key("sk", AttributeValue::S("STATE".into()))
        .send()
        .await
        .expect("get a state item");
    Some(out.item()?.contains_key(courier::resources::INDEX_HASH_KEY))
}

/// A stack name no other test uses.
pub fn unique_stack(area: &str) -> String {
    format!("it-{area}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Where `cargo build --workspace --bins` put `api`, `sender` and `courier-local`.
pub fn bin_dir() -> PathBuf {
    // target/debug/deps/it-<hash> → target/debug
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf();
    for bin in ["api", "sender"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo build --workspace --bins`",
            dir.display()
        );
    }
    dir
}

/// Options for a test stack: functions log to a file under target/, not the
/// test output, and every AWS call they make is recorded for the IAM check
/// (`COURIER_IAM_LOG`, default `target/debug/it-logs/iam-calls.jsonl`).
pub fn stack_options(area: &str) -> StackOptions {
    let stack = unique_stack(area);
    let mut opts = StackOptions::new(&stack, bin_dir());
    let logs = bin_dir().join("it-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    opts.log_file = Some(logs.join(format!("{stack}.log")));
    opts.iam_log.get_or_insert_with(|| logs.join("iam-calls.jsonl"));
    opts.scheduler_tick = None;
    opts
}

pub async fn start_stack(opts: StackOptions) -> LocalStack {
    LocalStack::start(&sdk().await, opts).await.expect("local stack starts")
}

/// One request a [`Target`] received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived, epoch ms.
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One scripted answer of a [`Target`].
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// The body (`answer <status>` unless set).
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), delay: Duration::ZERO, body: None }
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

struct TargetState {
    script: VecDeque<Reply>,
    /// The answer once the script has run out.
    otherwise: Reply,
    received: Vec<Received>,
    /// Requests being answered right now, and the most there ever were.
    open: usize,
    max_open: usize,
}

/// Counts a request as open until its handler ends (answered, or dropped
/// because the client went away), so no path leaves the count high.
struct OpenGuard(Arc<Mutex<TargetState>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.open = s.open.saturating_sub(1);
    }
}

/// A loopback HTTP target that records what it receives and answers with
/// scripted replies, then with a reply that can be switched while it runs
/// (200 unless told otherwise).
pub struct Target {
    pub addr: SocketAddr,
    state: Arc<Mutex<TargetState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(script: &[u16]) -> Self {
        Self::start_with(script.iter().map(|s| Reply::status(*s)).collect()).await
    }

    /// A target answering with `script` in order (then 200).
    pub async fn start_with(script: Vec<Reply>) -> Self {
        let state = Arc::new(Mutex::new(TargetState {
            script: script.into_iter().collect(),
            otherwise: Reply::status(200),
            received: Vec::new(),
            open: 0,
            max_open: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(answer).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("lock").received.clone()
    }

    /// From now on, answer every request past the script with `reply`
    /// (a status, a hang, a delay; requests already arrived keep theirs).
    pub fn answer_with(&self, reply: Reply) {
        self.state.lock().expect("lock").otherwise = reply;
    }

    /// Requests open right now and the most that were ever open at once.
    pub fn open(&self) -> (usize, usize) {
        let s = self.state.lock().expect("lock");
        (s.open, s.max_open)
    }

    /// Requests received per task (Courier's `courier-task-id` header).
    pub fn per_task(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for r in self.state.lock().expect("lock").received.iter() {
            *counts.entry(r.header("courier-task-id").unwrap_or_default().to_owned()).or_default() += 1;
        }
        counts
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(state): State<Arc<Mutex<TargetState>>>, req: Request) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let reply = {
        let mut s = state.lock().expect("lock");
        s.received.push(Received {
            at_ms: courier::domain::now_millis(),
            method: parts.method.to_string(),
            path: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
            body,
        });
        s.open += 1;
        s.max_open = s.max_open.max(s.open);
        s.script.pop_front().unwrap_or_else(|| s.otherwise.clone())
    };
    let _open = OpenGuard(state.clone());
    tokio::time::sleep(reply.delay).await;
    let text = reply.body.unwrap_or_else(|| format!("answer {}", reply.status));
    let mut resp = (StatusCode::from_u16(reply.status).expect("status"), text).into_response();
    for (k, v) in reply.headers {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin key of test stacks (the API function gets only its SHA-256).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef-0123456789";

/// A started stack with one tenant: `api` speaks as the tenant, `admin` as the admin.
pub struct TestStack {
    pub local: LocalStack,
    pub api: Api,
    pub admin: Api,
    pub tenant: String,
}

impl TestStack {
    /// The stack's tenant as the typed id the store's ports take.
    pub fn tenant_id(&self) -> courier::domain::TenantId {
        courier::domain::TenantId::parse(&self.tenant).expect("the stack's tenant id is well formed")
    }

    pub async fn start(mut opts: StackOptions) -> Self {
        opts.extra_env.push(("COURIER_ADMIN_KEY_SHA256".into(), courier::domain::hash_key(ADMIN_KEY)));
        let local = start_stack(opts).await;
        let admin = Api::new(&local.api_url, Some(ADMIN_KEY));
        let (tenant, key) = admin.new_tenant("it", serde_json::json!({})).await;
        Self { api: Api::new(&local.api_url, Some(&key)), admin, tenant, local }
    }

    pub fn outputs(&self) -> &courier_local::bootstrap::Outputs {
        &self.local.outputs
    }
}

/// A JSON client for the local API.
pub struct Api {
    pub base: String,
    pub key: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: Option<&str>) -> Self {
        Self { base: base.to_owned(), key: key.map(str::to_owned), http: reqwest::Client::new() }
    }

    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self::new(&self.base, key)
    }

    /// Any request; returns status, headers and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        let r = req.send().await.expect("API reachable");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (s, _, v) = self.call("POST", path, Some(body), &[]).await;
        (s, v)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, _, v) = self.call("GET", path, None, &[]).await;
        (s, v)
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, _, v) = self.call("DELETE", path, None, &[]).await;
        (s, v)
    }

    pub async fn put(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (s, _, v) = self.call("PUT", path, Some(body), &[]).await;
        (s, v)
    }

    pub async fn patch(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (s, _, v) = self.call("PATCH", path, Some(body), &[]).await;
        (s, v)
    }

    /// Creates a tenant (as admin); returns its id and API key.
    pub async fn new_tenant(&self, name: &str, quotas: serde_json::Value) -> (String, String) {
        let mut body = quotas;
        body["name"] = serde_json::Value::String(name.to_owned());
        let (status, t) = self.post("/v1/tenants", &body.to_string()).await;
        assert_eq!(status, 201, "tenant create answered {t}");
        (t["id"].as_str().expect("id").to_owned(), t["api_key"]["key"].as_str().expect("key").to_owned())
    }

    /// Creates a task from a full create body; returns the task.
    pub async fn create_task(&self, body: serde_json::Value) -> serde_json::Value {
        let (status, task) = self.post("/v1/tasks", &body.to_string()).await;
        assert_eq!(status, 201, "create answered {task}");
        task
    }

    /// Creates a task sending `method url`; returns its id.
    pub async fn create(&self, method: &str, url: &str) -> String {
        let task =
            self.create_task(serde_json::json!({"request": {"method": method, "url": url, "body": "payload"}})).await;
        task["id"].as_str().expect("id").to_owned()
    }

    /// Waits until the task reaches `status`; returns the task.
    pub async fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> serde_json::Value {
        let found = eventually(timeout, || async {
            let (_, t) = self.get(&format!("/v1/tasks/{id}")).await;
            (t["status"] == status).then_some(t)
        })
        .await;
        match found {
            Some(t) => t,
            None => panic!("task {id} did not reach {status}: {}", self.get(&format!("/v1/tasks/{id}")).await.1),
        }
    }
}

/// Waits until `queue_url` holds no message — none visible, in flight or
/// delayed — so every message sent to it so far has been handled and deleted
/// (a retry or a deferral keeps its message in flight). The positive signal
/// before asserting that something did not happen. Panics after `timeout`.
pub async fn wait_until_queue_empty(queue_url: &str, timeout: Duration) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let last = Mutex::new(String::new());
    let empty = eventually(timeout, || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .ok()?
            .attributes
            .unwrap_or_default();
        let counts: Vec<&str> = [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|a| attrs.get(a).map_or("?", String::as_str))
        .collect();
        *last.lock().expect("lock") = format!("visible, in flight, delayed: {counts:?}");
        (counts == ["0", "0", "0"]).then_some(())
    })
    .await;
    assert!(empty.is_some(), "queue {queue_url} did not empty: {}", last.lock().expect("lock"));
}

/// Reads the events example queue (what the stack's example rule routes
/// there) until `want` events arrived, or a minute passed.
pub async fn bus_events(stack: &TestStack, want: usize) -> Vec<serde_json::Value> {
    let sqs = aws_sdk_sqs::Client::new(&sdk().await);
    let url = stack.outputs().event_queue_url.clone();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < want && tokio::time::Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages.unwrap_or_default() {
            got.push(serde_json::from_str(m.body().unwrap_or_default()).expect("an event is JSON"));
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .ok();
        }
    }
    got
}

/// A stack's AWS calls on a log of their own, so a test counts only them;
/// [`OwnIamLog::share`] then adds them to `make test`'s log for its IAM check.
pub struct OwnIamLog(pub PathBuf);

impl OwnIamLog {
    /// Points `opts` at a log named after its stack.
    pub fn new(opts: &mut StackOptions) -> Self {
        let log = bin_dir().join("it-logs").join(format!("iam-{}.jsonl", opts.stack));
        opts.iam_log = Some(log.clone());
        Self(log)
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// Calls of `action` (e.g. `kms:Decrypt`) by `function` (`None`: any).
    pub fn count(&self, function: Option<&str>, action: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| function.is_none_or(|f| l.contains(&format!(r#""function":"{f}""#))))
            .filter(|l| l.contains(&format!(r#""action":"{action}""#)))
            .count()
    }

    /// Appends the calls to `COURIER_IAM_LOG` (when set), which `make test` checks against the template.
    pub fn share(&self) {
        use std::io::Write;
        if let Ok(all) = std::env::var("COURIER_IAM_LOG") {
            let mut f = std::fs::OpenOptions::new().append(true).open(all).expect("the IAM log");
            f.write_all(self.text().as_bytes()).expect("appended");
        }
    }
}
