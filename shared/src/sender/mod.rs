//! The sender: takes an SQS batch, delivers every message concurrently
//! (bounded), and reports the messages to redeliver as `batchItemFailures`.
//!
//! One delivery is [`Sender::deliver`]: claim (conditional write with a
//! lease), send, record the attempt, move the task on. It returns a
//! [`DeliveryOutcome`], so tests drive it without sleeping. Retries wait on
//! the message's visibility timeout; waits SQS cannot hold (over 12 hours, or
//! past the message's retention) become a one-time Scheduler schedule.
//!
//! This module is the batch handler: one record in, what to do with its
//! message out. The steps live beside it: `deliver` (claim, send, record,
//! transition), `http` (the guarded HTTP clients, sending one attempt),
//! `retry` (the next step after an attempt, long waits handed to Scheduler)
//! and `dlq` (what is parked on the dead-letter queue). The function's
//! `main` builds the adapters and hands them to [`Sender::new`].

mod deliver;
mod dlq;
mod flow;
mod http;
mod retry;
mod signing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::StreamExt;

use crate::clock::{Clock, SystemClock};
use crate::domain::{DeadLetter, EpochMillis, FlowKey, FlowRef, QueueMessage, TaskId, TaskStatus};
use crate::metrics;
use crate::ports::{
    DeliveryLedger, DeliveryQueue, FieldSeal, FlowLimiter, FlowPolicies, ReplayStore, Scheduler, SigningSecrets,
    StoreError, TaskStore, TenantStore, Unit,
};

pub use deliver::INTERRUPTED_REASON;
use deliver::emit;
pub use flow::{Admission, FlowGate, Ticket};
pub use http::{HttpClientError, HttpClients, VERSION};
pub use retry::{Decision, MAX_VISIBILITY_WAIT, decide, wait_needs_scheduler};

/// Time kept in hand after a request's timeout, before the invocation's
/// deadline, to record the attempt and move the task on (a few store calls,
/// with the SDK's own retries).
pub const RECORD_MARGIN_MS: i64 = 5_000;
/// A message there is no time for in this invocation comes back this soon.
const NO_TIME_RETRY: Duration = Duration::from_secs(1);
/// The API sends a task's message before it writes the task: a message this
/// young whose task is missing waits in process, then looks once more.
const YOUNG_MS: i64 = 1_000;
/// How long a young message waits before it looks again.
const YOUNG_WAIT_MS: i64 = 250;
/// A message whose task is missing goes back to the queue while it is younger
/// than this (the task's write may still land), coming back after [`MISSING_RETRY`].
const MISSING_MAX_AGE_MS: i64 = 30_000;
const MISSING_RETRY: Duration = Duration::from_secs(5);

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
    /// Its task does not exist (yet: the API sends the message before it
    /// writes the task). Looked at again while the message is young, else poison.
    Missing,
}

/// Settings the sender reads from [`crate::Config`].
#[derive(Clone, Debug)]
pub struct SenderSettings {
    pub concurrency: usize,
    pub response_body_limit: usize,
    pub lease_margin_ms: u64,
    /// A one-time schedule for a long retry fires this long before its time.
    pub schedule_early_s: u64,
    /// Flow control: policy cache, slot horizon, default breaker.
    pub flow: crate::config::FlowConfig,
    /// How long a tenant's unsealed signing secrets are reused.
    pub signing_cache_ms: u64,
}

impl SenderSettings {
    /// The sender's share of the function's configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            concurrency: config.sender_concurrency,
            response_body_limit: config.response_body_limit,
            lease_margin_ms: config.lease_margin_ms,
            schedule_early_s: config.schedule_early_s,
            flow: config.flow.clone(),
            signing_cache_ms: config.signing_cache_ms,
        }
    }
}

/// The sender with its clients, built once per cold start.
pub struct Sender<S, Q, C> {
    store: S,
    queue: Q,
    scheduler: C,
    http: HttpClients,
    settings: SenderSettings,
    clock: Arc<dyn Clock>,
    /// Flow control's cache; lives as long as the warm container.
    flow: FlowGate,
    /// Tenants' signing secrets, unsealed; lives as long as the warm container.
    signing: signing::SecretCache,
}

