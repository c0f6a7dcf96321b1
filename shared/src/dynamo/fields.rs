//! [`FieldSeal`] on DynamoDB and KMS: a task's secret values (sensitive
//! headers, `auth` password or token) are stored as
//! `enc:v1:<data key id>:<base64 of nonce and AES-256-GCM ciphertext>`.
//!
//! Envelope encryption: each tenant's values are sealed with a data key (32
//! random bytes) that KMS encrypts under the stack's key, bound to the tenant
//! and the data key's id by the encryption context, and that is stored once as
//! the item `DKEY#<id>` (its blob and tenant; no TTL: a cron task lives on).
//! The API seals with a tenant's current data key for [`KEY_LIFETIME_MS`]
//! (one KMS `Encrypt` and one `PutItem` per tenant per API instance in that
//! time); a sender opens a data key once per [`OPEN_CACHE_MS`] (one `GetItem`
//! and one KMS `Decrypt`), not once per delivery. Without a KMS key
//! configured, values are stored as given.

use std::collections::HashMap;
use std::sync::Mutex;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::DynamoStore;
use super::codec::{n, opt_s, s};
use super::errors::store_error;
use super::keys::key;
use crate::domain::{EpochMillis, RequestSpec, SEALED_PREFIX, TenantId, now_millis};
use crate::ports::{FieldSeal, StoreError};

/// How long the API seals a tenant's values with the same data key.
pub const KEY_LIFETIME_MS: EpochMillis = 10 * 60_000;
/// How long a sender keeps a data key it opened.
pub const OPEN_CACHE_MS: EpochMillis = 15 * 60_000;
const VERSION: &str = "v1";

/// A data key in clear: its id, its bytes, when it was made or opened.
type HeldKey = (String, [u8; 32], EpochMillis);

/// The data keys an instance holds: the current one per tenant (sealing) and
/// those opened by id (opening).
#[derive(Debug, Default)]
pub(super) struct FieldKeys {
    current: Mutex<HashMap<TenantId, HeldKey>>,
    opened: Mutex<HashMap<String, ([u8; 32], EpochMillis)>>,
    /// Held while opening: the deliveries of one batch that all miss wait
    /// for the first one's read and decrypt instead of each making their own
    /// (as the sender's signing-secret cache does).
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
enum FieldError {
    #[error("no randomness: {0}")]
    NoRandom(String),
    #[error("a sealed value does not open: {0}")]
    Corrupt(String),
    #[error("a task holds sealed values but no KMS key is configured (COURIER_SIGNING_KEY_ID)")]
    NoKey,
}

fn permanent(e: FieldError) -> StoreError {
    StoreError::Permanent(Box::new(e))
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| permanent(FieldError::NoRandom(e.to_string())))?;
    Ok(b)
}

fn context(id: &str) -> String {
    format!("fields:{id}")
}

/// Seals `plain` with data key `id`.
fn seal_value(id: &str, key: &[u8; 32], plain: &str) -> Result<String, StoreError> {
    let nonce: [u8; 12] = random()?;
    let cipher = Aes256Gcm::new(key.into());
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: id.as_bytes() })
        .map_err(|e| permanent(FieldError::Corrupt(e.to_string())))?;
    let mut bytes = nonce.to_vec();
    bytes.extend(ct);
    Ok(format!("{SEALED_PREFIX}{VERSION}:{id}:{}", STANDARD.encode(bytes)))
}

/// The data key id and the bytes of a sealed value.
fn parse_sealed(v: &str) -> Option<(&str, Vec<u8>)> {
    let rest = v.strip_prefix(SEALED_PREFIX)?.strip_prefix(VERSION)?.strip_prefix(':')?;
    let (id, b64) = rest.split_once(':')?;
    Some((id, STANDARD.decode(b64).ok()?))
}

fn open_value(id: &str, key: &[u8; 32], bytes: &[u8]) -> Result<String, StoreError> {
    if bytes.len() < 12 {
        return Err(permanent(FieldError::Corrupt(format!("{} bytes", bytes.len()))));
    }
    let (nonce, ct) = bytes.split_at(12);
    let cipher = Aes256Gcm::new(key.into());
    let plain = cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: id.as_bytes() })
        .map_err(|e| permanent(FieldError::Corrupt(e.to_string())))?;
    String::from_utf8(plain).map_err(|e| permanent(FieldError::Corrupt(e.to_string())))
}

