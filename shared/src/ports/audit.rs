//! The audit log, and the queue depths the metrics report.

use std::future::Future;

use super::{QueueError, StoreError};
use crate::domain::{AuditEntry, AuditQuery};

/// One page of audit entries, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Opaque: pass back for the next (older) page.
    pub cursor: Option<String>,
}

/// Where audit entries are kept (with a TTL) and read back.
pub trait AuditLog: Send + Sync + 'static {
    /// Appends one entry (one small item).
    fn append_audit(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Counts a failed authentication in the entry of its source address and
    /// minute (`entry.at` names the minute): the first creates the entry, the
    /// others add to its `count`, so a flood writes one item per minute.
    fn count_auth_failure(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A page of entries matching `query`, newest first, after `cursor`.
    fn audit_page(
        &self,
        query: &AuditQuery,
        limit: usize,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<AuditPage, StoreError>> + Send;
}

/// Messages in one queue, by state (SQS's approximate counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

/// The delivery queue's and the dead-letter queue's depths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub delivery: QueueDepth,
    pub dlq: QueueDepth,
}

/// Reads queue depths.
pub trait QueueDepths: Send + Sync + 'static {
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;
}