/// What the sender did with one message of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Handled {
    pub message_id: String,
    /// Reported in `batchItemFailures`: the message stays on the queue for redelivery.
    pub keep: bool,
    pub outcome: MessageOutcome,
}

/// What one message led to, for the logs' and the tests' sake.
#[derive(Clone, Debug, PartialEq)]
pub enum MessageOutcome {
    /// A delivery message (one-off task or cron firing) and what its delivery did.
    Delivery(DeliveryOutcome),
    /// A replay page message: the step's outcome, or why it failed (retried).
    Replay(Result<crate::replays::StepOutcome, String>),
    /// A store call failed mid-delivery: the message is redelivered.
    Interrupted(String),
    /// Flow control held it back (a rate slot, a parallelism cap, a pause, an
    /// open breaker): re-sent to come back after `wait`; not an attempt.
    Held { reason: &'static str, wait: Duration },
    /// Another copy of the same delivery (task and run) came in this batch:
    /// that copy is handled and, if need be, comes back; this one is let go.
    Duplicate,
}

// The ledger delivers; the replay pages the sender also runs need the replay, task and tenant stores.
impl<
    S: DeliveryLedger + ReplayStore + TaskStore + TenantStore + FlowPolicies + FlowLimiter + SigningSecrets + FieldSeal,
    Q: DeliveryQueue,
    C: Scheduler,
> Sender<S, Q, C>
{
    pub fn new(store: S, queue: Q, scheduler: C, http: HttpClients, settings: SenderSettings) -> Self {
        let flow = FlowGate::new(settings.flow.clone(), settings.lease_margin_ms);
        let signing = signing::SecretCache::new(settings.signing_cache_ms);
        Self { store, queue, scheduler, http, settings, clock: Arc::new(SystemClock), flow, signing }
    }

    /// Reads the time from `clock` instead of the system's (tests set it).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Handles one SQS batch: every record concurrently, failures reported by
    /// id. `deadline` (epoch ms) is when the invocation ends: no request starts
    /// that could not finish and be recorded before it.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<EpochMillis>) -> SqsBatchResponse {
        let mut resp = SqsBatchResponse::default();
        for h in self.handle_each(event, deadline).await {
            if h.keep {
                let mut f = BatchItemFailure::default();
                f.item_identifier = h.message_id;
                resp.batch_item_failures.push(f);
            }
        }
        resp
    }

    /// Handles one SQS batch like [`Sender::handle`] and returns what each
    /// message led to (in completion order). Prints the batch's metrics as
    /// one EMF line at the end.
    pub async fn handle_each(&self, event: SqsEvent, deadline: Option<EpochMillis>) -> Vec<Handled> {
        let batch = std::cell::RefCell::new(metrics::BatchMetrics::default());
        let (out, batch) = deliver::BATCH
            .scope(batch, async {
                let out = self.handle_batch(event, deadline).await;
                (out, deliver::BATCH.with(std::cell::RefCell::take))
            })
            .await;
        if !batch.is_empty() {
            for line in batch.lines(metrics::SENDER_SERVICE, self.clock.now()) {
                println!("{line}");
            }
        }
        out
    }

