//! Tasks as the API sees them: create, read, list, change and remove them.

use std::future::Future;

use super::StoreError;
use crate::domain::{
    Attempt, CodeMatch, EpochMillis, NewTask, RequestSpec, RetryPolicy, Schedule, TaskId, TaskState, TaskStatus,
    TenantId,
};

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
    pub code: Option<CodeMatch>,
}

/// One page of results and the opaque cursor of the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Option<String>,
}

/// A cancel's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelled {
    /// Cancelled; the state as it was before.
    Done(Box<TaskState>),
    AlreadyFinal(TaskStatus),
    Missing,
}

/// A listing group TTL deleted, as the stream saw it last: whose, its key,
/// and the tasks it listed, in their places (see `dynamo::groups`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpiredGroup {
    pub tenant: TenantId,
    pub group: String,
    pub ids: Vec<TaskId>,
}

/// A manual retry's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Retried {
    Done,
    NotFailed(TaskStatus),
    Missing,
}

/// Durable task storage, as the API uses it.
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task; with a unique key, atomically with it, or finds the
    /// task that already holds the key.
    fn create(
        &self,
        task: &NewTask,
        key: Option<&UniqueKey>,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;
    /// Lists tasks about to be stored together (one tenant's, created at once,
    /// at most 100, none with a business id) by one entry written now: their
    /// states, stored next by `create_many(…, true)`, then take no entry of
    /// their own. `false`: they cannot share one (each takes its own).
    fn list_together(&self, tasks: &[&NewTask]) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Stores many tasks without unique keys (batched writes); `true` per
    /// stored task. `listed`: `list_together` already listed them.
    fn create_many(
        &self,
        tasks: &[NewTask],
        listed: bool,
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
    /// Gives the tasks an expired listing group still lists their own
    /// entries, at the same places; returns how many.
    fn relist(&self, group: &ExpiredGroup) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// Removes a task that was never enqueued (creation rolled back), with its unique key
    /// if it still names the task. `true` if the task's state existed: its
    /// active-task slot then comes back through the counter (the state's delete).
    fn discard(&self, task: &NewTask, key: Option<&UniqueKey>)
    -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn get(&self, id: &TaskId) -> impl Future<Output = Result<Option<StoredTask>, StoreError>> + Send;
    /// Whether the task's state item exists, by an eventually consistent read
    /// of its key alone (half a read unit): a task written a moment ago may
    /// not show yet, so only a create's conditional write is sure. (`find_by_key`
    /// reads the same item of a business id strongly consistent, whole: for a
    /// lookup that must see a task made a moment ago.)
    fn may_exist(&self, id: &TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn find_by_key(
        &self,
        tenant: &TenantId,
        key: &UniqueKey,
    ) -> impl Future<Output = Result<Option<TaskId>, StoreError>> + Send;
    /// The tenant's tasks, newest first.
    fn list(
        &self,
        tenant: &TenantId,
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
    /// Deletes every item of a finished task; `Ok(false)` if it is not finished (or gone).
    fn purge(&self, id: &TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a cron task between active and paused; `Ok(false)` if it is in neither.
    fn set_cron_status(
        &self,
        id: &TaskId,
        to: TaskStatus,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
