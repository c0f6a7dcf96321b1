//! [`TenantStore`] on DynamoDB: tenants, their keys, quotas and rate counters.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::codec::{get_n, n, opt_s, req_n, s, tenant_from_item};
use super::errors::{applied, is_conditional_failure, store_error};
use super::keys::{key, tenant_pk};
use super::{DynamoStore, Item};

/// The partition of the tenant registry (`sk` = tenant id).
const TENANTS: &str = "TENANTS";
use crate::domain::{EpochMillis, KeyGrant, KeyId, KeyInfo, Quotas, Tenant, TenantId};
use crate::ports::{StoreError, TenantStore};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL};

impl TenantStore for DynamoStore {
    async fn create_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        let mut item = key(tenant_pk(t.id.as_str()), "TENANT");
        item.extend([
            ("name".into(), s(&t.name)),
            ("enabled".into(), AttributeValue::Bool(t.enabled)),
            ("max_active".into(), n(t.quotas.max_active_tasks)),
            ("create_rate".into(), n(t.quotas.create_rate_per_second)),
            ("active".into(), n(0)),
            ("created_at".into(), n(t.created_at)),
        ]);
        let tenant = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(store_error)?;
        // The registry entry: a key-only item the admin's metrics list.
        let registry = Put::builder()
            .table_name(&self.table)
            .set_item(Some(key(TENANTS, t.id.as_str())))
            .build()
            .map_err(store_error)?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(tenant).build())
            .transact_items(TransactWriteItem::builder().put(registry).build())
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        // (see `register_tenant` for tenants older than the registry)
        let registry = self.partition_items(TENANTS).await?;
        let ids: Vec<String> = registry.iter().filter_map(|i| opt_s(i, SK).map(str::to_owned)).collect();
        let keys = ids.iter().map(|id| key(tenant_pk(id), "TENANT")).collect();
        let found = self.batch_get_keys(keys).await?;
        let mut tenants = found.values().map(tenant_from_item).collect::<Result<Vec<_>, _>>()?;
        tenants.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(tenants)
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let out = self.get_item(key(tenant_pk(id.as_str()), "TENANT")).await?;
        out.as_ref().map(tenant_from_item).transpose()
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        enabled: Option<bool>,
        quotas: Option<Quotas>,
    ) -> Result<bool, StoreError> {
        let mut sets = Vec::new();
        let mut req =
            self.client.update_item().table_name(&self.table).set_key(Some(key(tenant_pk(id.as_str()), "TENANT")));
        if let Some(e) = enabled {
            sets.push("enabled = :e");
            req = req.expression_attribute_values(":e", AttributeValue::Bool(e));
        }
        if let Some(q) = quotas {
            sets.push("max_active = :m, create_rate = :r");
            req = req
                .expression_attribute_values(":m", n(q.max_active_tasks))
                .expression_attribute_values(":r", n(q.create_rate_per_second));
        }
        let exists = if sets.is_empty() {
            self.get_tenant(id).await?.is_some()
        } else {
            let res = req
                .update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .send()
                .await;
            applied(res)?
        };
        if exists {
            self.register_tenant(id).await?;
        }
        Ok(exists)
    }

    async fn put_key(
        &self,
        tenant: &TenantId,
        key_id: &KeyId,
        hash: &str,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<(), StoreError> {
        let mut lookup = key(format!("APIKEY#{hash}"), "APIKEY");
        lookup.extend([
            ("tenant".into(), s(tenant)),
            ("key_id".into(), s(key_id)),
            ("created_at".into(), n(now)),
            ("expires_at".into(), n(expires_at)),
        ]);
        let mut listed = key(tenant_pk(tenant.as_str()), format!("KEY#{key_id}"));
        listed.extend([("hash".into(), s(hash)), ("created_at".into(), n(now)), ("expires_at".into(), n(expires_at))]);
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            let p = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(store_error)?;
            Ok(TransactWriteItem::builder().put(p).build())
        };
        self.client
            .transact_write_items()
            .transact_items(put(lookup)?)
            .transact_items(put(listed)?)
            .transact_items(put(key(TENANTS, tenant.as_str()))?)
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn tenant_of_key(&self, hash: &str) -> Result<Option<KeyGrant>, StoreError> {
        let id = format!("APIKEY#{hash}");
        let out = self.get_item(key(id.as_str(), "APIKEY")).await?;
        let Some(item) = out.filter(|i| !i.contains_key("revoked_at")) else { return Ok(None) };
        let Some(tenant) = opt_s(&item, "tenant") else { return Ok(None) };
        let tenant =
            TenantId::parse(tenant).map_err(|e| StoreError::Corrupt { id: id.clone(), what: e.to_string() })?;
        Ok(Some(KeyGrant { tenant, expires_at: get_n(&id, &item, "expires_at")? }))
    }

    async fn revoke_key(&self, tenant: &TenantId, key_id: &KeyId, now: EpochMillis) -> Result<bool, StoreError> {
        let listed = self.get_item(key(tenant_pk(tenant.as_str()), format!("KEY#{key_id}"))).await?;
        let Some(hash) = listed.as_ref().and_then(|i| opt_s(i, "hash")).map(str::to_owned) else {
            return Ok(false);
        };
        for k in [key(format!("APIKEY#{hash}"), "APIKEY"), key(tenant_pk(tenant.as_str()), format!("KEY#{key_id}"))] {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .update_expression("SET revoked_at = if_not_exists(revoked_at, :now)")
                .expression_attribute_values(":now", n(now))
                .send()
                .await
                .map_err(store_error)?;
        }
        Ok(true)
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :k)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(tenant_pk(tenant.as_str())))
            .expression_attribute_values(":k", s("KEY#"))
            .send()
            .await
            .map_err(store_error)?;
        out.items
            .unwrap_or_default()
            .iter()
            .map(|i| {
                let sk = opt_s(i, SK).unwrap_or_default();
                let id = KeyId::parse(sk.strip_prefix("KEY#").unwrap_or_default()).map_err(|e| {
                    StoreError::Corrupt { id: format!("{}/{sk}", tenant_pk(tenant.as_str())), what: e.to_string() }
                })?;
                Ok(KeyInfo {
                    id,
                    created_at: req_n(sk, i, "created_at")?,
                    revoked_at: get_n(sk, i, "revoked_at")?,
                    expires_at: get_n(sk, i, "expires_at")?,
                })
            })
            .collect()
    }

    async fn reserve_active(&self, t: &Tenant, count: u64) -> Result<bool, StoreError> {
        let Some(limit) = t.quotas.max_active_tasks.checked_sub(count) else { return Ok(false) };
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(t.id.as_str()), "TENANT")))
            .update_expression("ADD active :k")
            .condition_expression("attribute_exists(#pk) AND (attribute_not_exists(active) OR active <= :lim)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":k", n(count))
            .expression_attribute_values(":lim", n(limit))
            .send()
            .await;
        applied(res)
    }

    async fn release_active(&self, tenant: &TenantId, count: u64) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant.as_str()), "TENANT")))
            .update_expression("ADD active :k")
            .condition_expression("active >= :n")
            .expression_attribute_values(":k", AttributeValue::N(format!("-{count}")))
            .expression_attribute_values(":n", n(count))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Never below zero (a tenant created before counting, or a double release).
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn take_rate(&self, t: &Tenant, count: u64, now: EpochMillis) -> Result<bool, StoreError> {
        let Some(limit) = t.quotas.create_rate_per_second.checked_sub(count) else { return Ok(false) };
        let second = now / 1000;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{}#{second}", t.id), "RATE")))
            .update_expression("ADD #n :k SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(#n) OR #n <= :lim")
            .expression_attribute_names("#n", "n")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":k", n(count))
            .expression_attribute_values(":lim", n(limit))
            .expression_attribute_values(":ttl", n(second + 120))
            .send()
            .await;
        applied(res)
    }
}

impl DynamoStore {
    /// Puts the tenant's registry entry (idempotent). Written with the tenant
    /// and again by every admin change of it (`PATCH`, a new key), so a
    /// tenant created before the registry joins it on its next such change.
    async fn register_tenant(&self, id: &TenantId) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(TENANTS, id.as_str())))
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// A tenant's event opt-ins: the `EVENTS` item of its partition (`types`:
/// the event type names, space-separated). No item: none.
impl crate::ports::EventSettings for DynamoStore {
    async fn event_types(&self, tenant: &TenantId) -> Result<Vec<crate::domain::EventType>, StoreError> {
        let item = self.get_item(key(tenant_pk(tenant.as_str()), "EVENTS")).await?;
        Ok(item
            .as_ref()
            .and_then(|i| opt_s(i, "types"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(crate::domain::EventType::parse)
            .collect())
    }

    async fn set_event_types(&self, tenant: &TenantId, types: &[crate::domain::EventType]) -> Result<(), StoreError> {
        let mut item = key(tenant_pk(tenant.as_str()), "EVENTS");
        let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
        item.insert("types".into(), s(names.join(" ")));
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(store_error)?;
        Ok(())
    }
}
