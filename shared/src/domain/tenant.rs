//! Tenants and their API keys. A key is shown once at creation and stored
//! only as its SHA-256; its id (the part after `ck_`) names it for rotation
//! and revocation.

use sha2::{Digest, Sha256};

use super::{EpochMillis, KeyId, TenantId};

/// A tenant: one calling system, with its quotas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub enabled: bool,
    pub quotas: Quotas,
    /// Tasks not yet finished (cron tasks until cancelled).
    pub active: u64,
    pub created_at: EpochMillis,
}

/// Per-tenant limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub max_active_tasks: u64,
    /// Tasks a tenant may create per second.
    pub create_rate_per_second: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { max_active_tasks: 10_000, create_rate_per_second: 100 }
    }
}

/// How long a key lives unless its creation says otherwise: one year.
pub const DEFAULT_KEY_LIFETIME_MS: EpochMillis = 365 * 86_400_000;
/// The longest lifetime a key can be given: five years.
pub const MAX_KEY_LIFETIME_MS: EpochMillis = 5 * 365 * 86_400_000;

/// An API key as its tenant's listing shows it (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: KeyId,
    pub created_at: EpochMillis,
    pub revoked_at: Option<EpochMillis>,
    /// `None` for a key made before keys expired: it does not expire.
    pub expires_at: Option<EpochMillis>,
}

/// What a key's hash leads to: its tenant, and when it stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant {
    pub tenant: TenantId,
    pub expires_at: Option<EpochMillis>,
}

/// A new API key: the secret (shown once) and what is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApiKey {
    pub key_id: KeyId,
    /// `ck_<key_id>_<secret>`: the bearer token.
    pub secret: String,
    pub hash: String,
}

impl NewApiKey {
    /// A random key (122 + 122 bits from the OS generator via UUIDv4).
    pub fn generate() -> Self {
        let key_id = KeyId::generate();
        let secret = format!("ck_{key_id}_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let hash = hash_key(&secret);
        Self { key_id, secret, hash }
    }
}

/// The stored form of a key: hex SHA-256.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets without an early exit (same-length digests).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_stored_as_hashes() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(&format!("ck_{}_", a.key_id)));
        assert_eq!(a.hash, hash_key(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(a.key_id.as_str()));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