    async fn handle_batch(&self, event: SqsEvent, deadline: Option<EpochMillis>) -> Vec<Handled> {
        let records = event.records;
        let mut messages: Vec<Option<QueueMessage>> =
            records.iter().map(|r| QueueMessage::from_body(r.body.as_deref().unwrap_or_default())).collect();
        // SQS delivers at least once: copies of one delivery in one batch are handled
        // once (one claim, one flow slot); the first copy stands for the others.
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut skip = vec![false; records.len()];
        for (i, m) in messages.iter_mut().enumerate() {
            let unit = match m {
                Some(QueueMessage::DeliverV1 { task_id, run, .. }) => (task_id.clone(), run.map(|r| r.to_string())),
                Some(QueueMessage::CronV1 { task_id, scheduled_time, .. }) => {
                    (task_id.clone(), Some(scheduled_time.clone()))
                }
                _ => continue,
            };
            if !seen.insert(unit) {
                *m = None;
                skip[i] = true;
                tracing::info!(
                    message_id = records[i].message_id.as_deref(),
                    "a second copy of a delivery in one batch"
                );
                out.push(Handled {
                    message_id: records[i].message_id.clone().unwrap_or_default(),
                    keep: false,
                    outcome: MessageOutcome::Duplicate,
                });
            }
        }
        // Flow control first, before any claim: group the deliveries by the keys they carry.
        let mut groups: HashMap<FlowRef, Vec<usize>> = HashMap::new();
        let mut timeouts: HashMap<FlowRef, u64> = HashMap::new();
        let mut primaries: HashMap<FlowKey, FlowRef> = HashMap::new();
        let mut tenants: Vec<Option<crate::domain::TenantId>> = vec![None; records.len()];
        for (i, m) in messages.iter().enumerate() {
            let Some(flow) = self.flow_of(m.as_ref()).await else { continue };
            tenants[i] = Some(flow.tenant.clone());
            let keys = flow.keys();
            let t = timeouts.entry(keys.clone()).or_default();
            *t = (*t).max(flow.timeout_ms);
            primaries.insert(flow.primary(), keys.clone());
            groups.entry(keys).or_default().push(i);
        }
        let mut tickets: Vec<Option<Ticket>> = skip.iter().map(|&dup| (!dup).then(Ticket::default)).collect();
        let mut held = Vec::new();
        for (keys, members) in groups {
            let flow = keys.clone().with_timeout(timeouts.get(&keys).copied().unwrap_or_default());
            for (i, admission) in self.admit(&flow, &members, deadline).await {
                match admission {
                    Admission::Go(t) => tickets[i] = Some(Ticket { tenant: tenants[i].clone(), ..t }),
                    hold @ Admission::Hold { .. } => {
                        tickets[i] = None;
                        held.push((i, hold));
                    }
                }
            }
        }
        out.extend(self.hold_back(&records, &messages, held).await);
        let leases: Vec<(FlowKey, (u32, i64))> = tickets.iter().flatten().flat_map(|t| t.leases.clone()).collect();
        let sent: Vec<Handled> = futures_util::stream::iter(records.iter().zip(tickets))
            .filter_map(|(record, ticket)| async move { ticket.map(|t| (record, t)) })
            .map(|(record, ticket)| async move {
                let (keep, outcome) = self.process(record, deadline, &ticket).await;
                Handled { message_id: record.message_id.clone().unwrap_or_default(), keep, outcome }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        out.extend(sent);
        self.release_all(leases).await;
        self.settle(&primaries).await;
        out
    }

    /// The flow keys of a delivery message: carried in it, or (a message
    /// written before flow control, by the reconciler or by Scheduler for a
    /// cron firing) read from its task. `None`: not a delivery, or no such task.
    async fn flow_of(&self, msg: Option<&QueueMessage>) -> Option<FlowRef> {
        let task = match msg? {
            QueueMessage::DeliverV1 { flow: Some(f), .. } | QueueMessage::CronV1 { flow: Some(f), .. } => {
                return Some(f.clone());
            }
            QueueMessage::DeliverV1 { task_id, .. } | QueueMessage::CronV1 { task_id, .. } => task_id,
            QueueMessage::ReplayV1 { .. } => return None,
        };
        let state = self.store.read_state(&Unit { task: task.clone(), run: None }).await.ok().flatten()?;
        let (spec, _) = self.store.get_spec(task).await.ok().flatten()?;
        Some(spec.flow_ref(&state.tenant))
    }

    /// Re-sends each held message as a new one that comes back after its
    /// wait, then lets the old one go (its receive count never grows). A
    /// message that cannot be re-sent stays, invisible for the wait.
    async fn hold_back(
        &self,
        records: &[SqsMessage],
        messages: &[Option<QueueMessage>],
        held: Vec<(usize, Admission)>,
    ) -> Vec<Handled> {
        let mut again = Vec::new();
        let mut what = Vec::new();
        for (i, a) in held {
            let (Some(msg), Admission::Hold { wait, reason, key, flow }) = (&messages[i], a) else { continue };
            let next = msg.held_again(flow);
            let (task, times) = match &next {
                QueueMessage::DeliverV1 { task_id, held, .. } | QueueMessage::CronV1 { task_id, held, .. } => {
                    (Some(task_id.as_str().to_owned()), *held)
                }
                QueueMessage::ReplayV1 { .. } => (None, 0),
            };
            // A long backlog on a limited key would otherwise come round every second or two:
            // each time a message is held again it may wait up to half a second longer.
            let wait = match reason {
                "rate" | "parallelism" => (wait
                    + Duration::from_millis(fastrand::u64(0..=u64::from(times.min(40)) * 500)))
                .min(flow::MAX_HOLD),
                _ => wait,
            };
            flow::emit_throttled(&key, reason, task.as_deref(), times);
            tracing::info!(flow_key = %key, reason, wait_ms = wait.as_millis() as u64, held = times, task_id = task.as_deref(), "delivery held back");
            again.push((next, wait));
            what.push((i, reason, wait));
        }
        if again.is_empty() {
            return Vec::new();
        }
        let failed = match self.queue.enqueue_many(&again).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-send held messages; they wait in place");
                (0..again.len()).collect()
            }
        };
        let mut out = Vec::new();
        for (j, (i, reason, wait)) in what.into_iter().enumerate() {
            let record = &records[i];
            let keep = failed.contains(&j) && self.retry_later(record, wait).await;
            out.push(Handled {
                message_id: record.message_id.clone().unwrap_or_default(),
                keep,
                outcome: MessageOutcome::Held { reason, wait },
            });
        }
        out
    }

