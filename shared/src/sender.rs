//! The sender: takes an SQS batch, delivers every message concurrently
//! (bounded), and reports the messages to redeliver as `batchItemFailures`.
//!
//! One delivery is [`Sender::deliver`]: claim (conditional write with a
//! lease), send, record the attempt, move the task on. It returns a
//! [`DeliveryOutcome`], so tests drive it without sleeping. Retries wait on
//! the message's visibility timeout; waits SQS cannot hold (over 12 hours, or
//! past the message's retention) become a one-time Scheduler schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::domain::{
    Attempt, Blocked, EpochMillis, Outcome, QueueMessage, ReceiverHints, RequestSpec, RetryPolicy, TargetGuard, TaskId,
    TaskState, TaskStatus, format_millis, mask_headers, mask_url, now_millis,
};
use crate::metrics;
use crate::ports::{Claim, DeliveryQueue, Scheduler, StoreError, TaskStore, TenantStore, Transition, Unit};
use crate::resources::QUEUE_RETENTION_S;

/// Courier's version, sent in `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The longest retry wait left to the message's visibility timeout (SQS allows
/// 12 hours; a minute is kept in hand).
pub const MAX_VISIBILITY_WAIT: Duration = Duration::from_secs(43_200 - 60);
/// How close to its retention a message may come before its retry moves to Scheduler.
const RETENTION_MARGIN_MS: i64 = 3_600_000;
/// Response headers kept per attempt.
const MAX_RESPONSE_HEADERS: usize = 50;
/// Time kept in hand after a request's timeout, before the invocation's
/// deadline, to record the attempt and move the task on (a few store calls,
/// with the SDK's own retries).
pub const RECORD_MARGIN_MS: i64 = 5_000;
/// A message there is no time for in this invocation comes back this soon.
const NO_TIME_RETRY: Duration = Duration::from_secs(1);
/// What the sender says about an attempt a stopped sender left unfinished.
pub const INTERRUPTED_REASON: &str = "sender stopped during the attempt (lease expired)";

/// What one delivery did.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryOutcome {
    /// The target answered with success.
    Delivered { attempt: u32 },
    /// The attempt failed and another is due after `delay`.
    RetryScheduled { attempt: u32, delay: Duration },
    /// The task failed for good (stopped or exhausted).
    Failed { attempt: u32, reason: String },
    /// Not due yet (an early or duplicate delivery): look again after `delay`.
    Deferred { delay: Duration },
    /// Nothing was sent: the task is final, leased by another sender, or the lease was lost.
    Skipped { reason: &'static str },
    /// Nothing was sent: the request could not finish and be recorded before
    /// the invocation's deadline. Another invocation takes it soon.
    NoTime,
    /// The message names no task: park it on the DLQ.
    Poison { reason: String },
}

/// Settings the sender reads from [`crate::Config`].
#[derive(Clone, Debug)]
pub struct SenderSettings {
    pub concurrency: usize,
    pub response_body_limit: usize,
    pub lease_margin_ms: u64,
    /// A one-time schedule for a long retry fires this long before its time.
    pub schedule_early_s: u64,
}

/// The HTTP clients: connection reuse, HTTP/2 when offered (ALPN), rustls,
/// no proxies from the environment. Redirects are not followed unless a task
/// asks. Both clients carry the target guard: a resolver that drops refused
/// addresses at connect time (so a name cannot rebind past it), and a
/// redirect policy that checks every hop; IP-literal URLs, which skip the
/// resolver, are checked by [`HttpClients::check`] before sending.
#[derive(Debug)]
pub struct HttpClients {
    guard: Arc<TargetGuard>,
    direct: reqwest::Client,
    following: reqwest::Client,
}

