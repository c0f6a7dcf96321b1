//! The fake delivery queue and scheduler: they record what they were asked
//! (messages with their delays, redelivery delays, dead letters, schedules),
//! so a test asserts on what a worker sent and when it would show up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::domain::{CronSchedule, DeadLetter, EpochMillis, QueueMessage, TaskId};
use crate::ports::{DeliveryQueue, QueueError, ScheduleError, Scheduler};

#[derive(Default)]
struct QueueLog {
    sent: Vec<(QueueMessage, Duration)>,
    retried: Vec<(String, Duration)>,
    dead: Vec<String>,
}

/// The delivery queue and its DLQ, in memory; clones share the log.
#[derive(Clone, Default)]
pub struct FakeQueue(Arc<Mutex<QueueLog>>);

impl FakeQueue {
    fn lock(&self) -> MutexGuard<'_, QueueLog> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Messages sent, with the delay each was sent with.
    pub fn sent(&self) -> Vec<(QueueMessage, Duration)> {
        self.lock().sent.clone()
    }

    /// Received messages made to reappear: receipt handle and delay.
    pub fn retried(&self) -> Vec<(String, Duration)> {
        self.lock().retried.clone()
    }

    /// Documents parked on the dead-letter queue, parsed.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        self.lock().dead.iter().map(|d| serde_json::from_str(d).unwrap_or(serde_json::Value::Null)).collect()
    }
}

impl DeliveryQueue for FakeQueue {
    async fn enqueue(&self, msg: &QueueMessage, delay: Duration) -> Result<(), QueueError> {
        self.lock().sent.push((msg.clone(), delay));
        Ok(())
    }

    async fn enqueue_many(&self, msgs: &[(QueueMessage, Duration)]) -> Result<Vec<usize>, QueueError> {
        self.lock().sent.extend_from_slice(msgs);
        Ok(Vec::new())
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.lock().retried.push((receipt_handle.to_owned(), delay));
        Ok(())
    }

    async fn dead_letter(&self, doc: &DeadLetter) -> Result<(), QueueError> {
        // Kept as the body the adapter sends, so tests read what a DLQ consumer reads.
        self.lock().dead.push(doc.to_body());
        Ok(())
    }
}

impl crate::ports::QueueDepths for FakeQueue {
    /// Everything sent counts as visible (nothing here receives), delayed
    /// ones as delayed; dead letters as the DLQ's visible messages.
    async fn queue_stats(&self) -> Result<crate::ports::QueueStats, QueueError> {
        let log = self.lock();
        let delayed = log.sent.iter().filter(|(_, d)| !d.is_zero()).count() as u64;
        Ok(crate::ports::QueueStats {
            delivery: crate::ports::QueueDepth { visible: log.sent.len() as u64 - delayed, in_flight: 0, delayed },
            dlq: crate::ports::QueueDepth { visible: log.dead.len() as u64, ..Default::default() },
        })
    }
}

/// A schedule as the fake scheduler holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordedSchedule {
    At { fire_at: EpochMillis, msg: QueueMessage, delay: Duration },
    Cron { cron: CronSchedule, task: TaskId, enabled: bool },
}

/// EventBridge Scheduler, in memory: schedules by name; clones share them.
#[derive(Clone, Default)]
pub struct FakeScheduler(Arc<Mutex<BTreeMap<String, RecordedSchedule>>>);

impl FakeScheduler {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, RecordedSchedule>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The schedules that exist now, by name.
    pub fn schedules(&self) -> BTreeMap<String, RecordedSchedule> {
        self.lock().clone()
    }
}

impl Scheduler for FakeScheduler {
    async fn create_at(
        &self,
        name: &str,
        fire_at: EpochMillis,
        msg: &QueueMessage,
        delay: Duration,
    ) -> Result<(), ScheduleError> {
        self.lock().insert(name.to_owned(), RecordedSchedule::At { fire_at, msg: msg.clone(), delay });
        Ok(())
    }

    async fn create_cron(&self, name: &str, cron: &CronSchedule, task: &TaskId) -> Result<(), ScheduleError> {
        let s = RecordedSchedule::Cron { cron: cron.clone(), task: task.clone(), enabled: true };
        self.lock().insert(name.to_owned(), s);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), ScheduleError> {
        self.lock().remove(name);
        Ok(())
    }

    async fn set_enabled(
        &self,
        name: &str,
        cron: &CronSchedule,
        task: &TaskId,
        enabled: bool,
    ) -> Result<(), ScheduleError> {
        let s = RecordedSchedule::Cron { cron: cron.clone(), task: task.clone(), enabled };
        self.lock().insert(name.to_owned(), s);
        Ok(())
    }
}
