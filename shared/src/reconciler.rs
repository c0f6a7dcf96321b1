//! The reconciler: run every minute, it finds one-off tasks that are due but
//! in no queue — `pending`/`scheduled`/`retrying` past their due time plus a
//! grace, or `sending` with an expired lease — and enqueues them again. This
//! is what makes "the API wrote DynamoDB but the SQS send failed" and "the
//! sender died" lose nothing. A duplicate message is harmless: the claim lets
//! one delivery through.
//!
//! It reads the sparse `by-recon` index from a watermark (kept in the table)
//! to now, so each task is examined about once, when its check time passes.

use std::time::Duration;

use serde::Serialize;

use crate::domain::{EpochMillis, QueueMessage, TaskStatus, now_millis};
use crate::ports::{DeliveryQueue, QueueError, StoreError, TaskStore};

/// How far before the watermark each run looks again (index lag, clock skew).
const OVERLAP_MS: i64 = 60_000;
/// Where a first run starts.
const FIRST_LOOKBACK_MS: i64 = 3_600_000;

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub examined: usize,
    pub requeued: Vec<String>,
    /// Tasks still being sent under a live lease: looked at again after it.
    pub postponed: usize,
}

/// A reconciler run failed; the next run covers the same window.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

pub struct Reconciler<S, Q> {
    store: S,
    queue: Q,
    grace_ms: i64,
}

impl<S: TaskStore, Q: DeliveryQueue> Reconciler<S, Q> {
    pub fn new(store: S, queue: Q, grace: Duration) -> Self {
        Self { store, queue, grace_ms: grace.as_millis() as i64 }
    }

    /// One pass over the tasks whose check time passed since the last run.
    pub async fn run_once(&self, now: EpochMillis) -> Result<Report, ReconcileError> {
        let from = self.store.watermark().await?.unwrap_or(now - FIRST_LOOKBACK_MS) - OVERLAP_MS;
        let candidates = self.store.reconcile_candidates(from, now).await?;
        let mut report = Report { examined: candidates.len(), ..Report::default() };
        let mut messages = Vec::new();
        for st in candidates {
            let stuck = match st.status {
                TaskStatus::Pending | TaskStatus::Scheduled | TaskStatus::Retrying => {
                    st.due_at.is_none_or(|due| due + self.grace_ms <= now)
                }
                TaskStatus::Sending => match st.lease_until {
                    Some(lease) if lease >= now => {
                        self.store.push_reconcile(&st.id, lease + self.grace_ms).await?;
                        report.postponed += 1;
                        false
                    }
                    _ => true,
                },
                _ => false,
            };
            if stuck {
                tracing::warn!(task_id = %st.id, status = st.status.as_str(), "stuck task re-enqueued");
                // Looked at again later, in case this message is lost too.
                self.store.push_reconcile(&st.id, now + self.grace_ms).await?;
                messages.push((QueueMessage::deliver(&st.id), Duration::ZERO));
                report.requeued.push(st.id.to_string());
            }
        }
        let failed = self.queue.enqueue_many(&messages).await?;
        if !failed.is_empty() {
            tracing::error!(failed = failed.len(), "some re-enqueues failed; they are looked at again next run");
        }
        self.store.set_watermark(now).await?;
        tracing::info!(
            examined = report.examined,
            requeued = report.requeued.len(),
            postponed = report.postponed,
            "reconciled"
        );
        Ok(report)
    }
}

/// Runs the reconciler function: each invocation (an EventBridge scheduled
/// event; its content is not used) is one pass.
pub async fn run(config: crate::Config, sdk: &aws_config::SdkConfig) -> Result<(), lambda_runtime::Error> {
    let reconciler = Reconciler::new(
        crate::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &config.table, config.retention_days)
            .with_reconcile_grace(config.reconcile_grace_s as i64 * 1000),
        crate::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url, &config.dlq_url),
        Duration::from_secs(config.reconcile_grace_s),
    );
    let reconciler = &reconciler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |_event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            reconciler.run_once(now_millis()).await.map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