/// The HTTP client could not be built: the sender must not start (a default
/// client would follow redirects, wait forever and skip the guard).
#[derive(Debug, thiserror::Error)]
#[error("the HTTP client cannot be built")]
pub struct HttpClientError(#[source] reqwest::Error);

/// How many redirects a task that follows them may take.
const MAX_REDIRECTS: usize = 5;

tokio::task_local! {
    /// The port of the hop being sent: the resolver only sees a name, and an
    /// allow-list entry may name a port. Set around each send, moved on by
    /// the redirect policy; absent, only entries without a port apply.
    static HOP_PORT: std::cell::Cell<Option<u16>>;
}

/// Resolves names with the system resolver and keeps only the addresses the guard allows.
struct GuardedResolver {
    guard: Arc<TargetGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let port = HOP_PORT.try_with(std::cell::Cell::get).ok().flatten();
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = guard.filter_resolved(&host, port, found)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl HttpClients {
    /// Builds both clients at init, where Lambda does not bill the first invocation for it.
    pub fn new(guard: TargetGuard) -> Result<Self, HttpClientError> {
        Self::with_user_agent(guard, &format!("Courier/{VERSION}"))
    }

    fn with_user_agent(guard: TargetGuard, user_agent: &str) -> Result<Self, HttpClientError> {
        let guard = Arc::new(guard);
        let build = |policy| {
            reqwest::Client::builder()
                .user_agent(user_agent)
                .redirect(policy)
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver { guard: guard.clone() }))
                .pool_idle_timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(HttpClientError)
        };
        let hop_guard = guard.clone();
        let follow = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("stopped after {MAX_REDIRECTS} redirects"));
            }
            match hop_guard.check_url(attempt.url()) {
                Err(Blocked(why)) => {
                    let hop = mask_url(attempt.url().as_str());
                    attempt.error(Blocked(format!("redirect to {hop}: {why}")))
                }
                Ok(()) => {
                    let port = attempt.url().port_or_known_default();
                    let _ = HOP_PORT.try_with(|p| p.set(port));
                    attempt.follow()
                }
            }
        });
        Ok(Self { direct: build(reqwest::redirect::Policy::none())?, following: build(follow)?, guard })
    }

    fn get(&self, follow: bool) -> &reqwest::Client {
        if follow { &self.following } else { &self.direct }
    }

    /// Judges a URL before it is sent (scheme, and the host when it is an address).
    pub fn check(&self, url: &url::Url) -> Result<(), Blocked> {
        self.guard.check_url(url)
    }

    /// Sends a request with the port of its first hop known to the resolver.
    async fn send(&self, req: reqwest::RequestBuilder, port: Option<u16>) -> Result<reqwest::Response, reqwest::Error> {
        HOP_PORT.scope(std::cell::Cell::new(port), req.send()).await
    }
}

/// The sender with its clients, built once per cold start.
pub struct Sender<S, Q, C> {
    store: S,
    queue: Q,
    scheduler: C,
    http: HttpClients,
    settings: SenderSettings,
}

/// One record's result: keep it on the queue for redelivery or not.
struct Handled {
    keep: bool,
}

impl<S: TaskStore + TenantStore, Q: DeliveryQueue, C: Scheduler> Sender<S, Q, C> {
    pub fn new(store: S, queue: Q, scheduler: C, http: HttpClients, settings: SenderSettings) -> Self {
        Self { store, queue, scheduler, http, settings }
    }