    async fn process(
        &self,
        record: &SqsMessage,
        deadline: Option<EpochMillis>,
        ticket: &Ticket,
    ) -> (bool, MessageOutcome) {
        if deadline.is_some_and(|d| self.clock.now() + RECORD_MARGIN_MS >= d) {
            tracing::info!(
                message_id = record.message_id.as_deref(),
                "no time left in this invocation; the message comes back soon"
            );
            return (self.retry_later(record, NO_TIME_RETRY).await, MessageOutcome::Delivery(DeliveryOutcome::NoTime));
        }
        let body = record.body.as_deref().unwrap_or_default();
        let (task_id, run) = match QueueMessage::from_body(body) {
            Some(QueueMessage::ReplayV1 { replay_id, chain, page }) => {
                let res =
                    crate::replays::step_with(&self.store, &self.queue, &*self.clock, &replay_id, chain, page).await;
                if let Err(e) = &res {
                    tracing::error!(replay_id = %replay_id, error = %e, "replay page failed; it will be retried");
                }
                return (res.is_err(), MessageOutcome::Replay(res.map_err(|e| e.to_string())));
            }
            Some(QueueMessage::DeliverV1 { task_id, run, .. }) => (Some(task_id), Ok(run)),
            Some(QueueMessage::CronV1 { task_id, scheduled_time, .. }) => {
                (Some(task_id), QueueMessage::scheduled_run(&scheduled_time).map(Some))
            }
            // Ids are parsed with the body: a malformed one makes it unreadable.
            None => (None, Err("unreadable message body".to_owned())),
        };
        let (unit, outcome) = match self.unit_of(task_id.as_ref(), run).await {
            Err(e) => (None, Err(e)),
            Ok(Err(reason)) => (None, Ok(DeliveryOutcome::Poison { reason })),
            Ok(Ok(None)) => (None, Ok(DeliveryOutcome::Skipped { reason: "cron task not active" })),
            Ok(Ok(Some(unit))) => match self.deliver_sent(&unit, record, deadline, ticket).await {
                Ok((outcome, tenant)) => (tenant.map(|t| (unit, t)), Ok(outcome)),
                Err(e) => (None, Err(e)),
            },
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(message_id = record.message_id.as_deref(), task_id = ?task_id.as_ref().map(TaskId::as_str), error = %e, source = ?std::error::Error::source(&e), "delivery interrupted; message will be redelivered");
                return (true, MessageOutcome::Interrupted(e.to_string()));
            }
        };
        let keep = match &outcome {
            DeliveryOutcome::Skipped { .. } => false,
            DeliveryOutcome::NoTime => {
                tracing::info!(task_id = ?task_id.as_ref().map(TaskId::as_str), "no time left for this request in this invocation; it comes back soon");
                self.retry_later(record, NO_TIME_RETRY).await
            }
            DeliveryOutcome::Delivered { .. } => false,
            DeliveryOutcome::RetryScheduled { delay, .. } => {
                let sent_at = record.attributes.get("SentTimestamp").and_then(|t| t.parse::<i64>().ok());
                match (&unit, wait_needs_scheduler(*delay, sent_at, self.clock.now())) {
                    (Some((u, _)), true) => {
                        let flow = QueueMessage::from_body(body).and_then(|m| m.flow().cloned());
                        self.schedule_retry(u, *delay, flow).await.is_err()
                    }
                    _ => self.retry_later(record, *delay).await,
                }
            }
            DeliveryOutcome::Deferred { delay } => {
                emit(metrics::DEFERRED, unit.as_ref().map(|(u, _)| &u.task), None);
                self.retry_later(record, *delay).await
            }
            DeliveryOutcome::Failed { reason, .. } => {
                let task = unit.as_ref().map(|(u, tenant)| (&u.task, u.run, tenant));
                self.park(DeadLetter::failed(task, reason)).await.is_err()
            }
            DeliveryOutcome::Missing => {
                tracing::info!(task_id = ?task_id.as_ref().map(TaskId::as_str), "task not written yet; the message comes back soon");
                self.retry_later(record, MISSING_RETRY).await
            }
            DeliveryOutcome::Poison { reason } => {
                tracing::error!(message_id = record.message_id.as_deref(), reason = %reason, "poison message");
                self.park(DeadLetter::poison(reason, body)).await.is_err()
            }
        };
        (keep, MessageOutcome::Delivery(outcome))
    }

    /// Delivers the unit of a message. The API sends a task's message just
    /// before it writes the task: a young message whose task is missing waits
    /// a moment and reads once more (a read costs less than a failed claim),
    /// then goes back to the queue ([`DeliveryOutcome::Missing`]) while the
    /// task may still come; an older one (or one of unknown age) is poison.
    async fn deliver_sent(
        &self,
        unit: &Unit,
        record: &SqsMessage,
        deadline: Option<EpochMillis>,
        ticket: &Ticket,
    ) -> Result<(DeliveryOutcome, Option<crate::domain::TenantId>), StoreError> {
        let first = self.deliver_with(unit, deadline, ticket).await?;
        if first.0 != DeliveryOutcome::Missing {
            return Ok(first);
        }
        let sent_at = record.attributes.get("SentTimestamp").and_then(|t| t.parse::<i64>().ok());
        let age = sent_at.map(|t| self.clock.now() - t);
        if age.is_some_and(|a| a < YOUNG_MS) {
            self.clock.sleep_until(self.clock.now() + YOUNG_WAIT_MS).await;
            if self.store.read_state(unit).await?.is_some() {
                return self.deliver_with(unit, deadline, ticket).await;
            }
        }
        if age.is_some_and(|a| a < MISSING_MAX_AGE_MS) {
            return Ok((DeliveryOutcome::Missing, None));
        }
        Ok((DeliveryOutcome::Poison { reason: format!("no task {}", unit.task) }, None))
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

    /// Resolves a message's task and run: the unit to deliver, `None` for a firing of a cron
    /// task that is not active, or the reason it is poison. Only a cron firing
    /// costs a read here (of its task); a one-off task is read by its claim.
    async fn unit_of(
        &self,
        task_id: Option<&TaskId>,
        run: Result<Option<EpochMillis>, String>,
    ) -> Result<Result<Option<Unit>, String>, StoreError> {
        let (task, run) = match (task_id, run) {
            (Some(t), Ok(r)) => (t.clone(), r),
            (_, Err(e)) => return Ok(Err(e)),
            (None, Ok(_)) => return Ok(Err("unreadable message body".to_owned())),
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
}

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod tests;
