//! Standard Webhooks signing (standardwebhooks.com): a tenant's signing
//! secrets, the `webhook-id` of a delivery and the `webhook-signature` of one
//! attempt. Pure: the secrets' storage (sealed by KMS) is the store's business.
//!
//! A signature is `v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`
//! with the raw body bytes, keyed by the secret's bytes (the base64 after
//! `whsec_`). During a rotation every active secret signs: the header holds
//! one `v1,…` entry per secret, space-separated, and a receiver accepts the
//! request if any of them verifies with the secret it knows.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

use super::{EpochMillis, SecretId, TaskId};

/// What a secret's text starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret Courier makes (the standard allows 24 to 64).
pub const SECRET_BYTES: usize = 32;
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
/// How long a rotated-out secret keeps signing, so receivers can switch over.
pub const ROTATION_GRACE_MS: i64 = 24 * 3_600_000;

/// A signing secret's key bytes. `Debug` shows none of them.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

/// The operating system's random source failed: no secret is made.
#[derive(Debug, thiserror::Error)]
#[error("no random bytes for a signing secret: {0}")]
pub struct NoRandom(String);

impl SigningSecret {
    /// A new secret of [`SECRET_BYTES`] bytes from the operating system's random source.
    pub fn generate() -> Result<Self, NoRandom> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| NoRandom(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Key bytes as stored (after unsealing): 24 to 64 of them.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, &'static str> {
        if (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            Ok(Self(bytes))
        } else {
            Err("a signing secret has 24 to 64 bytes")
        }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let b64 = text.strip_prefix(SECRET_PREFIX).ok_or("a signing secret starts with whsec_")?;
        Self::from_bytes(STANDARD.decode(b64).map_err(|_| "a signing secret is whsec_ and base64")?)
    }

    /// The secret as shown once to its tenant: `whsec_` + base64.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The key bytes (what is sealed for storage).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// One signature entry: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // Any key length is valid for HMAC: this cannot fail.
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes any key")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one entry per active secret, space-separated.
pub fn signature_header(secrets: &[SigningSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// The `webhook-id` of a delivery: the same for every attempt of a one-off
/// task (its id) or of one cron run (the task's id and the run's time), so a
/// receiver can use it as an idempotency key.
pub fn webhook_id(task: &TaskId, run: Option<EpochMillis>) -> String {
    match run {
        None => task.to_string(),
        Some(run) => format!("{task}_{run}"),
    }
}

/// A secret as listed: never its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretInfo {
    pub id: SecretId,
    pub created_at: EpochMillis,
    /// When a rotated-out secret stops signing (`None`: until revoked or rotated).
    pub until: Option<EpochMillis>,
}

/// Where a secret stands at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// Signs, and is the newest (or one of several) with no end.
    Active,
    /// Rotated out: still signs until its `until`.
    Expiring,
    /// Rotated out and past its grace: signs no more (deleted by TTL later).
    Expired,
}

impl SecretState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
        }
    }
}

impl SecretInfo {
    pub fn state(&self, now: EpochMillis) -> SecretState {
        match self.until {
            None => SecretState::Active,
            Some(u) if u > now => SecretState::Expiring,
            Some(_) => SecretState::Expired,
        }
    }

    /// Whether it signs requests sent at `now`.
    pub fn signs_at(&self, now: EpochMillis) -> bool {
        self.state(now) != SecretState::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_reference_vector_signs_the_same() {
        // The example of the Standard Webhooks reference libraries' tests.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_once_per_secret_and_the_body_bytes_matter() {
        let (a, b) = (SigningSecret::generate().expect("random"), SigningSecret::generate().expect("random"));
        assert_ne!(a, b);
        let header = signature_header(&[a.clone(), b.clone()], "tsk_1", 1_700_000_000, &[0xff, 0x00, 0x80]);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            entries,
            [a.sign("tsk_1", 1_700_000_000, &[0xff, 0, 0x80]), b.sign("tsk_1", 1_700_000_000, &[0xff, 0, 0x80])]
        );
        assert_ne!(a.sign("tsk_1", 1_700_000_000, b"x"), a.sign("tsk_1", 1_700_000_000, b"y"));
        assert_ne!(a.sign("tsk_1", 1_700_000_000, b"x"), a.sign("tsk_1", 1_700_000_001, b"x"));
    }

    #[test]
    fn secrets_round_trip_through_their_text_and_bad_ones_are_refused() {
        let s = SigningSecret::generate().expect("random");
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(&s.expose()), Ok(s.clone()));
        assert_eq!(s.bytes().len(), SECRET_BYTES);
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err(), "no prefix");
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err(), "5 bytes");
        assert!(SigningSecret::from_bytes(vec![0; 65]).is_err());
        assert_eq!(format!("{s:?}"), "SigningSecret(***)");
    }

    #[test]
    fn a_webhook_id_is_the_task_or_the_task_and_its_run() {
        let t = TaskId::parse("tsk_0190a5b2c3d47e8f9a0b1c2d3e4f5a6b").expect("valid");
        assert_eq!(webhook_id(&t, None), "tsk_0190a5b2c3d47e8f9a0b1c2d3e4f5a6b");
        assert_eq!(webhook_id(&t, Some(1_700_000_000_000)), "tsk_0190a5b2c3d47e8f9a0b1c2d3e4f5a6b_1700000000000");
    }

    #[test]
    fn a_rotated_out_secret_signs_until_its_grace_ends() {
        let id = SecretId::generate();
        let active = SecretInfo { id: id.clone(), created_at: 0, until: None };
        let old = SecretInfo { id, created_at: 0, until: Some(1_000) };
        assert_eq!(active.state(5_000), SecretState::Active);
        assert_eq!(old.state(999), SecretState::Expiring);
        assert!(old.signs_at(999));
        assert_eq!(old.state(1_000), SecretState::Expired);
        assert!(!old.signs_at(1_000));
    }
}
