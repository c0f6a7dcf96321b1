//! The ports the API and the sender need: a task store, a tenant store, a
//! delivery queue and a scheduler. The AWS adapters ([`crate::dynamo`],
//! [`crate::sqs`], [`crate::schedules`]) implement them.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use crate::domain::{
    Attempt, CronSchedule, EpochMillis, NewTask, QueueMessage, Quotas, RequestSpec, RetryPolicy, Schedule, TaskId,
    TaskState, TaskStatus, Tenant,
};

type Source = Box<dyn StdError + Send + Sync>;

/// A store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused for now: try again.
    #[error("store unavailable")]
    Unavailable(#[source] Source),
    /// The store refused the input itself (an item over its size limit, a
    /// key it cannot hold): retrying cannot help, the caller must change it.
    #[error("store refused the input")]
    Invalid(#[source] Source),
    /// An item exists but cannot be read back: a bug or a manual edit.
    #[error("stored item for {id} is malformed: {what}")]
    Corrupt { id: String, what: String },
}

/// A queue call failed.
#[derive(Debug, thiserror::Error)]
#[error("delivery queue unavailable")]
pub struct QueueError(#[source] pub Source);

/// A scheduler call failed.
#[derive(Debug, thiserror::Error)]
#[error("scheduler unavailable")]
pub struct ScheduleError(#[source] pub Source);

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
    Claimed { state: Box<TaskState>, interrupted_at: Option<EpochMillis> },
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
    Succeeded,
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

/// A task as read back for display.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    pub state: TaskState,
    pub spec: RequestSpec,
    pub retry: RetryPolicy,
    pub schedule: Schedule,
}

/// What a create found.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    New,
    /// A task with the same business id or idempotency key exists.
    Existing(TaskId),
}

/// Which unique key a create claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UniqueKey {
    BusinessId(String),
    IdempotencyKey(String),
}

/// Filters of a task listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListFilter {
    pub status: Option<TaskStatus>,
    pub host: Option<String>,
    pub created_after: Option<EpochMillis>,
    pub created_before: Option<EpochMillis>,
    /// The last failed attempt's status code.
    pub code: Option<crate::domain::CodeMatch>,
}

/// One page of results and the opaque cursor of the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Option<String>,
}

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

/// A cancel's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelled {
    /// Cancelled; the state as it was before.
    Done(Box<TaskState>),
    AlreadyFinal(TaskStatus),
    Missing,
}

/// A manual retry's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Retried {
    Done,
    NotFailed(TaskStatus),
    Missing,
}

