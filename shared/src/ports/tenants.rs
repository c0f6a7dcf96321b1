//! Tenants, their API keys and their quotas.

use std::future::Future;

use super::StoreError;
use crate::domain::{EpochMillis, KeyGrant, KeyId, KeyInfo, Quotas, Tenant, TenantId};

/// Tenants, keys and quotas.
pub trait TenantStore: Send + Sync + 'static {
    fn create_tenant(&self, tenant: &Tenant) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every tenant created since the registry exists (the admin's metrics walk it).
    fn list_tenants(&self) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send;
    fn get_tenant(&self, id: &TenantId) -> impl Future<Output = Result<Option<Tenant>, StoreError>> + Send;
    /// Changes status and quotas; `Ok(false)` if there is no such tenant.
    fn update_tenant(
        &self,
        id: &TenantId,
        enabled: Option<bool>,
        quotas: Option<Quotas>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn put_key(
        &self,
        tenant: &TenantId,
        key_id: &KeyId,
        hash: &str,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The tenant of an unrevoked key hash, with the key's expiry (the caller
    /// compares it with its clock).
    fn tenant_of_key(&self, hash: &str) -> impl Future<Output = Result<Option<KeyGrant>, StoreError>> + Send;
    /// Revokes a key; `Ok(false)` if the tenant has no such key.
    fn revoke_key(
        &self,
        tenant: &TenantId,
        key_id: &KeyId,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The tenant's keys: ids, creation, revocation and expiry times.
    fn list_keys(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<KeyInfo>, StoreError>> + Send;
    /// Reserves `n` active-task slots; `Ok(false)` if that would exceed the quota.
    fn reserve_active(&self, tenant: &Tenant, n: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Gives back `n` slots (tasks finished, cancelled or never created).
    fn release_active(&self, tenant: &TenantId, n: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Counts `n` creations against this second's rate; `Ok(false)` if over.
    fn take_rate(
        &self,
        tenant: &Tenant,
        n: u64,
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
