//! [`CountStore`] on DynamoDB: a stream batch's deltas applied once, in
//! transactions guarded by the batch's identity.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::codec::{get_n, n, ttl_secs};
use super::errors::{is_transaction_cancelled, store_error};
use super::keys::{key, tenant_pk};
use super::{DAY_MS, DynamoStore};
use crate::domain::{Deltas, TaskStatus, TenantDelta, TenantId};
use crate::ports::{CountStore, StoreError};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_TTL_ATTRIBUTE as TTL};

/// DynamoDB's limit of items per transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

impl DynamoStore {
    /// One transaction of a stream batch's counts, guarded by `id`; `Ok(false)` if applied before.
    pub(super) async fn apply_count_chunk(&self, id: &str, writes: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        let now = crate::domain::now_millis();
        let mut marker = key(format!("COUNTBATCH#{id}"), "COUNTBATCH");
        marker.insert(TTL.into(), ttl_secs(now + 2 * DAY_MS));
        let guard = Put::builder()
            .table_name(&self.table)
            .set_item(Some(marker))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(store_error)?;
        let mut items = vec![TransactWriteItem::builder().put(guard).build()];
        items.extend(writes);
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_transaction_cancelled(&e) => {
                let seen = self.get_item(key(format!("COUNTBATCH#{id}"), "COUNTBATCH")).await?;
                if seen.is_some() { Ok(false) } else { Err(store_error(e)) }
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

impl CountStore for DynamoStore {
    async fn apply_counts(&self, batch_id: &str, deltas: &Deltas) -> Result<bool, StoreError> {
        // A transaction holds 100 items: its guard and up to two per tenant. The
        // tenants go in a fixed order, so a retried batch forms the same chunks,
        // and each chunk is guarded by its own id: a chunk applied before a
        // failure is not counted again when the batch comes back.
        let mut tenants: Vec<(&String, &TenantDelta)> = deltas.iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(b.0));
        let mut chunks: Vec<Vec<TransactWriteItem>> = vec![Vec::new()];
        for (tenant, delta) in tenants {
            let mut writes = Vec::new();
            if !delta.statuses.is_empty() {
                let mut u = Update::builder().table_name(&self.table).set_key(Some(key(tenant_pk(tenant), "COUNTS")));
                let mut adds = Vec::new();
                for (i, (status, d)) in delta.statuses.iter().enumerate() {
                    adds.push(format!("#c{i} :d{i}"));
                    u = u.expression_attribute_names(format!("#c{i}"), format!("c_{}", status.as_str()));
                    u = u.expression_attribute_values(format!(":d{i}"), n(d));
                }
                let u = u.update_expression(format!("ADD {}", adds.join(", "))).build().map_err(store_error)?;
                writes.push(TransactWriteItem::builder().update(u).build());
            }
            if delta.active != 0 {
                let u = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(tenant_pk(tenant), "TENANT")))
                    .update_expression("ADD active :a")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_values(":a", n(delta.active))
                    .build()
                    .map_err(store_error)?;
                writes.push(TransactWriteItem::builder().update(u).build());
            }
            let last = chunks.last_mut().expect("one chunk at least");
            if last.len() + writes.len() > MAX_TRANSACTION_ITEMS - 1 {
                chunks.push(writes);
            } else {
                last.extend(writes);
            }
        }
        let mut any = false;
        for (i, writes) in chunks.into_iter().enumerate() {
            if writes.is_empty() {
                continue;
            }
            // The first chunk keeps the batch's own id (batches counted before chunking stay counted).
            let id = if i == 0 { batch_id.to_owned() } else { format!("{batch_id}#{i}") };
            any |= self.apply_count_chunk(&id, writes).await?;
        }
        Ok(any)
    }

    async fn counts(&self, tenant: &TenantId) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
        let tenant = tenant.as_str();
        let out = self.get_item(key(tenant_pk(tenant), "COUNTS")).await?;
        let item = out.unwrap_or_default();
        TaskStatus::ALL
            .iter()
            .map(|s| Ok((*s, get_n(tenant, &item, &format!("c_{}", s.as_str()))?.unwrap_or(0))))
            .collect()
    }
}
