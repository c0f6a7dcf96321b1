//! The sender's ledger: claim a unit under a lease, record its attempts and
//! move it on; cron runs start and end here too.

use std::future::Future;

use super::{Retried, StoreError};
use crate::domain::{Attempt, EpochMillis, RequestSpec, RetryPolicy, TaskId, TaskState, TaskStatus};

/// One deliverable unit: a one-off task, or one run of a cron task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub task: TaskId,
    pub run: Option<EpochMillis>,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The caller owns the unit until the lease in the returned state.
    /// `interrupted_at`: the claim took over an expired lease, so the previous
    /// attempt (number `state.attempts - 1`), started then, never finished.
    /// `inline`: the task's request, when its state item carries it (then
    /// there is no separate spec to read); `item_bytes`: the state item's
    /// size before the claim, so a finish knows whether an attempt fits in it.
    Claimed {
        state: Box<TaskState>,
        interrupted_at: Option<EpochMillis>,
        inline: Option<Box<(RequestSpec, RetryPolicy)>>,
        item_bytes: usize,
    },
    /// Claimable, but its request timeout does not fit in the time the caller
    /// has left: nothing was changed.
    NoTime,
    /// Claimable, but not due until then: try again later.
    NotDue(EpochMillis),
    /// Exists but is not claimable now (final, or leased by another sender).
    NotClaimable(TaskStatus),
    /// No such unit.
    Missing,
}

/// How an attempt ends a sending unit's current step.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// `status`: the attempt's status code (success may also be decided
    /// without a response, by a task's rules: then none).
    Succeeded {
        status: Option<u16>,
    },
    /// `status`: the failed attempt's status code, if it got a response.
    Retry {
        due_at: EpochMillis,
        status: Option<u16>,
    },
    Failed {
        reason: String,
        status: Option<u16>,
    },
}

/// The attempt a finish records with its transition, and the size of the
/// unit's state item at its claim ([`Claim::Claimed`]'s `item_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub attempt: &'a Attempt,
    pub item_bytes: usize,
}

/// The delivery ledger: who sends a unit now, and what each attempt did.
pub trait DeliveryLedger: Send + Sync + 'static {
    /// Moves a due, claimable unit to `sending` with a lease of its request
    /// timeout plus `lease_margin` ms, unless its request timeout exceeds
    /// `max_timeout_ms` (the time the caller has left); see [`Claim`].
    fn claim(
        &self,
        unit: &Unit,
        now: EpochMillis,
        lease_margin: EpochMillis,
        max_timeout_ms: Option<u64>,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    fn read_state(&self, unit: &Unit) -> impl Future<Output = Result<Option<TaskState>, StoreError>> + Send;
    fn get_spec(
        &self,
        id: &TaskId,
    ) -> impl Future<Output = Result<Option<(RequestSpec, RetryPolicy)>, StoreError>> + Send;
    fn record_attempt(&self, unit: &Unit, attempt: &Attempt) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records an attempt a stopped sender left unfinished, unless that
    /// attempt has a record already (its sender lived long enough to write it).
    fn record_interrupted(&self, unit: &Unit, attempt: &Attempt)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Applies `transition` if the unit is still `sending` attempt `attempt`;
    /// `Ok(false)` when the lease was lost (another sender, or a cancel).
    /// `record`: the attempt that led here, recorded whether the transition
    /// applies or not (its request went out); a final transition may keep it
    /// on the state item itself, in the same write.
    fn finish(
        &self,
        unit: &Unit,
        attempt: u32,
        transition: &Transition,
        now: EpochMillis,
        record: Option<Record<'_>>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records that the unit now waits in Scheduler under `schedule` (a retry
    /// wait the queue cannot hold), so a cancel deletes that schedule.
    fn record_on_scheduler(&self, unit: &Unit, schedule: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Creates the state of a cron run on its first firing (idempotent).
    fn start_run(&self, parent: &TaskState, run: EpochMillis) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Ends a cron run that will not be sent (its task is paused, cancelled or
    /// gone) as `cancelled` with `reason`, unless it finished or is leased
    /// meanwhile; `Ok(false)` if it was not ended.
    fn end_run(
        &self,
        unit: &Unit,
        reason: &str,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a failed cron run back to pending with `more` attempts (numbering continues).
    fn retry_run(
        &self,
        unit: &Unit,
        more: u32,
        now: EpochMillis,
    ) -> impl Future<Output = Result<Retried, StoreError>> + Send;
}