/// Durable task storage.
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task; with a unique key, atomically with it, or finds the
    /// task that already holds the key.
    fn create(
        &self,
        task: &NewTask,
        key: Option<&UniqueKey>,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;
    /// Stores many tasks without unique keys (batched writes); `true` per stored task.
    fn create_many(&self, tasks: &[NewTask]) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
    /// Removes a task that was never enqueued (creation rolled back), with its unique key
    /// if it still names the task. `true` if the task's state existed: its
    /// active-task slot then comes back through the counter (the state's delete).
    fn discard(&self, task: &NewTask, key: Option<&UniqueKey>)
    -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn get(&self, id: &TaskId) -> impl Future<Output = Result<Option<StoredTask>, StoreError>> + Send;
    fn find_by_key(
        &self,
        tenant: &str,
        key: &UniqueKey,
    ) -> impl Future<Output = Result<Option<TaskId>, StoreError>> + Send;
    /// The tenant's tasks, newest first.
    fn list(
        &self,
        tenant: &str,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<&str>,
        now: EpochMillis,
    ) -> impl Future<Output = Result<Page<TaskState>, StoreError>> + Send;
    fn attempts(
        &self,
        id: &TaskId,
        limit: usize,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<Attempt>, StoreError>> + Send;
    fn last_attempt(&self, id: &TaskId) -> impl Future<Output = Result<Option<Attempt>, StoreError>> + Send;
    /// The latest runs of a cron task, newest first.
    fn runs(&self, id: &TaskId, limit: usize) -> impl Future<Output = Result<Vec<TaskState>, StoreError>> + Send;
    /// Cancels a task that has not finished.
    fn cancel(&self, id: &TaskId, now: EpochMillis) -> impl Future<Output = Result<Cancelled, StoreError>> + Send;
    /// Replaces the request and retry policy of a task that has not finished;
    /// `Ok(false)` if it has.
    fn update_spec(
        &self,
        id: &TaskId,
        spec: &RequestSpec,
        retry: &RetryPolicy,
        schedule: &Schedule,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a failed task back to pending with `more` attempts (numbering continues).
    fn retry_failed(
        &self,
        id: &TaskId,
        more: u32,
        now: EpochMillis,
    ) -> impl Future<Output = Result<Retried, StoreError>> + Send;
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
    /// Adds one stream batch's status changes to the tenants' counts, once:
    /// `Ok(false)` if this batch was applied before.
    fn apply_counts(
        &self,
        batch_id: &str,
        deltas: &crate::counter::Deltas,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A tenant's task counts by status.
    fn counts(&self, tenant: &str) -> impl Future<Output = Result<Vec<(TaskStatus, i64)>, StoreError>> + Send;
    fn put_replay(&self, r: &crate::domain::Replay) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_replay(&self, id: &str) -> impl Future<Output = Result<Option<crate::domain::Replay>, StoreError>> + Send;
    /// Saves `r` if the stored version is `r.version - 1`; `Ok(false)` if it changed meanwhile.
    fn save_replay(&self, r: &crate::domain::Replay) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes every item of a finished task; `Ok(false)` if it is not finished (or gone).
    fn purge(&self, id: &TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a cron task between active and paused; `Ok(false)` if it is in neither.
    fn set_cron_status(
        &self,
        id: &TaskId,
        to: TaskStatus,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Creates the state of a cron run on its first firing (idempotent).
    fn start_run(&self, parent: &TaskState, run: EpochMillis) -> impl Future<Output = Result<(), StoreError>> + Send;
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
    fn finish(
        &self,
        unit: &Unit,
        attempt: u32,
        transition: &Transition,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Tenants, keys and quotas.
pub trait TenantStore: Send + Sync + 'static {
    fn create_tenant(&self, tenant: &Tenant) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_tenant(&self, id: &str) -> impl Future<Output = Result<Option<Tenant>, StoreError>> + Send;
    /// Changes status and quotas; `Ok(false)` if there is no such tenant.
    fn update_tenant(
        &self,
        id: &str,
        enabled: Option<bool>,
        quotas: Option<Quotas>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn put_key(
        &self,
        tenant: &str,
        key_id: &str,
        hash: &str,
        now: EpochMillis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The tenant of a live (unrevoked) key hash.
    fn tenant_of_key(&self, hash: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Revokes a key; `Ok(false)` if the tenant has no such key.
    fn revoke_key(
        &self,
        tenant: &str,
        key_id: &str,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The tenant's key ids with their revocation times.
    fn list_keys(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<(String, EpochMillis, Option<EpochMillis>)>, StoreError>> + Send;
    /// Reserves `n` active-task slots; `Ok(false)` if that would exceed the quota.
    fn reserve_active(&self, tenant: &Tenant, n: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Gives back `n` slots (tasks finished, cancelled or never created).
    fn release_active(&self, tenant: &str, n: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Counts `n` creations against this second's rate; `Ok(false)` if over.
    fn take_rate(
        &self,
        tenant: &Tenant,
        n: u64,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The delivery queue and its dead-letter queue.
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Sends `msg`, invisible for `delay` (at most 15 minutes).
    fn enqueue(&self, msg: &QueueMessage, delay: Duration) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Sends many messages (batched by ten); returns the indexes that failed.
    fn enqueue_many(
        &self,
        msgs: &[(QueueMessage, Duration)],
    ) -> impl Future<Output = Result<Vec<usize>, QueueError>> + Send;
    /// Makes a received message reappear after `delay` (at most 12 hours).
    fn retry_later(&self, receipt_handle: &str, delay: Duration)
    -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Parks a JSON document on the dead-letter queue.
    fn dead_letter(&self, body: String) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// EventBridge Scheduler, for far-future and recurring tasks.
pub trait Scheduler: Send + Sync + 'static {
    /// A one-time schedule at `fire_at` sending `msg` with `delay` (deleted after it fires).
    fn create_at(
        &self,
        name: &str,
        fire_at: EpochMillis,
        msg: &QueueMessage,
        delay: Duration,
    ) -> impl Future<Output = Result<(), ScheduleError>> + Send;
    /// A recurring schedule sending a cron firing of `task` on every firing.
    fn create_cron(
        &self,
        name: &str,
        cron: &CronSchedule,
        task: &TaskId,
    ) -> impl Future<Output = Result<(), ScheduleError>> + Send;
    /// Deletes a schedule; a missing one is not an error.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), ScheduleError>> + Send;
    /// Enables or disables a recurring schedule.
    fn set_enabled(
        &self,
        name: &str,
        cron: &CronSchedule,
        task: &TaskId,
        enabled: bool,
    ) -> impl Future<Output = Result<(), ScheduleError>> + Send;
}
