//! A proxy in front of the AWS emulator that fails a chosen share of the
//! calls passing through it, per service, the ways AWS does: HTTP 500,
//! throttling (with the error shape each SDK protocol reads, so the SDK
//! classifies it as throttling), connection resets (before the call reaches
//! the emulator, or after it was applied and before the answer), and 2 s
//! stalls. Draws come from one seeded generator per service, so a seed gives
//! the same sequence of faults for the same sequence of calls.
//!
//! Functions reach it through `AWS_ENDPOINT_URL` (per-function environment
//! in [`crate::stack::StackOptions::function_env`]). It counts calls and
//! faults per service for the report.
//!
//! It also forwards DynamoDB writes one at a time (as `infra/emulator.py`
//! now does inside the emulator for every stack): the emulator serves
//! requests on threads without locking its tables, so two concurrent
//! conditional updates of one item can both succeed there (measured: 1 in
//! 100 races of 8), which DynamoDB never allows. A fault test must not
//! count the emulator's lost atomicity as Courier's duplicate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode};

/// How long a stalled call waits before it goes on.
pub const STALL: Duration = Duration::from_secs(2);

/// The AWS service a call is for, read from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    DynamoDb,
    Sqs,
    Scheduler,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::DynamoDb, Service::Sqs, Service::Scheduler];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DynamoDb => "dynamodb",
            Self::Sqs => "sqs",
            Self::Scheduler => "scheduler",
        }
    }

    /// JSON-protocol services name the operation in `X-Amz-Target`;
    /// Scheduler speaks REST.
    fn of(target: Option<&str>) -> Self {
        match target {
            Some(t) if t.starts_with("DynamoDB_") => Self::DynamoDb,
            Some(t) if t.starts_with("AmazonSQS") => Self::Sqs,
            _ => Self::Scheduler,
        }
    }
}

/// One kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// HTTP 500 with the service's internal-error shape; not applied.
    ServerError,
    /// The service's throttling error; not applied.
    Throttle,
    /// The connection is reset before the call reaches the emulator.
    ResetBefore,
    /// The call is applied, then the connection is reset before the answer.
    ResetAfter,
    /// The call waits [`STALL`], then goes through.
    Stall,
}

impl Fault {
    pub const ALL: [Fault; 5] =
        [Fault::ServerError, Fault::Throttle, Fault::ResetBefore, Fault::ResetAfter, Fault::Stall];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerError => "http_500",
            Self::Throttle => "throttled",
            Self::ResetBefore => "reset_before",
            Self::ResetAfter => "reset_after_applied",
            Self::Stall => "stalled_2s",
        }
    }
}

/// Which calls fail and how.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Share of each service's calls that get a fault (0.0–1.0; absent: none).
    pub share: BTreeMap<Service, f64>,
    /// The faults drawn from, with relative weights.
    pub kinds: Vec<(Fault, u32)>,
    pub seed: u64,
}

impl FaultPlan {
    /// The same share for every service, every kind of fault equally likely.
    pub fn uniform(share: f64, seed: u64) -> Self {
        Self {
            share: Service::ALL.iter().map(|s| (*s, share)).collect(),
            kinds: Fault::ALL.iter().map(|f| (*f, 1)).collect(),
            seed,
        }
    }

    /// Only `fault`, on `share` of every service's calls.
    pub fn only(fault: Fault, share: f64, seed: u64) -> Self {
        Self { kinds: vec![(fault, 1)], ..Self::uniform(share, seed) }
    }
}

/// Calls and faults of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub calls: u64,
    pub faults: BTreeMap<Fault, u64>,
}

impl ServiceStats {
    /// Calls that got a fault of any kind.
    pub fn faulted(&self) -> u64 {
        self.faults.values().sum()
    }
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    plan: FaultPlan,
    rngs: Mutex<BTreeMap<Service, fastrand::Rng>>,
    /// Faults the next calls of a service get, before any draw.
    forced: Mutex<BTreeMap<Service, std::collections::VecDeque<Fault>>>,
    stats: Mutex<BTreeMap<Service, ServiceStats>>,
    enabled: AtomicBool,
    /// Held while a DynamoDB write is at the emulator.
    dynamodb_writes: tokio::sync::Mutex<()>,
}

