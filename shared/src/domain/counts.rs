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
}

/// Net changes, per tenant.
pub type Deltas = HashMap<String, TenantDelta>;
