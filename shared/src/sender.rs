//! The sender: takes an SQS batch, delivers every message concurrently
//! (bounded), and reports the messages to redeliver as `batchItemFailures`.
//!
//! One delivery is [`Sender::deliver`]: claim (conditional write with a
//! lease), send, record the attempt, move the task on. It returns a
//! [`DeliveryOutcome`], so tests drive it without sleeping.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::StreamExt;
use serde_json::json;

use std::collections::HashMap;

use crate::domain::{
    Attempt, Outcome, QueueMessage, RequestSpec, RetryPolicy, TaskId, TaskState, TaskStatus, classify_status,
    format_millis, now_millis,
};
use crate::ports::{Claim, DeliveryQueue, StoreError, TaskStore, TenantStore, Transition, Unit};

/// Courier's version, sent in `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    /// The message names no task: park it on the DLQ.
    Poison { reason: String },
}

/// Settings the sender reads from [`crate::Config`].
#[derive(Clone, Debug)]
pub struct SenderSettings {
    pub concurrency: usize,
    pub response_body_limit: usize,
    pub lease_margin_ms: u64,
}

/// The sender with its clients, built once per cold start.
pub struct Sender<S, Q> {
    store: S,
    queue: Q,
    http: reqwest::Client,
    settings: SenderSettings,
}

/// The one HTTP client: connection reuse, HTTP/2 when offered (ALPN), rustls,
/// no redirects followed.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(format!("Courier/{VERSION}"))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// One record's result: keep it on the queue or not, and whether a one-off
/// task of some tenant finished (its active-task slot is released per batch).
struct Handled {
    keep: bool,
    finished_tenant: Option<String>,
}

impl<S: TaskStore + TenantStore, Q: DeliveryQueue> Sender<S, Q> {
    pub fn new(store: S, queue: Q, http: reqwest::Client, settings: SenderSettings) -> Self {
        Self { store, queue, http, settings }
    }

