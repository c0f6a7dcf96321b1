//! The reconciler's view of the store: units by check time, sharded, and
//! the watermark of each shard.

use std::future::Future;

use super::{StoreError, Unit};
use crate::domain::{EpochMillis, TaskState};

/// One page of reconcile candidates from one shard.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidatePage {
    /// The candidates' states (`run` set for a cron run's).
    pub items: Vec<TaskState>,
    /// Where the next page starts; `None` once the shard is read up to `to`.
    pub next: Option<String>,
    /// The check time up to which the shard has been read with this page.
    pub checked_to: EpochMillis,
}

/// The index of units to check on, and how far the reconciler has read it.
pub trait ReconcileIndex: Send + Sync + 'static {
    /// One page (at most `limit`) of the units — one-off tasks and cron runs — of
    /// reconcile shard `shard` whose check time (due + grace) lies in `[from, to]`,
    /// in check-time order, from `start` (a previous page's `next`).
    fn reconcile_page(
        &self,
        shard: u32,
        from: EpochMillis,
        to: EpochMillis,
        limit: usize,
        start: Option<&str>,
    ) -> impl Future<Output = Result<CandidatePage, StoreError>> + Send;
    /// Moves a unit's check time to `at`.
    fn push_reconcile(&self, unit: &Unit, at: EpochMillis) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The reconciler's watermark of one shard: the check time up to which it has looked.
    fn watermark(&self, shard: u32) -> impl Future<Output = Result<Option<EpochMillis>, StoreError>> + Send;
    fn set_watermark(&self, shard: u32, at: EpochMillis) -> impl Future<Output = Result<(), StoreError>> + Send;
}
