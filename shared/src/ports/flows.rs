//! Flow control's ports: the policies (set through the API, read by every
//! sender as one cached snapshot) and the limiter (the shared per-key state
//! every sender reserves slots on, reports failures to and moves the breaker
//! through). [`crate::dynamo::DynamoStore`] implements both on the tasks
//! table; the fakes in `testing` implement them in memory.

use std::future::Future;

use super::StoreError;
use crate::domain::{
    Cas, EpochMillis, FlowChange, FlowEvent, FlowKey, FlowPolicy, FlowShared, FlowSnapshot, PolicyScope, Reservation,
    Tally,
};

/// Flow policies and holds.
pub trait FlowPolicies: Send + Sync + 'static {
    /// Every policy and every hold (one query of the policy partition, all pages).
    fn flow_snapshot(&self) -> impl Future<Output = Result<FlowSnapshot, StoreError>> + Send;
    fn get_policy(
        &self,
        key: &FlowKey,
        scope: &PolicyScope,
    ) -> impl Future<Output = Result<Option<FlowPolicy>, StoreError>> + Send;
    /// Creates or replaces the policy; `Ok(true)` when it was created.
    fn put_policy(
        &self,
        key: &FlowKey,
        scope: &PolicyScope,
        policy: &FlowPolicy,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// `Ok(false)` when there was none.
    fn delete_policy(
        &self,
        key: &FlowKey,
        scope: &PolicyScope,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The key's shared state (`None`: never written) and its last `history`
    /// transitions, newest first.
    fn flow_state(
        &self,
        key: &FlowKey,
        history: usize,
    ) -> impl Future<Output = Result<(Option<FlowShared>, Vec<FlowEvent>), StoreError>> + Send;
}

/// The shared state of each key.
pub trait FlowLimiter: Send + Sync + 'static {
    /// One conditional write: the reservation's buckets and leases, on
    /// condition that the key is not paused and its breaker is closed.
    /// `Refused` carries the item as it was (a fresh [`FlowShared`] if none).
    fn reserve(&self, key: &FlowKey, r: &Reservation) -> impl Future<Output = Result<Cas, StoreError>> + Send;
    /// Gives leases back (each only if it still holds the value it was taken with).
    fn release(&self, key: &FlowKey, leases: &[(u32, i64)]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Adds a sender's tally to the key's breaker window (`window_start`:
    /// the window the report belongs to; an older stored window restarts)
    /// and its 429/503 count. Returns the state after the write.
    fn report(
        &self,
        key: &FlowKey,
        tally: &Tally,
        window_start: EpochMillis,
        now: EpochMillis,
    ) -> impl Future<Output = Result<FlowShared, StoreError>> + Send;
    /// A conditional change (see [`FlowChange`] for each condition); breaker
    /// and pause changes also write the key's hold item and a history entry.
    fn change(
        &self,
        key: &FlowKey,
        change: &FlowChange,
        now: EpochMillis,
    ) -> impl Future<Output = Result<Cas, StoreError>> + Send;
}