impl Inner {
    /// Draws this call's fault, if any.
    fn draw(&self, service: Service) -> Option<Fault> {
        if let Some(f) =
            self.forced.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&service).and_then(|q| q.pop_front())
        {
            return Some(f);
        }
        let share = self.plan.share.get(&service).copied().unwrap_or(0.0);
        let total: u32 = self.plan.kinds.iter().map(|(_, w)| w).sum();
        let mut rngs = self.rngs.lock().unwrap_or_else(|p| p.into_inner());
        let rng = rngs.entry(service).or_insert_with(|| fastrand::Rng::with_seed(self.plan.seed ^ service as u64));
        // Two draws per call whatever happens, so one call's fault does not shift the next call's.
        let (hit, pick) = (rng.f64(), rng.u32(..total.max(1)));
        if !self.enabled.load(Ordering::Relaxed) || hit >= share || total == 0 {
            return None;
        }
        let mut left = pick;
        self.plan
            .kinds
            .iter()
            .find(|(_, w)| {
                if left < *w {
                    true
                } else {
                    left -= w;
                    false
                }
            })
            .map(|(f, _)| *f)
    }

    fn count(&self, service: Service, fault: Option<Fault>) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = stats.entry(service).or_default();
        s.calls += 1;
        if let Some(f) = fault {
            *s.faults.entry(f).or_default() += 1;
        }
    }
}

