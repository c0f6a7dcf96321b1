//! The sender's cache of tenants' unsealed signing secrets: one read of the
//! tenant's secret items (and one KMS `Decrypt` per secret) per tenant per
//! [`crate::config::Config::signing_cache_ms`], not per delivery. A tenant
//! with no secret is cached too (an empty list), so its deliveries cost no
//! extra read either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::{EpochMillis, SigningSecret, TenantId};
use crate::ports::{SigningSecrets, StoreError};

/// A tenant's secrets with when they were read.
type Entries = HashMap<TenantId, (EpochMillis, Arc<[SigningSecret]>)>;

/// Secrets by tenant, with when they were read.
#[derive(Default)]
pub struct SecretCache {
    ttl_ms: i64,
    entries: Mutex<Entries>,
    /// Held while reading: the deliveries of one batch that all miss wait
    /// for the first one's read instead of each reading (and decrypting).
    reading: tokio::sync::Mutex<()>,
}

impl SecretCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self { ttl_ms: ttl_ms as i64, entries: Mutex::default(), reading: tokio::sync::Mutex::default() }
    }

    /// The tenant's signing secrets at `now`: cached, or read (and unsealed) again.
    pub async fn get<S: SigningSecrets>(
        &self,
        store: &S,
        tenant: &TenantId,
        now: EpochMillis,
    ) -> Result<Arc<[SigningSecret]>, StoreError> {
        if let Some(found) = self.fresh(tenant, now) {
            return Ok(found);
        }
        let _reading = self.reading.lock().await;
        if let Some(found) = self.fresh(tenant, now) {
            return Ok(found);
        }
        let secrets: Arc<[SigningSecret]> = store.signing_secrets(tenant, now).await?.into();
        tracing::debug!(tenant = %tenant, secrets = secrets.len(), "signing secrets read");
        self.lock().insert(tenant.clone(), (now, secrets.clone()));
        Ok(secrets)
    }

    fn fresh(&self, tenant: &TenantId, now: EpochMillis) -> Option<Arc<[SigningSecret]>> {
        self.lock().get(tenant).filter(|(at, _)| now - at < self.ttl_ms).map(|(_, s)| s.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SecretId, SecretInfo};
    use crate::testing::FakeStore;

    #[tokio::test]
    async fn secrets_are_read_once_per_tenant_until_the_cache_expires() {
        let store = FakeStore::new();
        let tenant = TenantId::generate();
        let cache = SecretCache::new(60_000);
        assert!(cache.get(&store, &tenant, 0).await.expect("read").is_empty(), "no secret yet");
        let secret = SigningSecret::generate().expect("random");
        let info = SecretInfo { id: SecretId::generate(), created_at: 1, until: None };
        store.put_secret(&tenant, &info, &secret).await.expect("stored");
        assert!(cache.get(&store, &tenant, 59_999).await.expect("cached").is_empty(), "the empty list is cached");
        assert_eq!(&*cache.get(&store, &tenant, 60_000).await.expect("read again"), &[secret]);
    }

    /// Counts the reads of the store it wraps.
    struct Counting(FakeStore, std::sync::atomic::AtomicUsize);

    impl SigningSecrets for Counting {
        async fn put_secret(&self, t: &TenantId, i: &SecretInfo, s: &SigningSecret) -> Result<(), StoreError> {
            self.0.put_secret(t, i, s).await
        }
        async fn list_secrets(&self, t: &TenantId) -> Result<Vec<SecretInfo>, StoreError> {
            self.0.list_secrets(t).await
        }
        async fn expire_secret(&self, t: &TenantId, id: &SecretId, until: EpochMillis) -> Result<bool, StoreError> {
            self.0.expire_secret(t, id, until).await
        }
        async fn delete_secret(&self, t: &TenantId, id: &SecretId) -> Result<bool, StoreError> {
            self.0.delete_secret(t, id).await
        }
        async fn signing_secrets(&self, t: &TenantId, now: EpochMillis) -> Result<Vec<SigningSecret>, StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.0.signing_secrets(t, now).await
        }
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_tenant_read_once() {
        let store = Counting(FakeStore::new(), Default::default());
        let tenant = TenantId::generate();
        let cache = SecretCache::new(60_000);
        let gets = (0..10).map(|_| cache.get(&store, &tenant, 0));
        for got in futures_util::future::join_all(gets).await {
            got.expect("read");
        }
        assert_eq!(store.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
