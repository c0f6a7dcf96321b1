//! Unique keys (business ids, idempotency keys): taken by a conditional put
//! before a task exists, taken over from a creator that died, given back.

use super::DynamoStore;
use super::codec::s;
use super::errors::{Busy, applied};
use super::keys::{key, unique_pk};
use crate::domain::{NewTask, TaskId, TenantId};
use crate::ports::{DeliveryLedger, StoreError, TaskStore, UniqueKey, Unit};
use crate::resources::TABLE_HASH_KEY as PK;

/// How many times a create tries to take a contended unique key before giving up.
const UNIQUE_ROUNDS: u32 = 6;

impl DynamoStore {
    /// Takes `unique` for `task`, or returns the task that holds it.
    pub(super) async fn take_unique(&self, task: &NewTask, unique: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
        // The unique key first, by a conditional put: exactly one of concurrent
        // identical creates wins it. (No transaction: none is needed, and the
        // local emulator's transactions restore a copy of the table on failure.)
        let unique_key = key(unique_pk(&task.tenant, unique), "UNIQUE");
        let mut orphan: Option<TaskId> = None;
        // Bounded: a key that keeps changing hands (or vanishing) under us is
        // contention to report, never a loop to spin in.
        for round in 0..UNIQUE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << round.min(5))).await;
            }
            let mut put = self.put(self.unique_item(task, unique));
            put = match &orphan {
                None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", PK),
                Some(o) => {
                    put.condition_expression("task_id = :orphan").expression_attribute_values(":orphan", s(o.as_str()))
                }
            };
            if applied(put.send().await)? {
                return Ok(None);
            }
            let Some(holder) = self.find_by_key(&task.tenant, unique).await? else {
                // The key went away (its holder was discarded or purged): take it fresh.
                orphan = None;
                continue;
            };
            let exists =
                |id: TaskId| async move { self.read_state(&Unit { task: id, run: None }).await.map(|s| s.is_some()) };
            if exists(holder.clone()).await? {
                return Ok(Some(holder));
            }
            if orphan.as_ref() == Some(&holder) {
                // Taken over by us already, yet the put failed: someone else moved it meanwhile.
                continue;
            }
            // Its creator may be between the key and the state: give it a moment.
            tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
            if exists(holder.clone()).await? {
                return Ok(Some(holder));
            }
            // A creator that died after taking the key: take it over.
            tracing::warn!(key = ?unique_key, orphan = %holder, "taking over an orphaned unique key");
            orphan = Some(holder);
        }
        Err(StoreError::Unavailable(Box::new(Busy(format!(
            "unique key {} is contended",
            unique_pk(&task.tenant, unique)
        )))))
    }

    /// Deletes a unique key only if it names `task` (another task may hold it now).
    pub(super) async fn delete_unique_if_mine(
        &self,
        tenant: &TenantId,
        k: &UniqueKey,
        task: &TaskId,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(unique_pk(tenant, k), "UNIQUE")))
            .condition_expression("task_id = :mine")
            .expression_attribute_values(":mine", s(task.as_str()))
            .send()
            .await;
        applied(res)
    }
}