impl DynamoStore {
    /// The tenant's current data key, made (and stored) when there is none
    /// younger than [`KEY_LIFETIME_MS`].
    async fn current_field_key(&self, tenant: &TenantId) -> Result<Option<(String, [u8; 32])>, StoreError> {
        let Some(sealer) = &self.sealer else { return Ok(None) };
        let now = now_millis();
        let cached = self.field_keys.current.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned();
        if let Some((id, k, _)) = cached.filter(|(_, _, at)| now - at < KEY_LIFETIME_MS) {
            return Ok(Some((id, k)));
        }
        let k: [u8; 32] = random()?;
        let id: String = random::<8>()?.iter().map(|b| format!("{b:02x}")).collect();
        let blob = sealer.seal(&k, tenant.as_str(), &context(&id)).await?;
        let mut item = key(format!("DKEY#{id}"), "KEY");
        item.extend([
            ("blob".into(), AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(blob))),
            ("tenant".into(), s(tenant.as_str())),
            ("created_at".into(), n(now)),
        ]);
        self.put(item).send().await.map_err(store_error)?;
        self.field_keys.current.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), (id.clone(), k, now));
        Ok(Some((id, k)))
    }

    /// A data key by id (cached for [`OPEN_CACHE_MS`]).
    async fn open_field_key(&self, id: &str) -> Result<[u8; 32], StoreError> {
        let now = now_millis();
        let cached = self.field_keys.opened.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
        if let Some((k, _)) = cached.filter(|(_, at)| now - at < OPEN_CACHE_MS) {
            return Ok(k);
        }
        let _opening = self.field_keys.opening.lock().await;
        let cached = self.field_keys.opened.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
        if let Some((k, _)) = cached.filter(|(_, at)| now - at < OPEN_CACHE_MS) {
            return Ok(k);
        }
        let sealer = self.sealer.as_ref().ok_or_else(|| permanent(FieldError::NoKey))?;
        let item = self
            .get_item(key(format!("DKEY#{id}"), "KEY"))
            .await?
            .ok_or_else(|| permanent(FieldError::Corrupt(format!("no data key {id}"))))?;
        let blob = item.get("blob").and_then(|b| b.as_b().ok()).map(|b| b.as_ref().to_vec()).unwrap_or_default();
        let tenant = opt_s(&item, "tenant").unwrap_or_default();
        let plain = sealer.open(&blob, tenant, &context(id)).await?;
        let k: [u8; 32] =
            plain.try_into().map_err(|_| permanent(FieldError::Corrupt(format!("data key {id} is not 32 bytes"))))?;
        self.field_keys.opened.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), (k, now));
        Ok(k)
    }
}

impl FieldSeal for DynamoStore {
    async fn seal_fields(&self, tenant: &TenantId, spec: &mut RequestSpec) -> Result<(), StoreError> {
        if spec.secret_values_mut().iter().all(|v| v.starts_with(SEALED_PREFIX)) {
            return Ok(());
        }
        let Some((id, k)) = self.current_field_key(tenant).await? else { return Ok(()) };
        for v in spec.secret_values_mut() {
            if !v.starts_with(SEALED_PREFIX) {
                *v = seal_value(&id, &k, v)?;
            }
        }
        Ok(())
    }

    async fn open_fields(&self, spec: &mut RequestSpec) -> Result<(), StoreError> {
        for v in spec.secret_values_mut() {
            if !v.starts_with(SEALED_PREFIX) {
                continue;
            }
            let (id, bytes) =
                parse_sealed(v).ok_or_else(|| permanent(FieldError::Corrupt("not a sealed value".into())))?;
            let k = self.open_field_key(id).await?;
            *v = open_value(id, &k, &bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_only_under_its_key_and_id() {
        let k = [7u8; 32];
        let sealed = seal_value("ab12", &k, "Bearer sk_live_1").expect("sealed");
        assert!(sealed.starts_with("enc:v1:ab12:") && !sealed.contains("sk_live"));
        let (id, bytes) = parse_sealed(&sealed).expect("parses");
        assert_eq!(open_value(id, &k, &bytes).expect("opens"), "Bearer sk_live_1");
        assert!(open_value(id, &[8u8; 32], &bytes).is_err(), "another key");
        assert!(open_value("ab13", &k, &bytes).is_err(), "another id (the AAD)");
        assert_ne!(seal_value("ab12", &k, "x").expect("a"), seal_value("ab12", &k, "x").expect("b"), "fresh nonces");
    }
}
