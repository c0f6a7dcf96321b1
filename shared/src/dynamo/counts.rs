//! [`CountStore`] on DynamoDB: a stream batch's deltas applied once per
//! tenant, each by one conditional write of the tenant's own item.
//!
//! A tenant's counts (`c_<status>`), its active-task count (`active`, which
//! the API reads with the tenant) and the batches last applied to it (`cb`:
//! short hashes of their ids, newest last) live on its `TENANT` item. Each
//! tenant of a batch is one read and one `UpdateItem` that adds the deltas,
//! records the batch and bumps a version (`cbv`) it is conditioned on: a
//! batch seen before is skipped, a concurrent writer (the counter of another
//! stream shard) makes it read again. No transaction: a retried batch
//! re-applies exactly the tenants it had not applied yet. The API's strict
//! reservations `ADD active` without touching the version: additions commute.

use sha2::Digest;

use super::DynamoStore;
use super::codec::{get_n, n, opt_s, s};
use super::errors::{is_conditional_failure, store_error};
use super::keys::{key, tenant_pk};
use crate::domain::{Deltas, TaskStatus, TenantDelta, TenantId};
use crate::ports::{CountStore, StoreError};
use crate::resources::TABLE_HASH_KEY as PK;

/// Batches remembered per tenant: a retry comes within minutes, long before
/// this many later batches touched the same tenant.
const REMEMBERED_BATCHES: usize = 24;

/// A batch's short name on a tenant item.
fn batch_hash(batch_id: &str) -> String {
    sha2::Sha256::digest(batch_id.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl DynamoStore {
    /// Applies one tenant's part of a batch; `Ok(false)` if it was applied before.
    async fn apply_tenant_counts(&self, tenant: &str, hash: &str, delta: &TenantDelta) -> Result<bool, StoreError> {
        for _ in 0..20 {
            let item = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(tenant), "TENANT")))
                .projection_expression("cb, cbv")
                .consistent_read(true)
                .send()
                .await
                .map_err(store_error)?
                .item;
            let Some(item) = item else {
                // A tenant that does not exist (any more) has nothing to count.
                return Ok(false);
            };
            let seen: Vec<&str> = opt_s(&item, "cb").unwrap_or_default().split_whitespace().collect();
            if seen.contains(&hash) {
                return Ok(false);
            }
            let version: Option<i64> = get_n(tenant, &item, "cbv")?;
            let keep = seen.len().saturating_sub(REMEMBERED_BATCHES - 1);
            let recent: Vec<&str> = seen[keep..].iter().copied().chain([hash]).collect();
            let mut u = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(tenant), "TENANT")))
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":next", n(version.unwrap_or(0) + 1))
                .expression_attribute_values(":cb", s(recent.join(" ")));
            u = match version {
                Some(v) => {
                    u.condition_expression("attribute_exists(#pk) AND cbv = :v").expression_attribute_values(":v", n(v))
                }
                None => u.condition_expression("attribute_exists(#pk) AND attribute_not_exists(cbv)"),
            };
            let mut adds = Vec::new();
            for (i, (status, d)) in delta.statuses.iter().enumerate() {
                adds.push(format!("#c{i} :d{i}"));
                u = u.expression_attribute_names(format!("#c{i}"), format!("c_{}", status.as_str()));
                u = u.expression_attribute_values(format!(":d{i}"), n(d));
            }
            if delta.active != 0 {
                adds.push("active :a".to_owned());
                u = u.expression_attribute_values(":a", n(delta.active));
            }
            let add = if adds.is_empty() { String::new() } else { format!(" ADD {}", adds.join(", ")) };
            match u.update_expression(format!("SET cb = :cb, cbv = :next{add}")).send().await {
                Ok(_) => return Ok(true),
                // Another counter wrote the tenant meanwhile (or it went away): read again.
                Err(e) if is_conditional_failure(&e) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(StoreError::Unavailable(Box::new(super::errors::Busy(format!("counts of tenant {tenant} are contended")))))
    }
}

impl CountStore for DynamoStore {
    async fn apply_counts(&self, batch_id: &str, deltas: &Deltas) -> Result<bool, StoreError> {
        let hash = batch_hash(batch_id);
        let mut tenants: Vec<(&String, &TenantDelta)> = deltas.iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(b.0));
        let mut any = false;
        for (tenant, delta) in tenants {
            any |= self.apply_tenant_counts(tenant, &hash, delta).await?;
        }
        Ok(any)
    }

    async fn counts(&self, tenant: &TenantId) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
        let tenant = tenant.as_str();
        let out = self.get_item(key(tenant_pk(tenant), "TENANT")).await?;
        let item = out.unwrap_or_default();
        TaskStatus::ALL
            .iter()
            .map(|s| Ok((*s, get_n(tenant, &item, &format!("c_{}", s.as_str()))?.unwrap_or(0))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_are_short_and_stable() {
        assert_eq!(batch_hash("1..9"), batch_hash("1..9"));
        assert_ne!(batch_hash("1..9"), batch_hash("1..10"));
        assert_eq!(batch_hash("a").len(), 12);
    }
}
