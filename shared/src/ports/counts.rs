//! Per-tenant status counts, kept by the counter from the table's stream.

use std::future::Future;

use super::StoreError;
use crate::domain::{Activity, Deltas, EpochMillis, TaskStatus, TenantId};

/// Status counts per tenant.
pub trait CountStore: Send + Sync + 'static {
    /// Adds one stream batch's status changes to the tenants' counts, once:
    /// `Ok(false)` if this batch was applied before.
    fn apply_counts(&self, batch_id: &str, deltas: &Deltas) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A tenant's task counts by status.
    fn counts(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<(TaskStatus, i64)>, StoreError>> + Send;
    /// A tenant's activity per minute from `since` on (minutes with none are left out), oldest first.
    fn activity(
        &self,
        tenant: &TenantId,
        since: EpochMillis,
    ) -> impl Future<Output = Result<Vec<(EpochMillis, Activity)>, StoreError>> + Send;
}