    /// Handles one SQS batch: every record concurrently, failures reported by
    /// id. `deadline` (epoch ms) is when the invocation ends: no request starts
    /// that could not finish and be recorded before it.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<EpochMillis>) -> SqsBatchResponse {
        let handled: Vec<(String, Handled)> = futures_util::stream::iter(event.records)
            .map(|record| async move {
                (record.message_id.clone().unwrap_or_default(), self.process(&record, deadline).await)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut resp = SqsBatchResponse::default();
        for (message_id, h) in handled {
            if h.keep {
                let mut f = BatchItemFailure::default();
                f.item_identifier = message_id;
                resp.batch_item_failures.push(f);
            }
        }
        resp
    }

    #[tracing::instrument(skip_all, fields(message_id = record.message_id.as_deref().unwrap_or_default()))]
    async fn process(&self, record: &SqsMessage, deadline: Option<EpochMillis>) -> Handled {
        if deadline.is_some_and(|d| now_millis() + RECORD_MARGIN_MS >= d) {
            tracing::info!("no time left in this invocation; the message comes back soon");
            return Handled { keep: self.retry_later(record, NO_TIME_RETRY).await };
        }
        let body = record.body.as_deref().unwrap_or_default();
        let (task_id, run) = match QueueMessage::from_body(body) {
            Some(QueueMessage::ReplayV1 { replay_id, chain, page }) => {
                let res = crate::replays::step(&self.store, &self.queue, &replay_id, chain, page).await;
                if let Err(e) = &res {
                    tracing::error!(replay_id = %replay_id, error = %e, "replay page failed; it will be retried");
                }
                return Handled { keep: res.is_err() };
            }
            Some(QueueMessage::DeliverV1 { task_id, run }) => (task_id, Ok(run)),
            Some(QueueMessage::CronV1 { task_id, scheduled_time }) => {
                (task_id, QueueMessage::scheduled_run(&scheduled_time).map(Some))
            }
            None => (String::new(), Err("unreadable message body".to_owned())),
        };
        let (unit, outcome) = match self.unit_of(&task_id, run).await {
            Err(e) => (None, Err(e)),
            Ok(Err(reason)) => (None, Ok(DeliveryOutcome::Poison { reason })),
            Ok(Ok(None)) => (None, Ok(DeliveryOutcome::Skipped { reason: "cron task not active" })),
            Ok(Ok(Some(unit))) => match self.deliver(&unit, deadline).await {
                Ok((outcome, tenant)) => (tenant.map(|t| (unit, t)), Ok(outcome)),
                Err(e) => (None, Err(e)),
            },
        };
        let keep = |keep: bool| Handled { keep };
        match outcome {
            Ok(DeliveryOutcome::Skipped { .. }) => keep(false),
            Ok(DeliveryOutcome::NoTime) => {
                tracing::info!(task_id = %task_id, "no time left for this request in this invocation; it comes back soon");
                keep(self.retry_later(record, NO_TIME_RETRY).await)
            }
            Ok(DeliveryOutcome::Delivered { .. }) => keep(false),
            Ok(DeliveryOutcome::RetryScheduled { delay, .. }) => {
                let sent_at = record.attributes.get("SentTimestamp").and_then(|t| t.parse::<i64>().ok());
                match (&unit, wait_needs_scheduler(delay, sent_at, now_millis())) {
                    (Some((u, _)), true) => keep(self.schedule_retry(u, delay).await.is_err()),
                    _ => keep(self.retry_later(record, delay).await),
                }
            }
            Ok(DeliveryOutcome::Deferred { delay }) => {
                emit(metrics::DEFERRED, unit.as_ref().map(|(u, _)| &u.task), None);
                keep(self.retry_later(record, delay).await)
            }
            Ok(DeliveryOutcome::Failed { reason, .. }) => {
                let (task_id, run, tenant) = match &unit {
                    Some((u, t)) => (Some(u.task.to_string()), u.run.map(format_millis), Some(t.clone())),
                    None => (None, None, None),
                };
                let doc = json!({"type": "task.failed.v1", "task_id": task_id, "run": run, "tenant": tenant, "reason": reason});
                keep(self.park(doc).await.is_err())
            }
            Ok(DeliveryOutcome::Poison { reason }) => {
                tracing::error!(reason = %reason, "poison message");
                keep(self.park(json!({"type": "poison.v1", "reason": reason, "body": body})).await.is_err())
            }
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "delivery interrupted; message will be redelivered");
                keep(true)
            }
        }
    }

    /// Leaves the message for redelivery after `delay`; always true (keep it).
    async fn retry_later(&self, record: &SqsMessage, delay: Duration) -> bool {
        let receipt = record.receipt_handle.as_deref().unwrap_or_default();
        if let Err(e) = self.queue.retry_later(receipt, delay).await {
            // The queue's visibility timeout brings the message back anyway.
            tracing::warn!(error = %e, "could not set the retry delay");
        }
        true
    }

    /// A retry SQS cannot wait for: a one-time schedule, then the message goes.
    async fn schedule_retry(&self, unit: &Unit, delay: Duration) -> Result<(), ()> {
        let due = now_millis() + delay.as_millis() as i64;
        let handoff = crate::domain::scheduler_handoff(due, Duration::from_secs(self.settings.schedule_early_s));
        let msg = QueueMessage::DeliverV1 { task_id: unit.task.to_string(), run: unit.run };
        let name = format!("{}-r{}", unit.task, now_millis());
        match self.scheduler.create_at(&name, handoff.fire_at, &msg, handoff.delay).await {
            Ok(()) => {
                tracing::info!(task_id = %unit.task, schedule = %name, due = %format_millis(due), "long retry wait handed to Scheduler");
                Ok(())
            }
            Err(e) => {
                tracing::error!(task_id = %unit.task, error = %e, "could not schedule a long retry; the message stays");
                Err(())
            }
        }
    }

    /// Resolves a message's task and run: the unit to deliver, `None` for a firing of a cron
    /// task that is not active, or the reason it is poison. Only a cron firing
    /// costs a read here (of its task); a one-off task is read by its claim.
    async fn unit_of(
        &self,
        task_id: &str,
        run: Result<Option<EpochMillis>, String>,
    ) -> Result<Result<Option<Unit>, String>, StoreError> {
        let run = match run {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let task = match TaskId::parse(task_id) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Some(run) = run {
            let Some(parent) = self.store.read_state(&Unit { task: task.clone(), run: None }).await? else {
                return Ok(Err(format!("no task {task}")));
            };
            if parent.status != TaskStatus::Active {
                tracing::info!(task_id = %task, status = parent.status.as_str(), "cron firing ignored");
                return Ok(Ok(None));
            }
            self.store.start_run(&parent, run).await?;
        }
        Ok(Ok(Some(Unit { task, run })))
    }

    async fn park(&self, doc: Value) -> Result<(), ()> {
        self.queue.dead_letter(doc.to_string()).await.map_err(|e| {
            tracing::error!(error = %e, "could not write to the DLQ; message will be redelivered");
        })
    }

    /// Delivers one unit: claim, send, record, transition. Returns what
    /// happened and, once claimed, the task's tenant. With a `deadline`, the
    /// claim only takes a task whose request timeout fits before it with
    /// [`RECORD_MARGIN_MS`] to spare.
    #[tracing::instrument(skip_all, fields(task_id = %unit.task, run = unit.run))]
    pub async fn deliver(
        &self,
        unit: &Unit,
        deadline: Option<EpochMillis>,
    ) -> Result<(DeliveryOutcome, Option<String>), StoreError> {
        let now = now_millis();
        let budget = deadline.map(|d| d - now - RECORD_MARGIN_MS);
        if budget.is_some_and(|b| b < 1) {
            return Ok((DeliveryOutcome::NoTime, None));
        }
        let budget = budget.map(|b| b as u64);
        let (state, interrupted_at) =
            match self.store.claim(unit, now, self.settings.lease_margin_ms as i64, budget).await? {
                Claim::Claimed { state, interrupted_at } => (state, interrupted_at),
                Claim::NoTime => return Ok((DeliveryOutcome::NoTime, None)),
                Claim::NotDue(due) => {
                    return Ok((
                        DeliveryOutcome::Deferred { delay: Duration::from_millis((due - now).max(0) as u64) },
                        None,
                    ));
                }
                Claim::NotClaimable(status) => {
                    tracing::info!(status = status.as_str(), "not claimable; acknowledged without sending");
                    return Ok((DeliveryOutcome::Skipped { reason: "not claimable" }, None));
                }
                Claim::Missing => {
                    return Ok((DeliveryOutcome::Poison { reason: format!("no task {}", unit.task) }, None));
                }
            };
        let tenant = Some(state.tenant.clone());
        let Some((spec, retry)) = self.store.get_spec(&unit.task).await? else {
            // Nothing can ever be sent: end it (its slot comes back), then park the message.
            let reason = format!("task {} has no request spec", unit.task);
            let failed = Transition::Failed { reason: reason.clone(), status: None };
            if !self.store.finish(unit, state.attempts, &failed, now_millis()).await? {
                return Ok((DeliveryOutcome::Skipped { reason: "lease lost" }, tenant));
            }
            return Ok((DeliveryOutcome::Poison { reason }, tenant));
        };
        if let Some(started_at) = interrupted_at {
            self.note_interrupted(unit, &state, &spec, started_at).await;
        }
        let number = state.attempts;
        let (mut attempt, hints) = self.send(&state, &spec).await;
        let decision = decide(&retry, &spec, &attempt, hints, number - state.retry_base, fastrand::f64());
        if let Decision::Retry(delay) = decision {
            attempt.next_delay_ms = Some(delay.as_millis() as u64);
        }
        tracing::info!(
            tenant = %state.tenant,
            attempt = number,
            outcome = attempt.outcome.as_str(),
            status = attempt.status_code,
            duration_ms = attempt.duration_ms,
            error = attempt.error.as_deref(),
            "attempt"
        );
        // The request went out: losing its record now would send it again.
        persist(deadline, || self.store.record_attempt(unit, &attempt)).await?;
        let at = now_millis();
        let (transition, result, metric) = match decision {
            Decision::Succeed => {
                (Transition::Succeeded, DeliveryOutcome::Delivered { attempt: number }, metrics::DELIVERED)
            }
            Decision::Retry(delay) => (
                Transition::Retry { due_at: at + delay.as_millis() as i64, status: attempt.status_code },
                DeliveryOutcome::RetryScheduled { attempt: number, delay },
                metrics::RETRIED,
            ),
            Decision::Fail(reason) => (
                Transition::Failed { reason: reason.clone(), status: attempt.status_code },
                DeliveryOutcome::Failed { attempt: number, reason },
                metrics::FAILED,
            ),
        };
        if !persist(deadline, || self.store.finish(unit, number, &transition, at)).await? {
            return Ok((DeliveryOutcome::Skipped { reason: "lease lost" }, tenant));
        }
        let lag = state.due_at.filter(|_| number == state.retry_base + 1).map(|due| attempt.started_at - due);
        emit(metric, Some(&unit.task), Some((&attempt, lag)));
        Ok((result, tenant))
    }

    /// Records the attempt a stopped sender left unfinished (the claim took
    /// over its expired lease). Best effort: the delivery goes on without it.
    async fn note_interrupted(&self, unit: &Unit, state: &TaskState, spec: &RequestSpec, started_at: EpochMillis) {
        let number = state.attempts.saturating_sub(1);
        let attempt = Attempt {
            run: state.run,
            number,
            started_at,
            method: spec.method.as_str().to_owned(),
            url: spec.url.masked(),
            request_headers: Vec::new(),
            request_body_size: spec.body.as_ref().map_or(0, |b| b.len()),
            response_headers: Vec::new(),
            duration_ms: 0,
            status_code: None,
            outcome: Outcome::Interrupted,
            response_body: None,
            error: Some(INTERRUPTED_REASON.to_owned()),
            next_delay_ms: None,
        };
        tracing::warn!(tenant = %state.tenant, attempt = number, started_at = %format_millis(started_at), "previous attempt was interrupted");
        if let Err(e) = self.store.record_interrupted(unit, &attempt).await {
            tracing::warn!(error = %e, attempt = number, "could not record the interrupted attempt");
        }
    }

    async fn send(&self, state: &TaskState, spec: &RequestSpec) -> (Attempt, ReceiverHints) {
        let method = reqwest::Method::from_bytes(spec.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
        let client = self.http.get(spec.follow_redirects);
        let mut headers: Vec<(String, String)> = vec![
            ("user-agent".into(), format!("Courier/{VERSION}")),
            ("courier-task-id".into(), state.id.to_string()),
            ("courier-attempt".into(), state.attempts.to_string()),
        ];
        if let Some(b) = &state.business_id {
            headers.push(("courier-business-id".into(), b.clone()));
        }
        if let Some(run) = state.run {
            headers.push(("courier-scheduled-time".into(), format_millis(run)));
        }
        headers.extend(spec.headers.iter().cloned());
        if let Some(auth) = &spec.auth {
            headers.push(("authorization".into(), auth.header_value()));
        }
        let mut req = client.request(method, spec.url.as_str()).timeout(Duration::from_millis(spec.timeout_ms));
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let body_size = spec.body.as_ref().map_or(0, |b| b.len());
        if let Some(body) = &spec.body {
            req = req.body(body.to_bytes());
        }
        let started_at = now_millis();
        let clock = Instant::now();
        let mut hints = ReceiverHints::default();
        let mut response_headers = Vec::new();
        // An IP-literal URL never reaches the resolver: judge it here.
        let sent = match self.http.check(spec.url.url()) {
            Err(blocked) => Err(SendError::Blocked(blocked)),
            Ok(()) => self.http.send(req, spec.url.url().port_or_known_default()).await.map_err(SendError::Http),
        };
        let result = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let raw: Vec<(String, String)> = resp
                    .headers()
                    .iter()
                    .take(MAX_RESPONSE_HEADERS)
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                hints = ReceiverHints::from_response(status, now_millis(), |name| {
                    raw.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
                });
                response_headers = mask_headers(&raw);
                read_truncated(resp, self.settings.response_body_limit)
                    .await
                    .map(|body| (status, body))
                    .map_err(SendError::Http)
            }
            Err(e) => Err(e),
        };
        let duration_ms = clock.elapsed().as_millis() as u64;
        let (status_code, outcome, response_body, error) = match result {
            Ok((status, body)) => {
                let outcome = if hints.stop && !spec.rules.classify(status).eq(&Outcome::Success) {
                    Outcome::StoppedByReceiver
                } else {
                    spec.rules.classify(status)
                };
                (Some(status), outcome, Some(body), None)
            }
            Err(e) => (None, e.outcome(), None, Some(e.text())),
        };
        let attempt = Attempt {
            run: state.run,
            number: state.attempts,
            started_at,
            method: spec.method.as_str().to_owned(),
            url: spec.url.masked(),
            request_headers: mask_headers(&headers),
            request_body_size: body_size,
            response_headers,
            duration_ms,
            status_code,
            outcome,
            response_body,
            error,
            next_delay_ms: None,
        };
        (attempt, hints)
    }
}

