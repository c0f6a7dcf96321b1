//! Replay documents: their progress is saved page by page, guarded by a version.

use std::future::Future;

use super::StoreError;
use crate::domain::{Replay, ReplayId};

/// Replays of failed tasks.
pub trait ReplayStore: Send + Sync + 'static {
    /// Stores a new replay (its id must be new).
    fn put_replay(&self, r: &Replay) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A replay by id, as last saved.
    fn get_replay(&self, id: &ReplayId) -> impl Future<Output = Result<Option<Replay>, StoreError>> + Send;
    /// Saves `r` if the stored version is `r.version - 1`; `Ok(false)` if it changed meanwhile.
    fn save_replay(&self, r: &Replay) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
