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
use super::codec::{get_n, n, opt_s, s, ttl_secs};
use super::errors::{is_conditional_failure, store_error};
use super::keys::{key, tenant_pk};
use crate::domain::{Activity, Deltas, EpochMillis, MINUTE_MS, TaskStatus, TenantDelta, TenantId};
use crate::ports::{CountStore, StoreError};
use crate::resources::TABLE_HASH_KEY as PK;

/// Batches remembered per tenant: a retry comes within minutes, long before
/// this many later batches touched the same tenant.
const REMEMBERED_BATCHES: usize = 24;

/// A tenant's minute items (`MIN#<start ms>`, 13 digits so they sort) live
/// this long: the console charts the last hour.
const ACTIVITY_TTL_MS: i64 = 2 * 60 * MINUTE_MS;
const MINUTE_PREFIX: &str = "MIN#";

fn minute_sk(minute: EpochMillis) -> String {
    format!("{MINUTE_PREFIX}{:013}", minute.max(0))
}

/// A batch's short name on a tenant item.
fn batch_hash(batch_id: &str) -> String {
    sha2::Sha256::digest(batch_id.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl DynamoStore {
    /// Adds a batch's per-minute activity to the tenant's minute items: one
    /// `UpdateItem` per minute, after the batch's counts were applied (a
    /// batch retried after this is skipped with them; one that died between
    /// the two writes leaves its minutes out: the chart may undercount, never
    /// count twice).
    async fn add_activity(
        &self,
        tenant: &str,
        minutes: &std::collections::BTreeMap<i64, Activity>,
    ) -> Result<(), StoreError> {
        for (minute, a) in minutes {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(tenant), minute_sk(*minute))))
                .update_expression("ADD d :d, r :r, f :f SET #ttl = :ttl")
                .expression_attribute_names("#ttl", crate::resources::TABLE_TTL_ATTRIBUTE)
                .expression_attribute_values(":d", n(a.delivered))
                .expression_attribute_values(":r", n(a.retried))
                .expression_attribute_values(":f", n(a.failed))
                .expression_attribute_values(":ttl", ttl_secs(minute + ACTIVITY_TTL_MS))
                .send()
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

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
                Ok(_) => {
                    self.add_activity(tenant, &delta.minutes).await?;
                    return Ok(true);
                }
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

    async fn activity(
        &self,
        tenant: &TenantId,
        since: EpochMillis,
    ) -> Result<Vec<(EpochMillis, Activity)>, StoreError> {
        let tenant = tenant.as_str();
        // At most 60 or so small items: one page.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", crate::resources::TABLE_RANGE_KEY)
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(minute_sk(since - since.rem_euclid(MINUTE_MS))))
            .expression_attribute_values(":hi", s(format!("{MINUTE_PREFIX}~")))
            .send()
            .await
            .map_err(store_error)?;
        out.items
            .unwrap_or_default()
            .iter()
            .filter_map(|i| {
                let minute = opt_s(i, crate::resources::TABLE_RANGE_KEY)?.strip_prefix(MINUTE_PREFIX)?.parse().ok()?;
                Some((minute, i))
            })
            .map(|(minute, i)| {
                Ok((
                    minute,
                    Activity {
                        delivered: get_n(tenant, i, "d")?.unwrap_or(0),
                        retried: get_n(tenant, i, "r")?.unwrap_or(0),
                        failed: get_n(tenant, i, "f")?.unwrap_or(0),
                    },
                ))
            })
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
