//! The delivery queue and the scheduler: how a message reaches the sender
//! now, after a delay, or at a time or on a cron schedule.

use std::future::Future;
use std::time::Duration;

use super::{QueueError, ScheduleError};
use crate::domain::{CronSchedule, DeadLetter, EpochMillis, QueueMessage, TaskId};

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
    /// Parks a document on the dead-letter queue.
    fn dead_letter(&self, doc: &DeadLetter) -> impl Future<Output = Result<(), QueueError>> + Send;
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