/// A running fault proxy; dropping it stops it.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: use it as `AWS_ENDPOINT_URL`.
    pub url: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: &str, plan: FaultPlan) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            plan,
            rngs: Mutex::default(),
            forced: Mutex::default(),
            stats: Mutex::default(),
            enabled: AtomicBool::new(true),
            dynamodb_writes: tokio::sync::Mutex::new(()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(accept(listener, inner.clone()));
        Ok(Self { url, inner, server })
    }

    /// Turns faults on or off (calls are counted either way).
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::Relaxed);
    }

    /// The next calls of `service` get these faults, in order (whatever the plan).
    pub fn force(&self, service: Service, faults: impl IntoIterator<Item = Fault>) {
        self.inner.forced.lock().unwrap_or_else(|p| p.into_inner()).entry(service).or_default().extend(faults);
    }

    /// Calls and faults so far, per service.
    pub fn stats(&self) -> BTreeMap<Service, ServiceStats> {
        self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The proxy's error when it drops a connection on purpose.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by the fault proxy")]
struct Reset;

async fn accept(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Closing with linger 0 sends a TCP reset, not an orderly close.
        #[allow(deprecated)] // set_linger blocks on close only with a non-zero linger
        let _ = stream.set_linger(Some(Duration::ZERO));
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(inner.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(inner: Arc<Inner>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Reset> {
    let (parts, body) = req.into_parts();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let service = Service::of(target.as_deref());
    let fault = inner.draw(service);
    inner.count(service, fault);
    let body: Bytes = axum::body::to_bytes(Body::new(body), 64 << 20).await.unwrap_or_default();
    match fault {
        Some(Fault::ServerError) => return Ok(error_response(service, false)),
        Some(Fault::Throttle) => return Ok(error_response(service, true)),
        Some(Fault::ResetBefore) => return Err(Reset),
        Some(Fault::Stall) => tokio::time::sleep(STALL).await,
        Some(Fault::ResetAfter) | None => {}
    }
    let url = format!("{}{}", inner.upstream, parts.uri.path_and_query().map_or("/", |q| q.as_str()));
    let mut fwd = inner.http.request(parts.method.clone(), url).body(body);
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let is_write = target.as_deref().is_some_and(|t| {
        ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"]
            .iter()
            .any(|op| t == format!("DynamoDB_20120810.{op}"))
    });
    let _one_at_a_time = if is_write { Some(inner.dynamodb_writes.lock().await) } else { None };
    let Ok(resp) = fwd.send().await else {
        return Ok(Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).unwrap_or_default());
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    if fault == Some(Fault::ResetAfter) {
        return Err(Reset);
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if k != "content-length" && k != "transfer-encoding" {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}

/// The error a service answers with: its protocol's shape, so the SDK reads
/// the code (`x-amzn-ErrorType`, or `__type` for the JSON protocols) and its
/// retry classifier sees a throttling or a transient server error.
fn error_response(service: Service, throttle: bool) -> Response<Body> {
    let (status, code, body) = match (service, throttle) {
        (Service::DynamoDb, true) => (
            StatusCode::BAD_REQUEST,
            "ProvisionedThroughputExceededException",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded (injected)"}"#,
        ),
        (Service::DynamoDb, false) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error (injected)"}"#,
        ),
        (Service::Sqs, true) => (
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded (injected)"}"#,
        ),
        (Service::Sqs, false) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            r#"{"__type":"com.amazonaws.sqs#InternalError","message":"Internal error (injected)"}"#,
        ),
        (Service::Scheduler, true) => {
            (StatusCode::TOO_MANY_REQUESTS, "ThrottlingException", r#"{"Message":"Rate exceeded (injected)"}"#)
        }
        (Service::Scheduler, false) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            r#"{"Message":"Internal server error (injected)"}"#,
        ),
    };
    let content_type = if service == Service::Scheduler { "application/json" } else { "application/x-amz-json-1.0" };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("x-amzn-errortype", HeaderValue::from_static(code));
    if service == Service::Sqs {
        // SQS's JSON protocol keeps its query-era codes in this header.
        let query = if throttle { "ThrottlingException;Sender" } else { "InternalError;Receiver" };
        h.insert("x-amzn-query-error", HeaderValue::from_static(query));
    }
    h.insert("x-amzn-requestid", HeaderValue::from_static("00000000-0000-0000-0000-000000000000"));
    resp
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;

    use super::*;

    async fn sdk(url: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("k", "s", None, None, "test"))
            .endpoint_url(url)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
            .load()
            .await
    }

    /// Nothing listens upstream: a call that reached it would fail with a 502.
    const NOWHERE: &str = "http://127.0.0.1:9";

    #[tokio::test]
    async fn throttling_reads_as_throttling_in_each_sdk_and_is_retried() {
        let proxy = FaultProxy::start(NOWHERE, FaultPlan::only(Fault::Throttle, 1.0, 7)).await.expect("proxy");
        let sdk = sdk(&proxy.url).await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk).describe_table().table_name("t").send().await;
        let e = ddb.expect_err("throttled");
        assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"), "{e:?}");
        let sqs = aws_sdk_sqs::Client::new(&sdk).get_queue_url().queue_name("q").send().await;
        assert_eq!(sqs.expect_err("throttled").code(), Some("ThrottlingException"));
        let sch = aws_sdk_scheduler::Client::new(&sdk).list_schedules().send().await;
        let e = sch.expect_err("throttled");
        assert!(e.as_service_error().is_some_and(|s| s.is_throttling_exception()), "{e:?}");
        let stats = proxy.stats();
        for s in Service::ALL {
            assert_eq!(stats[&s].calls, 3, "{}: each SDK tried three times", s.as_str());
            assert_eq!(stats[&s].faults[&Fault::Throttle], 3);
        }
    }

    #[tokio::test]
    async fn server_errors_and_resets_are_retried_as_transient() {
        for fault in [Fault::ServerError, Fault::ResetBefore] {
            let proxy = FaultProxy::start(NOWHERE, FaultPlan::only(fault, 1.0, 1)).await.expect("proxy");
            let sdk = sdk(&proxy.url).await;
            let res = aws_sdk_dynamodb::Client::new(&sdk).describe_table().table_name("t").send().await;
            let e = res.expect_err("fails");
            if fault == Fault::ServerError {
                assert_eq!(e.code(), Some("InternalServerError"), "{e:?}");
            } else {
                assert!(e.code().is_none(), "a reset has no error code: {e:?}");
            }
            assert_eq!(proxy.stats()[&Service::DynamoDb].calls, 3, "{fault:?} is retried");
        }
    }

    #[tokio::test]
    async fn a_seed_gives_the_same_faults_and_the_share_holds() {
        let plan = FaultPlan::uniform(0.1, 42);
        let run = |plan: FaultPlan| async move {
            let proxy = FaultProxy::start(NOWHERE, plan).await.expect("proxy");
            (0..2_000).map(|_| proxy.inner.draw(Service::Sqs)).collect::<Vec<_>>()
        };
        let (a, b) = (run(plan.clone()).await, run(plan.clone()).await);
        assert_eq!(a, b);
        let hits = a.iter().filter(|f| f.is_some()).count();
        assert!((140..260).contains(&hits), "{hits} of 2000 at 10 %");
        for f in Fault::ALL {
            assert!(a.contains(&Some(f)), "{f:?} drawn");
        }
        let other = run(FaultPlan::uniform(0.1, 43)).await;
        assert_ne!(a, other, "another seed, other faults");
    }

    #[tokio::test]
    async fn a_stall_delays_the_call_and_a_disabled_proxy_passes_everything() {
        let proxy = FaultProxy::start(NOWHERE, FaultPlan::only(Fault::Stall, 1.0, 3)).await.expect("proxy");
        let http = reqwest::Client::new();
        let t = std::time::Instant::now();
        let r = http.post(&proxy.url).header("x-amz-target", "AmazonSQS.ListQueues").send().await.expect("answer");
        assert!(t.elapsed() >= STALL, "{:?}", t.elapsed());
        assert_eq!(r.status(), 502, "then forwarded (nothing upstream)");
        proxy.set_enabled(false);
        let t = std::time::Instant::now();
        http.post(&proxy.url).header("x-amz-target", "AmazonSQS.ListQueues").send().await.expect("answer");
        assert!(t.elapsed() < STALL);
        assert_eq!(proxy.stats()[&Service::Sqs].calls, 2);
        assert_eq!(proxy.stats()[&Service::Sqs].faulted(), 1);
    }
}