/// Runs a store write that must not be lost (the request it records was
/// sent), trying again a few times past the SDK's own retries while the
/// invocation has time.
async fn persist<T, F, Fut>(deadline: Option<EpochMillis>, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 1;
    loop {
        match write().await {
            Err(StoreError::Unavailable(e))
                if tries < 4 && deadline.is_none_or(|d| now_millis() + wait.as_millis() as i64 + 1_000 < d) =>
            {
                tracing::warn!(error = %e, tries, "store write failed after the request was sent; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            res => return res,
        }
    }
}

/// Prints one EMF line for an attempt (or a deferral).
fn emit(metric: &str, task: Option<&TaskId>, attempt: Option<(&Attempt, Option<EpochMillis>)>) {
    let mut values: Vec<(&str, f64)> = vec![(metric, 1.0)];
    let mut props = Map::new();
    if let Some(t) = task {
        props.insert("task_id".into(), Value::String(t.to_string()));
    }
    if let Some((a, lag)) = attempt {
        values.push((metrics::ATTEMPT_DURATION_MS, a.duration_ms as f64));
        if let Some(lag) = lag {
            values.push((metrics::SCHEDULE_LAG_MS, lag.max(0) as f64));
        }
        props.insert("outcome".into(), Value::String(a.outcome.as_str().to_owned()));
        props.insert("attempt".into(), json!(a.number));
    }
    println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), &values, props));
}

