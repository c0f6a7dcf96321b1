//! Parking on the dead-letter queue: a task that failed for good, or a
//! message that names no task (poison). The documents are
//! [`DeadLetter`]s, typed and versioned in the domain.

use super::Sender;
use crate::domain::DeadLetter;
use crate::ports::{DeliveryLedger, DeliveryQueue, Scheduler};

impl<S: DeliveryLedger, Q: DeliveryQueue, C: Scheduler> Sender<S, Q, C> {
    pub(super) async fn park(&self, doc: DeadLetter) -> Result<(), ()> {
        self.queue.dead_letter(&doc).await.map_err(|e| {
            tracing::error!(error = %e, "could not write to the DLQ; message will be redelivered");
        })
    }
}
