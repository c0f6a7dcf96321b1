//! After an attempt: the next step chosen from the outcome and the retry
//! policy ([`decide`], pure), and retry waits SQS cannot hold (over its
//! visibility timeout, or past the message's retention) handed to Scheduler.

use std::time::Duration;

use super::Sender;
use crate::domain::{
    Attempt, EpochMillis, Outcome, QueueMessage, ReceiverHints, RequestSpec, RetryPolicy, format_millis,
};
use crate::ports::{DeliveryLedger, DeliveryQueue, Scheduler, Unit};
use crate::resources::QUEUE_RETENTION_S;

/// The longest retry wait left to the message's visibility timeout (SQS allows
/// 12 hours; a minute is kept in hand).
pub const MAX_VISIBILITY_WAIT: Duration = Duration::from_secs(43_200 - 60);
/// How close to its retention a message may come before its retry moves to Scheduler.
const RETENTION_MARGIN_MS: i64 = 3_600_000;

impl<S: DeliveryLedger, Q: DeliveryQueue, C: Scheduler> Sender<S, Q, C> {
    /// A retry SQS cannot wait for: a one-time schedule, then the message goes.
    pub(super) async fn schedule_retry(
        &self,
        unit: &Unit,
        delay: Duration,
        flow: Option<crate::domain::FlowRef>,
    ) -> Result<(), ()> {
        let now = self.clock.now();
        let due = now + delay.as_millis() as i64;
        let handoff = crate::domain::scheduler_handoff(due, Duration::from_secs(self.settings.schedule_early_s));
        let msg = QueueMessage::deliver_run(&unit.task, unit.run, flow);
        let name = format!("{}-r{}", unit.task, now);
        match self.scheduler.create_at(&name, handoff.fire_at, &msg, handoff.delay).await {
            Ok(()) => {
                tracing::info!(task_id = %unit.task, schedule = %name, due = %format_millis(due), "long retry wait handed to Scheduler");
                if let Err(e) = self.store.record_on_scheduler(unit, &name).await {
                    // The retry still fires; a cancel meanwhile leaves the schedule to find the task cancelled.
                    tracing::warn!(task_id = %unit.task, error = %e, "could not record the retry's schedule on the task");
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(task_id = %unit.task, error = %e, "could not schedule a long retry; the message stays");
                Err(())
            }
        }
    }
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
    fn long_waits_and_old_messages_go_to_the_scheduler() {
        let now = 1_000_000_000_000;
        assert!(!wait_needs_scheduler(Duration::from_secs(3600), Some(now), now));
        assert!(wait_needs_scheduler(Duration::from_secs(13 * 3600), Some(now), now));
        let old = now - 13 * 86_400_000;
        assert!(wait_needs_scheduler(Duration::from_secs(86_400), Some(old), now));
        assert!(!wait_needs_scheduler(Duration::from_secs(60), None, now));
    }
}