/// Whether a retry wait is too long for the message's visibility timeout or
/// would outlive the message (SQS counts retention from the first send).
pub fn wait_needs_scheduler(delay: Duration, sent_at: Option<EpochMillis>, now: EpochMillis) -> bool {
    let retention_end = sent_at.map(|s| s + i64::from(QUEUE_RETENTION_S) * 1000 - RETENTION_MARGIN_MS);
    delay > MAX_VISIBILITY_WAIT || retention_end.is_some_and(|end| now + delay.as_millis() as i64 > end)
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Succeed,
    Retry(Duration),
    Fail(String),
}

/// Chooses the task's next step from the attempt: pure, so it is unit-tested.
/// `index` is the attempt's number within the current retry round (1-based);
/// `unit` is a uniform draw in `[0, 1)` for jitter. A receiver's wait
/// (`Courier-Retry-After`, or `Retry-After` on 429/503) replaces the backoff;
/// `Courier-Retry-After` also makes an otherwise final 4xx retry (not 410).
pub fn decide(
    retry: &RetryPolicy,
    spec: &RequestSpec,
    attempt: &Attempt,
    hints: ReceiverHints,
    index: u32,
    unit: f64,
) -> Decision {
    if attempt.outcome == Outcome::Success {
        return Decision::Succeed;
    }
    let n = attempt.number;
    let what = match (attempt.status_code, &attempt.error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(e)) => e.clone(),
        (None, None) => "no response".to_owned(),
    };
    let class = attempt.outcome.as_str();
    if attempt.outcome == Outcome::StoppedByReceiver {
        return Decision::Fail(format!("stopped by the receiver after attempt {n} ({what}, Courier-Retry: stop)"));
    }
    let asked = hints.retry_after.is_some() && attempt.status_code != Some(410);
    if !spec.rules.retryable(attempt.outcome, attempt.status_code) && !asked {
        return Decision::Fail(format!("stopped after attempt {n}: {class} ({what})"));
    }
    match retry.delay_after(index, unit) {
        Some(backoff) => Decision::Retry(hints.retry_after.unwrap_or(backoff)),
        None => Decision::Fail(format!("exhausted after {n} attempts: {class} ({what})")),
    }
}

