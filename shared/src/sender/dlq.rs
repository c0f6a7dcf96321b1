//! What the sender parks on the dead-letter queue: a task that failed for
//! good, or a message that names no task (poison).

use serde_json::{Value, json};

use super::Sender;
use crate::domain::format_millis;
use crate::ports::{DeliveryLedger, DeliveryQueue, Scheduler, Unit};

/// The document of a task that failed for good; `unit` (with the task's
/// tenant) is known once the task was claimed.
pub(super) fn failed_doc(unit: Option<&(Unit, String)>, reason: &str) -> Value {
    let (task_id, run, tenant) = match unit {
        Some((u, t)) => (Some(u.task.to_string()), u.run.map(format_millis), Some(t.clone())),
        None => (None, None, None),
    };
    json!({"type": "task.failed.v1", "task_id": task_id, "run": run, "tenant": tenant, "reason": reason})
}

/// The document of a message that names no task, with its body.
pub(super) fn poison_doc(reason: &str, body: &str) -> Value {
    json!({"type": "poison.v1", "reason": reason, "body": body})
}

impl<S: DeliveryLedger, Q: DeliveryQueue, C: Scheduler> Sender<S, Q, C> {
    pub(super) async fn park(&self, doc: Value) -> Result<(), ()> {
        self.queue.dead_letter(doc.to_string()).await.map_err(|e| {
            tracing::error!(error = %e, "could not write to the DLQ; message will be redelivered");
        })
    }
}
