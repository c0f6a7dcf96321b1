//! One delivery: claim the unit (a conditional write with a lease), send
//! its request, record the attempt and move the task on. Returns a
//! [`DeliveryOutcome`], so tests drive it without sleeping.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::retry::Decision;
use super::{DeliveryOutcome, RECORD_MARGIN_MS, Sender, Ticket, decide};
use crate::clock::Clock;
use crate::domain::{
    Attempt, EpochMillis, Outcome, RequestSpec, TaskId, TaskState, TenantId, format_millis, now_millis,
};
use crate::metrics;
use crate::ports::{
    Claim, DeliveryLedger, DeliveryQueue, FieldSeal, FlowLimiter, FlowPolicies, Record, Scheduler, SigningSecrets,
    StoreError, Transition, Unit,
};

/// What the sender says about an attempt a stopped sender left unfinished.
pub const INTERRUPTED_REASON: &str = "sender stopped during the attempt (lease expired)";

impl<S: DeliveryLedger + FlowPolicies + FlowLimiter + SigningSecrets + FieldSeal, Q: DeliveryQueue, C: Scheduler>
    Sender<S, Q, C>
{
    /// Delivers one unit: claim, send, record, transition. Returns what
    /// happened and, once claimed, the task's tenant. With a `deadline`, the
    /// claim only takes a task whose request timeout fits before it with
    /// [`RECORD_MARGIN_MS`] to spare.
    pub async fn deliver(
        &self,
        unit: &Unit,
        deadline: Option<EpochMillis>,
    ) -> Result<(DeliveryOutcome, Option<TenantId>), StoreError> {
        self.deliver_with(unit, deadline, &Ticket::default()).await
    }

    /// [`Sender::deliver`] with what flow control granted: the request
    /// waits for its rate slot after the claim (so the claim's latency does
    /// not bunch requests), and its result counts towards its key's breaker.
    pub async fn deliver_with(
        &self,
        unit: &Unit,
        deadline: Option<EpochMillis>,
        ticket: &Ticket,
    ) -> Result<(DeliveryOutcome, Option<TenantId>), StoreError> {
        use tracing::Instrument;
        // Every line of a delivery carries its task and, once its request is read, its trace.
        let span = tracing::info_span!("delivery", task_id = %unit.task, trace_id = tracing::field::Empty);
        self.deliver_in_span(unit, deadline, ticket).instrument(span).await
    }

    async fn deliver_in_span(
        &self,
        unit: &Unit,
        deadline: Option<EpochMillis>,
        ticket: &Ticket,
    ) -> Result<(DeliveryOutcome, Option<TenantId>), StoreError> {
        let now = self.clock.now();
        let start = ticket.not_before.map_or(now, |t| t.max(now));
        let budget = deadline.map(|d| d - start - RECORD_MARGIN_MS);
        if budget.is_some_and(|b| b < 1) {
            return Ok((DeliveryOutcome::NoTime, None));
        }
        let budget = budget.map(|b| b as u64);
        // The tenant's signing secrets (cached), before the claim when the
        // message names the tenant: a failure to read them sends nothing and
        // costs no attempt number (the message comes back).
        let early = match &ticket.tenant {
            Some(t) => Some((t.clone(), self.signing.get(&self.store, t, now).await?)),
            None => None,
        };
        let (state, interrupted_at, inline, item_bytes) = match self
            .store
            .claim(unit, now, self.settings.lease_margin_ms as i64, budget)
            .await?
        {
            Claim::Claimed { state, interrupted_at, inline, item_bytes } => (state, interrupted_at, inline, item_bytes),
            Claim::NoTime => return Ok((DeliveryOutcome::NoTime, None)),
            Claim::NotDue(due) => {
                return Ok((
                    DeliveryOutcome::Deferred { delay: Duration::from_millis((due - now).max(0) as u64) },
                    None,
                ));
            }
            Claim::NotClaimable(status) => {
                tracing::info!(task_id = %unit.task, status = status.as_str(), "not claimable; acknowledged without sending");
                return Ok((DeliveryOutcome::Skipped { reason: "not claimable" }, None));
            }
            Claim::Missing => return Ok((DeliveryOutcome::Missing, None)),
        };
        let tenant = Some(state.tenant.clone());
        // A small request rides on the state item the claim returned: no read.
        let spec = match inline {
            Some(inline) => Some(*inline),
            None => self.store.get_spec(&unit.task).await?,
        };
        let Some((mut spec, retry)) = spec else {
            // Nothing can ever be sent: end it (its slot comes back), then park the message.
            let reason = format!("task {} has no request spec", unit.task);
            let failed = Transition::Failed { reason: reason.clone(), status: None };
            if !self.store.finish(unit, state.attempts, &failed, self.clock.now(), None).await? {
                return Ok((DeliveryOutcome::Skipped { reason: "lease lost" }, tenant));
            }
            return Ok((DeliveryOutcome::Poison { reason }, tenant));
        };
        // Secret values are stored sealed: opened here, just before sending
        // (the data key cached; a failure is a store error like a spec read's).
        self.store.open_fields(&mut spec).await?;
        if let Some(trace) = &spec.trace {
            tracing::Span::current().record("trace_id", trace.trace_id.as_str());
        }
        if let Some(started_at) = interrupted_at {
            self.note_interrupted(unit, &state, &spec, started_at).await;
        }
        // Signed unless the task opted out: the secrets read before the claim,
        // or (a message that did not name the tenant) read now.
        let secrets = match early {
            _ if spec.unsigned => None,
            Some((t, s)) if t == state.tenant => Some(s),
            _ => Some(self.signing.get(&self.store, &state.tenant, now).await?),
        };
        let number = state.attempts;
        if ticket.not_before.is_some() {
            self.flow.prepared_in(self.clock.now() - now);
            if let Some(at) = self.reslot(ticket, deadline).await {
                self.clock.sleep_until(at).await;
            }
        }
        let (mut attempt, hints) = self.send(&state, &spec, secrets.as_deref().unwrap_or_default()).await;
        let flow = spec.flow_ref(&state.tenant);
        self.flow.observe(&flow, &attempt, hints.retry_after, ticket.probe, self.clock.now());
        self.write_pauses().await;
        let decision = decide(&retry, &spec, &attempt, hints, number - state.retry_base, fastrand::f64());
        if let Decision::Retry(delay) = decision {
            attempt.next_delay_ms = Some(delay.as_millis() as u64);
        }
        // The one line per attempt (no span: its fields are here).
        tracing::info!(
            task_id = %unit.task,
            run = unit.run,
            tenant = %state.tenant,
            trace_id = spec.trace.as_ref().map(|t| t.trace_id.as_str()),
            attempt = number,
            outcome = attempt.outcome.as_str(),
            status = attempt.status_code,
            duration_ms = attempt.duration_ms,
            error = attempt.error.as_deref(),
            "attempt"
        );
        let at = self.clock.now();
        let (transition, result, metric) = match decision {
            Decision::Succeed => (
                Transition::Succeeded { status: attempt.status_code },
                DeliveryOutcome::Delivered { attempt: number },
                metrics::DELIVERED,
            ),
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
        // The request went out: losing its record now would send it again. A final
        // attempt rides on the transition's write when it fits (one write, not two).
        let record = Record { attempt: &attempt, item_bytes };
        if !persist(&*self.clock, deadline, || self.store.finish(unit, number, &transition, at, Some(record))).await? {
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
        tracing::warn!(task_id = %unit.task, tenant = %state.tenant, attempt = number, started_at = %format_millis(started_at), "previous attempt was interrupted");
        if let Err(e) = self.store.record_interrupted(unit, &attempt).await {
            tracing::warn!(error = %e, attempt = number, "could not record the interrupted attempt");
        }
    }
}

/// Runs a store write that must not be lost (the request it records was
/// sent), trying again a few times past the SDK's own retries while the
/// invocation has time.
async fn persist<T, F, Fut>(clock: &dyn Clock, deadline: Option<EpochMillis>, mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 1;
    loop {
        match write().await {
            Err(StoreError::Unavailable(e))
                if tries < 4 && deadline.is_none_or(|d| clock.now() + wait.as_millis() as i64 + 1_000 < d) =>
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

tokio::task_local! {
    /// The metrics of the batch being handled: each delivery adds to them, and
    /// the batch prints them as one EMF line at its end.
    pub(super) static BATCH: std::cell::RefCell<metrics::BatchMetrics>;
}

/// Counts an attempt (or a deferral) in the batch's metrics; outside a batch
/// (a delivery driven on its own), prints its own EMF line.
pub(super) fn emit(metric: &'static str, task: Option<&TaskId>, attempt: Option<(&Attempt, Option<EpochMillis>)>) {
    let outcome = attempt.map(|(a, _)| a.outcome.as_str());
    let added = BATCH.try_with(|b| {
        let mut b = b.borrow_mut();
        b.count_in(outcome, metric);
        if let Some((a, lag)) = attempt {
            b.count_in(outcome, metrics::ATTEMPTS);
            b.value_in(outcome, metrics::ATTEMPT_DURATION_MS, a.duration_ms as f64);
            if let Some(lag) = lag {
                b.value_in(outcome, metrics::SCHEDULE_LAG_MS, lag.max(0) as f64);
            }
        }
    });
    if added.is_ok() {
        return;
    }
    let mut values: Vec<(&str, f64)> = vec![(metric, 1.0)];
    let mut props = Map::new();
    if let Some(t) = task {
        props.insert("task_id".into(), Value::String(t.to_string()));
    }
    if let Some((a, lag)) = attempt {
        values.push((metrics::ATTEMPTS, 1.0));
        values.push((metrics::ATTEMPT_DURATION_MS, a.duration_ms as f64));
        if let Some(lag) = lag {
            values.push((metrics::SCHEDULE_LAG_MS, lag.max(0) as f64));
        }
        props.insert("outcome".into(), Value::String(a.outcome.as_str().to_owned()));
        props.insert("attempt".into(), json!(a.number));
    }
    println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), outcome, &values, props));
}