    /// Handles one SQS batch: every record concurrently, failures reported by id.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let handled: Vec<(String, Handled)> = futures_util::stream::iter(event.records)
            .map(|record| async move { (record.message_id.clone().unwrap_or_default(), self.process(&record).await) })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut finished: HashMap<String, u64> = HashMap::new();
        let mut resp = SqsBatchResponse::default();
        for (message_id, h) in handled {
            if let Some(t) = h.finished_tenant {
                *finished.entry(t).or_default() += 1;
            }
            if h.keep {
                let mut f = BatchItemFailure::default();
                f.item_identifier = message_id;
                resp.batch_item_failures.push(f);
            }
        }
        // One counter write per tenant per batch, not per task.
        for (tenant, n) in finished {
            if let Err(e) = self.store.release_active(&tenant, n).await {
                tracing::error!(tenant = %tenant, error = %e, "could not release active-task slots");
            }
        }
        resp
    }

    #[tracing::instrument(skip_all, fields(message_id = record.message_id.as_deref().unwrap_or_default()))]
    async fn process(&self, record: &SqsMessage) -> Handled {
        let body = record.body.as_deref().unwrap_or_default();
        let (unit, outcome) = match self.unit_of(body).await {
            Err(e) => (None, Err(e)),
            Ok(Err(reason)) => (None, Ok(DeliveryOutcome::Poison { reason })),
            Ok(Ok(None)) => (None, Ok(DeliveryOutcome::Skipped { reason: "cron task not active" })),
            Ok(Ok(Some((unit, tenant)))) => {
                let outcome = self.deliver(&unit).await;
                (Some((unit, tenant)), outcome)
            }
        };
        let keep = |keep: bool| Handled { keep, finished_tenant: None };
        match outcome {
            Ok(DeliveryOutcome::Skipped { .. }) => keep(false),
            Ok(DeliveryOutcome::Delivered { .. }) => Handled { keep: false, finished_tenant: one_off_tenant(&unit) },
            Ok(DeliveryOutcome::RetryScheduled { delay, .. } | DeliveryOutcome::Deferred { delay }) => {
                let receipt = record.receipt_handle.as_deref().unwrap_or_default();
                if let Err(e) = self.queue.retry_later(receipt, delay).await {
                    // The queue's visibility timeout brings the message back anyway.
                    tracing::warn!(error = %e, "could not set the retry delay");
                }
                keep(true)
            }
            Ok(DeliveryOutcome::Failed { reason, .. }) => {
                let (task_id, run, tenant) = match &unit {
                    Some((u, t)) => (Some(u.task.to_string()), u.run.map(format_millis), Some(t.clone())),
                    None => (None, None, None),
                };
                let doc = json!({"type": "task.failed.v1", "task_id": task_id, "run": run, "tenant": tenant, "reason": reason});
                Handled { keep: self.park(doc).await.is_err(), finished_tenant: one_off_tenant(&unit) }
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

    /// Reads a message: the unit to deliver with its tenant, `None` for a firing
    /// of a cron task that is not active, or the reason it is poison.
    async fn unit_of(&self, body: &str) -> Result<Result<Option<(Unit, String)>, String>, StoreError> {
        let Some(msg) = QueueMessage::from_body(body) else { return Ok(Err("unreadable message body".into())) };
        let task = match TaskId::parse(msg.task_id()) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let run = match msg.run() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let Some(parent) = self.store.read_state(&Unit { task: task.clone(), run: None }).await? else {
            return Ok(Err(format!("no task {task}")));
        };
        if let Some(run) = run {
            if parent.status != TaskStatus::Active {
                tracing::info!(task_id = %task, status = parent.status.as_str(), "cron firing ignored");
                return Ok(Ok(None));
            }
            self.store.start_run(&parent, run).await?;
        }
        Ok(Ok(Some((Unit { task, run }, parent.tenant))))
    }

    async fn park(&self, doc: serde_json::Value) -> Result<(), ()> {
        self.queue.dead_letter(doc.to_string()).await.map_err(|e| {
            tracing::error!(error = %e, "could not write to the DLQ; message will be redelivered");
        })
    }

    /// Delivers one unit: claim, send, record, transition.
    #[tracing::instrument(skip_all, fields(task_id = %unit.task, run = unit.run))]
    pub async fn deliver(&self, unit: &Unit) -> Result<DeliveryOutcome, StoreError> {
        let now = now_millis();
        let lease_until = now + (RequestSpec::MAX_TIMEOUT_MS + self.settings.lease_margin_ms) as i64;
        let state = match self.store.claim(unit, now, lease_until).await? {
            Claim::Claimed(state) => state,
            Claim::NotDue(due) => {
                return Ok(DeliveryOutcome::Deferred { delay: Duration::from_millis((due - now).max(0) as u64) });
            }
            Claim::NotClaimable(status) => {
                tracing::info!(status = status.as_str(), "not claimable; acknowledged without sending");
                return Ok(DeliveryOutcome::Skipped { reason: "not claimable" });
            }
            Claim::Missing => return Ok(DeliveryOutcome::Poison { reason: format!("no task {}", unit.task) }),
        };
        let Some((spec, retry)) = self.store.get_spec(&unit.task).await? else {
            return Ok(DeliveryOutcome::Poison { reason: format!("task {} has no request spec", unit.task) });
        };
        let number = state.attempts;
        let mut attempt = self.send(&state, &spec).await;
        let decision = decide(&retry, &attempt, fastrand::f64());
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
        self.store.record_attempt(unit, &attempt).await?;
        let at = now_millis();
        let (transition, result) = match decision {
            Decision::Succeed => (Transition::Succeeded, DeliveryOutcome::Delivered { attempt: number }),
            Decision::Retry(delay) => (
                Transition::Retry { due_at: at + delay.as_millis() as i64 },
                DeliveryOutcome::RetryScheduled { attempt: number, delay },
            ),
            Decision::Fail(reason) => {
                (Transition::Failed { reason: reason.clone() }, DeliveryOutcome::Failed { attempt: number, reason })
            }
        };
        if !self.store.finish(unit, number, &transition, at).await? {
            return Ok(DeliveryOutcome::Skipped { reason: "lease lost" });
        }
        Ok(result)
    }

    async fn send(&self, state: &TaskState, spec: &RequestSpec) -> Attempt {
        let method = reqwest::Method::from_bytes(spec.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut req = self
            .http
            .request(method, spec.url.as_str())
            .timeout(Duration::from_millis(spec.timeout_ms))
            .header("Courier-Task-Id", state.id.as_str())
            .header("Courier-Attempt", state.attempts.to_string());
        if let Some(b) = &state.business_id {
            req = req.header("Courier-Business-Id", b);
        }
        if let Some(run) = state.run {
            req = req.header("Courier-Scheduled-Time", format_millis(run));
        }
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        if let Some(auth) = &spec.auth {
            req = req.header("Authorization", auth.header_value());
        }
        if let Some(body) = &spec.body {
            req = req.body(body.to_bytes());
        }
        let started_at = now_millis();
        let clock = Instant::now();
        let result = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                read_truncated(resp, self.settings.response_body_limit).await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let duration_ms = clock.elapsed().as_millis() as u64;
        let (status_code, outcome, response_body, error) = match result {
            Ok((status, body)) => (Some(status), classify_status(status), Some(body), None),
            Err(e) => (None, classify_error(&e), None, Some(error_text(&e))),
        };
        Attempt {
            run: state.run,
            number: state.attempts,
            started_at,
            duration_ms,
            status_code,
            outcome,
            response_body,
            error,
            next_delay_ms: None,
        }
    }
}

/// The tenant whose active-task slot a finished unit frees: one-off tasks
/// only (a cron task holds its slot until cancelled).
fn one_off_tenant(unit: &Option<(Unit, String)>) -> Option<String> {
    unit.as_ref().filter(|(u, _)| u.run.is_none()).map(|(_, t)| t.clone())
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Succeed,
    Retry(Duration),
    Fail(String),
}

/// Chooses the task's next step from the attempt: pure, so it is unit-tested.
/// `unit` is a uniform draw in `[0, 1)` for jitter.
pub fn decide(retry: &RetryPolicy, attempt: &Attempt, unit: f64) -> Decision {
    let n = attempt.number;
    if attempt.outcome == Outcome::Success {
        return Decision::Succeed;
    }
    let what = match (attempt.status_code, &attempt.error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(e)) => e.clone(),
        (None, None) => "no response".to_owned(),
    };
    let class = attempt.outcome.as_str();
    if !attempt.outcome.is_retryable() {
        return Decision::Fail(format!("stopped after attempt {n}: {class} ({what})"));
    }
    match retry.delay_after(n, unit) {
        Some(delay) => Decision::Retry(delay),
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

fn classify_error(e: &reqwest::Error) -> Outcome {
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
        text = text.replace(&format!(" for url ({url})"), "");
    }
    text
}

/// Runs the sender function: builds its clients once and handles SQS batches
/// until the runtime stops.
pub async fn run(config: crate::Config, sdk: &aws_config::SdkConfig) -> Result<(), lambda_runtime::Error> {
    let sender = Sender::new(
        crate::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table, config.retention_days),
        crate::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url, &config.dlq_url),
        http_client(),
        SenderSettings {
            concurrency: config.sender_concurrency,
            response_body_limit: config.response_body_limit,
            lease_margin_ms: config.lease_margin_ms,
        },
    );
    let sender = &sender;
    lambda_runtime::run(lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
        Ok::<_, lambda_runtime::Error>(sender.handle(event.payload).await)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32, outcome: Outcome, status: Option<u16>) -> Attempt {
        Attempt {
            run: None,
            number,
            started_at: 0,
            duration_ms: 1,
            status_code: status,
            outcome,
            response_body: None,
            error: None,
            next_delay_ms: None,
        }
    }

    #[test]
    fn success_ends_the_task() {
        assert_eq!(decide(&RetryPolicy::default(), &attempt(1, Outcome::Success, Some(200)), 0.5), Decision::Succeed);
    }

    #[test]
    fn a_server_error_retries_until_attempts_run_out() {
        let p = RetryPolicy::Backoff {
            max_attempts: 4,
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 3_600_000,
            jitter: false,
        };
        let d = decide(&p, &attempt(1, Outcome::ServerError, Some(500)), 0.5);
        assert_eq!(d, Decision::Retry(Duration::from_secs(1)));
        let d = decide(&p, &attempt(4, Outcome::ServerError, Some(500)), 0.5);
        assert_eq!(d, Decision::Fail("exhausted after 4 attempts: server_error (HTTP 500)".into()));
    }

    #[test]
    fn a_client_error_stops_at_once() {
        let d = decide(&RetryPolicy::default(), &attempt(1, Outcome::ClientError, Some(404)), 0.5);
        assert_eq!(d, Decision::Fail("stopped after attempt 1: client_error (HTTP 404)".into()));
    }
}
