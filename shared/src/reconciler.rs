//! The reconciler: run every minute, it finds units — one-off tasks and cron
//! runs — that are due but in no queue — `pending`/`scheduled`/`retrying` past
//! their due time plus a grace, or `sending` with an expired lease — and
//! enqueues them again. This is what makes "the API wrote DynamoDB but the SQS
//! send failed", "the sender died" and "the message went to the SQS
//! dead-letter queue" lose nothing. A duplicate message is harmless: the claim
//! lets one delivery through. A stuck run of a cron task that is no longer
//! active (paused, cancelled) is not sent: it ends `cancelled`.
//!
//! It reads the sparse `by-recon` index shard by shard, one bounded page at a
//! time, from each shard's watermark (kept in the table) to now, and moves the
//! watermark after every page: each unit is examined about once, when its
//! check time passes, memory stays bounded, and a run cut short (page budget,
//! timeout) resumes where it stopped.

use std::time::Duration;

use serde::Serialize;

use crate::domain::{EpochMillis, QueueMessage, TaskStatus, format_millis};
use crate::ports::{DeliveryLedger, DeliveryQueue, QueueError, ReconcileIndex, StoreError, Unit};
use crate::resources::RECONCILE_SHARDS;

/// How far an idle shard's watermark may lag before it is written anyway.
const WATERMARK_EVERY_MS: EpochMillis = 10 * 60 * 1000;

/// How far before the watermark each run looks again (index lag, clock skew).
const OVERLAP_MS: i64 = 60_000;
/// Where a first run starts.
const FIRST_LOOKBACK_MS: i64 = 3_600_000;
/// Candidates read per page (one BatchGetItem's worth).
const PAGE_LIMIT: usize = 100;
/// Pages with candidates one run reads at most; the rest waits for the next run.
const MAX_PAGES: usize = 200;
/// Requeued units named in a report, at most.
const SAMPLE: usize = 20;

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub examined: usize,
    pub requeued: usize,
    /// Units still being sent under a live lease: looked at again after it.
    pub postponed: usize,
    /// Stuck runs of cron tasks no longer active, ended `cancelled`.
    pub ended: usize,
    /// Some of the requeued units (`task id`, or `task id@run time` for a cron run).
    pub sample: Vec<String>,
    /// Pages read (empty ones included).
    pub pages: usize,
    /// False when the page budget ran out: the next run goes on from there.
    pub complete: bool,
}

/// A reconciler run failed; the next run covers the same window.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The reconciler with its store and queue, built once per cold start by the
/// function's `main`.
pub struct Reconciler<S, Q> {
    store: S,
    queue: Q,
    grace_ms: i64,
    page_limit: usize,
    max_pages: usize,
}

/// The reconciler reads the index; it reads a run's parent and ends stuck
/// runs through the ledger.
/// A task flow control holds back is due but in no claim: the reconciler
/// leaves it to the held message for this long past its due time.
pub const FLOW_HOLD_GRACE_MS: i64 = 30 * 60_000;

/// Hosts (without port) that have a flow policy or a live hold: their due
/// tasks may be waiting on purpose.
fn flow_hosts(snap: &crate::domain::FlowSnapshot, now: EpochMillis) -> std::collections::HashSet<String> {
    let limited = snap.policies.iter().filter(|(_, p)| p.limits()).map(|((k, _), _)| k);
    let held = snap.holds.iter().filter(|(_, h)| h.until > now).map(|(k, _)| k);
    limited
        .chain(held)
        .filter(|k| k.is_host())
        .filter_map(|k| k.display().rsplit_once(':').map(|(h, _)| h.to_owned()))
        .collect()
}

impl<S: ReconcileIndex + DeliveryLedger + crate::ports::FlowPolicies, Q: DeliveryQueue> Reconciler<S, Q> {
    pub fn new(store: S, queue: Q, grace: Duration) -> Self {
        Self { store, queue, grace_ms: grace.as_millis() as i64, page_limit: PAGE_LIMIT, max_pages: MAX_PAGES }
    }

    /// Reads `page_limit` candidates per page and at most `max_pages` pages with candidates per run.
    pub fn with_paging(mut self, page_limit: usize, max_pages: usize) -> Self {
        self.page_limit = page_limit.max(1);
        self.max_pages = max_pages.max(1);
        self
    }

