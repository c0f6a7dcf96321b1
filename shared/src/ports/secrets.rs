//! Tenants' signing secrets (Standard Webhooks). The store keeps them sealed
//! (the DynamoDB adapter with KMS: never in clear in the table); callers see
//! a secret's bytes only when they make it (the API, to show it once) or
//! sign with it (the sender).

use std::future::Future;

use super::StoreError;
use crate::domain::{EpochMillis, SecretId, SecretInfo, SigningSecret, TenantId};

/// A tenant's signing secrets.
pub trait SigningSecrets: Send + Sync + 'static {
    /// Seals and stores a new secret.
    fn put_secret(
        &self,
        tenant: &TenantId,
        info: &SecretInfo,
        secret: &SigningSecret,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The tenant's secrets (ids and times, never bytes), oldest first.
    fn list_secrets(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<SecretInfo>, StoreError>> + Send;
    /// Sets when a secret stops signing (a rotation's grace); `Ok(false)` if there is none.
    fn expire_secret(
        &self,
        tenant: &TenantId,
        id: &SecretId,
        until: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes a secret at once; `Ok(false)` if there is none.
    fn delete_secret(&self, tenant: &TenantId, id: &SecretId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The secrets that sign a request sent at `now` (unsealed), oldest first.
    fn signing_secrets(
        &self,
        tenant: &TenantId,
        now: EpochMillis,
    ) -> impl Future<Output = Result<Vec<SigningSecret>, StoreError>> + Send;
}
