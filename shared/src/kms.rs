//! The KMS adapter that seals signing secrets for storage: `Encrypt` (the
//! API, making a secret) and `Decrypt` (the sender, signing with it) under one
//! key, each bound by an encryption context to the tenant and secret it
//! belongs to, so a sealed secret copied onto another item does not open.

use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;

use crate::ports::StoreError;

/// Seals and opens secrets with one KMS key.
#[derive(Clone, Debug)]
pub struct KmsSealer {
    client: Client,
    key_id: String,
}

/// The store was asked to seal or open a secret without a KMS key configured.
#[derive(Debug, thiserror::Error)]
#[error("signing secrets need a KMS key (COURIER_SIGNING_KEY_ID)")]
pub struct NoSigningKey;

/// KMS error codes no retry helps with: the key is gone, disabled or not
/// ours to use, or the sealed bytes do not open under this context.
const PERMANENT_CODES: [&str; 8] = [
    "NotFoundException",
    "DisabledException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
    "InvalidCiphertextException",
    "IncorrectKeyException",
    "AccessDeniedException",
    "ValidationException",
];

fn kms_error<E, R>(e: aws_sdk_kms::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let permanent = match &e {
        aws_sdk_kms::error::SdkError::ConstructionFailure(_) => true,
        _ => e.as_service_error().and_then(|s| s.code()).is_some_and(|c| PERMANENT_CODES.contains(&c)),
    };
    if permanent { StoreError::Permanent(Box::new(e)) } else { StoreError::Unavailable(Box::new(e)) }
}

/// KMS answered without the bytes it should have.
#[derive(Debug, thiserror::Error)]
#[error("KMS answered {0} without its blob")]
struct EmptyAnswer(&'static str);

impl KmsSealer {
    pub fn new(client: Client, key_id: impl Into<String>) -> Self {
        Self { client, key_id: key_id.into() }
    }

    /// The sealer of the deployed key (`config.signing_key_id`), if one is set.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Option<Self> {
        config.signing_key_id.as_ref().map(|k| Self::new(Client::new(sdk), k))
    }

    /// Encrypts `plain` bound to (`tenant`, `secret`).
    pub async fn seal(&self, plain: &[u8], tenant: &str, secret: &str) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plain))
            .encryption_context("courier:tenant", tenant)
            .encryption_context("courier:secret", secret)
            .send()
            .await
            .map_err(kms_error)?;
        out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| StoreError::Permanent(Box::new(EmptyAnswer("Encrypt"))))
    }

    /// Decrypts what [`KmsSealer::seal`] made for (`tenant`, `secret`).
    pub async fn open(&self, sealed: &[u8], tenant: &str, secret: &str) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(sealed))
            .encryption_context("courier:tenant", tenant)
            .encryption_context("courier:secret", secret)
            .send()
            .await
            .map_err(kms_error)?;
        out.plaintext.map(Blob::into_inner).ok_or_else(|| StoreError::Permanent(Box::new(EmptyAnswer("Decrypt"))))
    }
}
