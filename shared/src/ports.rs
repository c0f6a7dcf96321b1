//! The ports the API and the sender need: a task store and a delivery queue.
//! The AWS adapters ([`crate::dynamo`], [`crate::sqs`]) implement them.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use crate::domain::{
    Attempt, EpochMillis, NewTask, QueueMessage, RequestSpec, RetryPolicy, TaskId, TaskState, TaskStatus,
};

type Source = Box<dyn StdError + Send + Sync>;

/// A store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused for now: try again.
    #[error("task store unavailable")]
    Unavailable(#[source] Source),
    /// An item exists but cannot be read back: a bug or a manual edit.
    #[error("stored item for {id} is malformed: {what}")]
    Corrupt { id: String, what: String },
}

/// A queue call failed.
#[derive(Debug, thiserror::Error)]
#[error("delivery queue unavailable")]
pub struct QueueError(#[source] pub Source);

/// What a claim found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The caller owns the task until the lease in the returned state.
    Claimed(TaskState),
    /// The task exists but is not claimable now (final, or leased by another sender).
    NotClaimable(TaskStatus),
    /// No such task.
    Missing,
}

/// How an attempt ends a sending task's current step.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Succeeded,
    Retry { due_at: EpochMillis },
    Failed { reason: String },
}

/// A task as read back for display.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    pub state: TaskState,
    pub spec: RequestSpec,
    pub retry: RetryPolicy,
}

/// Durable task storage.
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task: its request spec, then its state (the state makes it exist).
    fn create(&self, task: &NewTask) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Removes a task that was never enqueued (creation rolled back).
    fn discard(&self, id: &TaskId) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(&self, id: &TaskId) -> impl Future<Output = Result<Option<StoredTask>, StoreError>> + Send;
    fn last_attempt(&self, id: &TaskId) -> impl Future<Output = Result<Option<Attempt>, StoreError>> + Send;
    /// Moves a claimable task to `sending` with a lease; see [`Claim`].
    fn claim(
        &self,
        id: &TaskId,
        now: EpochMillis,
        lease_until: EpochMillis,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    fn get_spec(
        &self,
        id: &TaskId,
    ) -> impl Future<Output = Result<Option<(RequestSpec, RetryPolicy)>, StoreError>> + Send;
    fn record_attempt(&self, id: &TaskId, attempt: &Attempt) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Applies `transition` if the task is still `sending` attempt `attempt`;
    /// `Ok(false)` when the lease was lost to another sender.
    fn finish(
        &self,
        id: &TaskId,
        attempt: u32,
        transition: &Transition,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The delivery queue and its dead-letter queue.
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Sends `msg`, invisible for `delay` (at most 15 minutes).
    fn enqueue(&self, msg: &QueueMessage, delay: Duration) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Makes a received message reappear after `delay` (at most 12 hours).
    fn retry_later(&self, receipt_handle: &str, delay: Duration)
    -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Parks a JSON document on the dead-letter queue.
    fn dead_letter(&self, body: String) -> impl Future<Output = Result<(), QueueError>> + Send;
}