/// Reads at most `limit` bytes of the body, as (lossy) UTF-8.
async fn read_truncated(mut resp: reqwest::Response, limit: usize) -> Result<String, reqwest::Error> {
    let mut buf = Vec::with_capacity(limit.min(4096));
    while buf.len() < limit {
        match resp.chunk().await? {
            Some(chunk) => buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]),
            None => break,
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Why a request got no response.
enum SendError {
    /// The guard refused the URL before sending.
    Blocked(Blocked),
    Http(reqwest::Error),
}

impl SendError {
    fn outcome(&self) -> Outcome {
        match self {
            Self::Blocked(_) => Outcome::Blocked,
            Self::Http(e) => classify_error(e),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Blocked(b) => b.to_string(),
            Self::Http(e) => match blocked_cause(e) {
                Some(b) => b.to_string(),
                None => error_text(e),
            },
        }
    }
}

/// The guard's refusal inside a client error: from the resolver (no address
/// left) or the redirect policy (a refused hop).
fn blocked_cause(e: &reqwest::Error) -> Option<&Blocked> {
    error_chain(e).find_map(|c| c.downcast_ref::<Blocked>())
}

fn classify_error(e: &reqwest::Error) -> Outcome {
    if blocked_cause(e).is_some() {
        return Outcome::Blocked;
    }
    if e.is_timeout() {
        return Outcome::Timeout;
    }
    let text = error_text(e).to_ascii_lowercase();
    if text.contains("dns") || text.contains("failed to lookup") || text.contains("name or service not known") {
        Outcome::Dns
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        Outcome::Tls
    } else {
        Outcome::Connect
    }
}

/// The error with its causes, e.g. `error sending request: client error (Connect): Connection refused`.
fn error_text(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error_chain(e) {
        let s = cause.to_string();
        if parts.last().is_none_or(|p| !p.contains(&s)) {
            parts.push(s);
        }
    }
    let mut text = parts.join(": ");
    if let Some(url) = e.url() {
        // The URL may carry credentials; the attempt already shows it, masked.
        text = text.replace(&format!(" for url ({url})"), "").replace(url.as_str(), &mask_url(url.as_str()));
    }
    text
}

/// Runs the sender function: builds its clients once and handles SQS batches
/// until the runtime stops.
pub async fn run(config: crate::Config, sdk: &aws_config::SdkConfig) -> Result<(), lambda_runtime::Error> {
    let sender = Sender::new(
        crate::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table, config.retention_days)
            .with_reconcile_grace(config.reconcile_grace_s as i64 * 1000),
        crate::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url, &config.dlq_url),
        crate::schedules::EventBridgeScheduler::new(
            aws_sdk_scheduler::Client::new(sdk),
            &config.schedule_group,
            &config.scheduler_role_arn,
            &config.queue_url,
            &config.queue_arn,
        ),
        HttpClients::new(config.target_guard.clone())?,
        SenderSettings {
            concurrency: config.sender_concurrency,
            response_body_limit: config.response_body_limit,
            lease_margin_ms: config.lease_margin_ms,
            schedule_early_s: config.schedule_early_s,
        },
    );
    let sender = &sender;
    lambda_runtime::run(lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
        let deadline = Some(event.context.deadline as EpochMillis).filter(|d| *d > 0);
        Ok::<_, lambda_runtime::Error>(sender.handle(event.payload, deadline).await)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ResponseRules;

    fn spec(rules: ResponseRules) -> RequestSpec {
        RequestSpec { rules, ..RequestSpec::example() }
    }

    fn attempt(number: u32, outcome: Outcome, status: Option<u16>) -> Attempt {
        Attempt {
            run: None,
            number,
            started_at: 0,
            method: "POST".into(),
            url: "https://e.com".into(),
            request_headers: vec![],
            request_body_size: 0,
            response_headers: vec![],
            duration_ms: 1,
            status_code: status,
            outcome,
            response_body: None,
            error: None,
            next_delay_ms: None,
        }
    }

    fn exact() -> RetryPolicy {
        RetryPolicy::Backoff { max_attempts: 4, initial_ms: 1_000, multiplier: 2.0, max_ms: 3_600_000, jitter: false }
    }

    fn d(a: &Attempt, hints: ReceiverHints) -> Decision {
        decide(&exact(), &spec(ResponseRules::default()), a, hints, a.number, 0.5)
    }

    #[test]
    fn success_ends_the_task() {
        assert_eq!(d(&attempt(1, Outcome::Success, Some(200)), ReceiverHints::default()), Decision::Succeed);
    }

    #[test]
    fn a_server_error_retries_until_attempts_run_out() {
        assert_eq!(
            d(&attempt(1, Outcome::ServerError, Some(500)), ReceiverHints::default()),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            d(&attempt(4, Outcome::ServerError, Some(500)), ReceiverHints::default()),
            Decision::Fail("exhausted after 4 attempts: server_error (HTTP 500)".into())
        );
    }

    #[test]
    fn a_client_error_stops_at_once_and_410_even_when_asked_to_retry() {
        assert_eq!(
            d(&attempt(1, Outcome::ClientError, Some(404)), ReceiverHints::default()),
            Decision::Fail("stopped after attempt 1: client_error (HTTP 404)".into())
        );
        let asked = ReceiverHints { stop: false, retry_after: Some(Duration::from_secs(9)) };
        assert_eq!(d(&attempt(1, Outcome::ClientError, Some(404)), asked), Decision::Retry(Duration::from_secs(9)));
        assert!(matches!(d(&attempt(1, Outcome::ClientError, Some(410)), asked), Decision::Fail(_)));
    }

    #[test]
    fn the_receiver_can_set_the_wait_or_stop() {
        let wait = ReceiverHints { stop: false, retry_after: Some(Duration::from_secs(30)) };
        assert_eq!(d(&attempt(2, Outcome::RateLimited, Some(429)), wait), Decision::Retry(Duration::from_secs(30)));
        assert_eq!(
            d(&attempt(1, Outcome::StoppedByReceiver, Some(503)), ReceiverHints { stop: true, retry_after: None }),
            Decision::Fail("stopped by the receiver after attempt 1 (HTTP 503, Courier-Retry: stop)".into())
        );
    }

    #[test]
    fn a_manual_retry_round_restarts_the_policy() {
        // Attempt 6 is the 2nd of a new round (retry_base 4): the policy's 2nd wait.
        let a = attempt(6, Outcome::ServerError, Some(500));
        assert_eq!(
            decide(&exact(), &spec(ResponseRules::default()), &a, ReceiverHints::default(), 2, 0.5),
            Decision::Retry(Duration::from_secs(2))
        );
    }

    #[test]
    fn the_longest_request_fits_in_a_fresh_invocation_with_its_recording_margin() {
        // Otherwise a task with the longest timeout would come back every second, never sent.
        let invocation_ms = i64::from(crate::resources::SENDER_TIMEOUT_S) * 1000;
        assert!(RequestSpec::MAX_TIMEOUT_MS as i64 + RECORD_MARGIN_MS + 1_000 < invocation_ms);
    }

    #[test]
    fn a_client_that_cannot_be_built_fails_the_cold_start_instead_of_falling_back() {
        assert!(HttpClients::with_user_agent(TargetGuard::default(), "Courier\n").is_err());
        assert!(HttpClients::new(TargetGuard::default()).is_ok());
    }

    /// A loopback HTTP server answering 200 to every request; returns its port.
    async fn loopback_ok() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            }
        });
        port
    }

    async fn get(http: &HttpClients, url: &str) -> Result<u16, SendError> {
        let url = url::Url::parse(url).expect("url");
        http.check(&url).map_err(SendError::Blocked)?;
        let req = http.get(false).get(url.as_str());
        http.send(req, url.port_or_known_default()).await.map(|r| r.status().as_u16()).map_err(SendError::Http)
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_refused_addresses_is_blocked_before_any_connection() {
        let port = loopback_ok().await;
        let http = HttpClients::new(TargetGuard::default()).expect("client");
        let e = get(&http, &format!("http://localhost:{port}/")).await.expect_err("localhost is loopback");
        assert_eq!(e.outcome(), Outcome::Blocked);
        assert!(e.text().starts_with("blocked: localhost resolves only to refused addresses ("), "{}", e.text());
        let e = get(&http, &format!("http://127.0.0.1:{port}/")).await.expect_err("a loopback literal");
        assert_eq!(e.text(), "blocked: 127.0.0.1 is loopback (policy public)");
        let local = HttpClients::new(TargetGuard::new(crate::domain::TargetPolicy::LocalOnly, vec![])).expect("client");
        assert_eq!(get(&local, &format!("http://localhost:{port}/")).await.ok(), Some(200));
    }

    #[tokio::test]
    async fn the_resolver_knows_the_port_so_a_ported_entry_lets_only_that_port_through() {
        let (open, other) = (loopback_ok().await, loopback_ok().await);
        let allow = TargetGuard::parse_allowlist(&format!("127.0.0.1:{open}")).expect("valid");
        let http = HttpClients::new(TargetGuard::new(crate::domain::TargetPolicy::Public, allow)).expect("client");
        assert_eq!(get(&http, &format!("http://localhost:{open}/")).await.ok(), Some(200));
        assert_eq!(get(&http, &format!("http://127.0.0.1:{open}/")).await.ok(), Some(200));
        let e = get(&http, &format!("http://localhost:{other}/")).await.expect_err("another port");
        assert_eq!(e.outcome(), Outcome::Blocked);
        let e = get(&http, &format!("http://127.0.0.1:{other}/")).await.expect_err("another port");
        assert_eq!(e.outcome(), Outcome::Blocked);
    }

    #[test]
    fn long_waits_and_old_messages_go_to_the_scheduler() {
        let now = 1_000_000_000_000;
        assert!(!wait_needs_scheduler(Duration::from_secs(3600), Some(now), now));
        assert!(wait_needs_scheduler(Duration::from_secs(13 * 3600), Some(now), now));
        let old = now - 13 * 86_400_000;
        assert!(wait_needs_scheduler(Duration::from_secs(86_400), Some(old), now));
        assert!(!wait_needs_scheduler(Duration::from_secs(60), None, now));
    }
}
