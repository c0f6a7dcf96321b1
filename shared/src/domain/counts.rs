//! Per-tenant status counts as values: what one batch of task changes adds
//! to each tenant's counts and active-task slots. The counter computes them
//! from a stream batch; the count store applies them.

use std::collections::{BTreeMap, HashMap};

use super::TaskStatus;

/// One tenant's net change in a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantDelta {
    pub statuses: BTreeMap<TaskStatus, i64>,
    /// Active-task slots to give back (negative) for tasks that left the active set.
    pub active: i64,
    /// What happened in each minute (start of the minute, epoch ms): every
    /// transition, not the net change, so a retry that then succeeded counts
    /// in both columns.
    pub minutes: BTreeMap<i64, Activity>,
}

/// A minute's deliveries, retries and failures: the transitions into
/// `succeeded`, `retrying` and `failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub delivered: i64,
    pub retried: i64,
    pub failed: i64,
}

impl Activity {
    /// The column a transition into `status` adds to, if any.
    pub fn count(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Succeeded => self.delivered += 1,
            TaskStatus::Retrying => self.retried += 1,
            TaskStatus::Failed => self.failed += 1,
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub const MINUTE_MS: i64 = 60_000;

/// Net changes, per tenant.
pub type Deltas = HashMap<String, TenantDelta>;
