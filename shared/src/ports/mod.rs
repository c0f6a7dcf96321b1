//! The ports the use cases need, one trait per concern: tasks as the API sees
//! them ([`TaskStore`]), the sender's ledger ([`DeliveryLedger`]), the
//! reconciler's index ([`ReconcileIndex`]), status counts ([`CountStore`]),
//! replays ([`ReplayStore`]), tenants ([`TenantStore`]), the delivery queue
//! and the scheduler. Each use case names only the ports it calls. The AWS
//! adapters ([`crate::dynamo`], [`crate::sqs`], [`crate::schedules`])
//! implement them.

use std::error::Error as StdError;

mod audit;
mod counts;
mod delivery;
mod events;
mod fields;
mod flows;
mod queue;
mod reconcile;
mod replays;
mod secrets;
mod tasks;
mod tenants;

pub use audit::{AuditLog, AuditPage, QueueDepth, QueueDepths, QueueStats};
pub use counts::CountStore;
pub use delivery::{Claim, DeliveryLedger, Record, Transition, Unit};
pub use events::{EventBus, EventError, EventSettings};
pub use fields::FieldSeal;
pub use flows::{FlowLimiter, FlowPolicies};
pub use queue::{DeliveryQueue, Scheduler};
pub use reconcile::{CandidatePage, ReconcileIndex};
pub use replays::ReplayStore;
pub use secrets::SigningSecrets;
pub use tasks::{Cancelled, Created, ExpiredGroup, ListFilter, Page, Retried, StoredTask, TaskStore, UniqueKey};
pub use tenants::TenantStore;

type Source = Box<dyn StdError + Send + Sync>;

/// A store call failed, by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused for now (throttled, a 5xx,
    /// a timeout, a failed connection): try again.
    #[error("store unavailable")]
    Unavailable(#[source] Source),
    /// The store refused the input itself (an item over its size limit, a
    /// key it cannot hold): retrying cannot help, the caller must change it.
    #[error("store refused the input")]
    Invalid(#[source] Source),
    /// The store cannot serve this call as deployed (no such table or index,
    /// access denied, a request built wrong): retrying cannot help, and the
    /// input is not at fault either. A bug or a misconfiguration for a person.
    #[error("store call cannot succeed as deployed")]
    Permanent(#[source] Source),
    /// An item exists but cannot be read back: a bug or a manual edit.
    #[error("stored item for {id} is malformed: {what}")]
    Corrupt { id: String, what: String },
}

/// A queue call failed.
#[derive(Debug, thiserror::Error)]
#[error("delivery queue unavailable")]
pub struct QueueError(#[source] pub Source);

/// A scheduler call failed.
#[derive(Debug, thiserror::Error)]
#[error("scheduler unavailable")]
pub struct ScheduleError(#[source] pub Source);