    /// One pass over the units whose check time passed since the last run.
    pub async fn run_once(&self, now: EpochMillis) -> Result<Report, ReconcileError> {
        let mut report = Report { complete: true, ..Report::default() };
        let mut busy_pages = 0;
        let held_hosts = match self.store.flow_snapshot().await {
            Ok(snap) => flow_hosts(&snap, now),
            Err(e) => {
                tracing::warn!(error = %e, "flow policies unavailable; held tasks may be re-enqueued (harmless duplicates)");
                Default::default()
            }
        };
        'shards: for shard in 0..RECONCILE_SHARDS {
            let mark = self.store.watermark(shard).await?;
            let from = mark.unwrap_or(now - FIRST_LOOKBACK_MS) - OVERLAP_MS;
            let mut cursor: Option<String> = None;
            loop {
                if busy_pages == self.max_pages {
                    report.complete = false;
                    break 'shards;
                }
                let page = self.store.reconcile_page(shard, from, now, self.page_limit, cursor.as_deref()).await?;
                report.pages += 1;
                // Only pages with candidates count against the budget: a run cut short
                // must not spend the next run's budget on the shards it had finished.
                if !page.items.is_empty() {
                    busy_pages += 1;
                }
                let found = !page.items.is_empty();
                self.handle(page.items, now, &held_hosts, &mut report).await?;
                // A page that found nothing moves the watermark only now and then:
                // reading an empty range again costs less than a write each run.
                if found || mark.is_none_or(|m| page.checked_to - m >= WATERMARK_EVERY_MS) {
                    self.store.set_watermark(shard, page.checked_to).await?;
                }
                cursor = page.next;
                if cursor.is_none() {
                    break;
                }
            }
        }
        tracing::info!(
            examined = report.examined,
            requeued = report.requeued,
            postponed = report.postponed,
            ended = report.ended,
            pages = report.pages,
            complete = report.complete,
            "reconciled"
        );
        Ok(report)
    }

    /// Requeues the stuck units of one page.
    async fn handle(
        &self,
        candidates: Vec<crate::domain::TaskState>,
        now: EpochMillis,
        held_hosts: &std::collections::HashSet<String>,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let mut messages = Vec::new();
        for st in candidates {
            report.examined += 1;
            let unit = Unit { task: st.id.clone(), run: st.run };
            let stuck = match st.status {
                TaskStatus::Pending | TaskStatus::Scheduled | TaskStatus::Retrying => {
                    st.due_at.is_none_or(|due| due + self.grace_ms <= now)
                }
                TaskStatus::Sending => match st.lease_until {
                    Some(lease) if lease >= now => {
                        self.store.push_reconcile(&unit, lease + self.grace_ms).await?;
                        report.postponed += 1;
                        false
                    }
                    _ => true,
                },
                _ => false,
            };
            if !stuck {
                continue;
            }
            // Waiting for its host's rate slot, lease, pause or breaker: its held message brings it.
            let waiting = st.status != TaskStatus::Sending
                && held_hosts.contains(&st.host)
                && st.due_at.is_some_and(|due| due + FLOW_HOLD_GRACE_MS > now);
            if waiting {
                self.store.push_reconcile(&unit, now + self.grace_ms).await?;
                report.postponed += 1;
                continue;
            }
            if st.run.is_some() {
                let parent = self.store.read_state(&Unit { task: st.id.clone(), run: None }).await?;
                let status = parent.map(|p| p.status);
                if status != Some(TaskStatus::Active) {
                    // The sender skips a run of a task that is not active: end it instead of resending.
                    let why = format!("skipped: the cron task is {}", status.map_or("gone", TaskStatus::as_str));
                    if self.store.end_run(&unit, &why, now).await? {
                        tracing::warn!(task_id = %st.id, run = st.run, reason = %why, "stuck cron run ended");
                        report.ended += 1;
                    }
                    continue;
                }
            }
            tracing::warn!(task_id = %st.id, run = st.run, status = st.status.as_str(), "stuck unit re-enqueued");
            // Looked at again later, in case this message is lost too.
            self.store.push_reconcile(&unit, now + self.grace_ms).await?;
            messages.push((QueueMessage::deliver_run(&st.id, st.run, None), Duration::ZERO));
            report.requeued += 1;
            if report.sample.len() < SAMPLE {
                report.sample.push(match st.run {
                    None => st.id.to_string(),
                    Some(run) => format!("{}@{}", st.id, format_millis(run)),
                });
            }
        }
        let failed = self.queue.enqueue_many(&messages).await?;
        if !failed.is_empty() {
            tracing::error!(failed = failed.len(), "some re-enqueues failed; they are looked at again after the grace");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
