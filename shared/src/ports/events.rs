//! Lifecycle events: where they are published, and which a tenant wants.

use std::future::Future;

use super::{Source, StoreError};
use crate::domain::{BusEvent, EventType, TenantId};

/// Publishing events failed (after the adapter's own retries of failed entries).
#[derive(Debug, thiserror::Error)]
#[error("publishing events failed: {0}")]
pub struct EventError(#[source] pub Source);

/// The event bus.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes every event (in calls of at most ten), or fails.
    fn publish(&self, events: &[BusEvent]) -> impl Future<Output = Result<(), EventError>> + Send;
}

/// The event types each tenant opted in to (none by default: every event costs).
pub trait EventSettings: Send + Sync + 'static {
    fn event_types(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<EventType>, StoreError>> + Send;
    fn set_event_types(
        &self,
        tenant: &TenantId,
        types: &[EventType],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
