//! [`SigningSecrets`] on DynamoDB: one item per secret under its tenant
//! (`TENANT#<id>` / `SECRET#<secret id>`), the secret sealed by KMS
//! (`sealed`, binary), never in clear. A rotated-out secret carries `until`
//! (epoch ms) and a TTL a week past it.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{get_n, n, opt_s, req_n, s, ttl_secs};
use super::errors::{applied, store_error};
use super::keys::{key, tenant_pk};
use super::{DAY_MS, DynamoStore, Item};
use crate::domain::{EpochMillis, SecretId, SecretInfo, SigningSecret, TenantId};
use crate::kms::NoSigningKey;
use crate::ports::{SigningSecrets, StoreError};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL};

const SECRET_PREFIX: &str = "SECRET#";

fn secret_sk(id: &SecretId) -> String {
    format!("{SECRET_PREFIX}{id}")
}

impl DynamoStore {
    fn sealer(&self) -> Result<&crate::kms::KmsSealer, StoreError> {
        self.sealer.as_ref().ok_or_else(|| StoreError::Permanent(Box::new(NoSigningKey)))
    }

    /// Every secret item of a tenant (one query: a tenant has a handful).
    async fn secret_items(&self, tenant: &TenantId) -> Result<Vec<Item>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :p)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(tenant_pk(tenant.as_str())))
            .expression_attribute_values(":p", s(SECRET_PREFIX))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.items.unwrap_or_default())
    }
}

fn info_of(tenant: &TenantId, i: &Item) -> Result<SecretInfo, StoreError> {
    let sk = opt_s(i, SK).unwrap_or_default();
    let id = SecretId::parse(sk.strip_prefix(SECRET_PREFIX).unwrap_or_default())
        .map_err(|e| StoreError::Corrupt { id: format!("{}/{sk}", tenant_pk(tenant.as_str())), what: e.to_string() })?;
    Ok(SecretInfo { id, created_at: req_n(sk, i, "created_at")?, until: get_n(sk, i, "until")? })
}

impl SigningSecrets for DynamoStore {
    async fn put_secret(&self, tenant: &TenantId, info: &SecretInfo, secret: &SigningSecret) -> Result<(), StoreError> {
        let sealed = self.sealer()?.seal(secret.bytes(), tenant.as_str(), info.id.as_str()).await?;
        let mut item = key(tenant_pk(tenant.as_str()), secret_sk(&info.id));
        item.extend([("sealed".into(), AttributeValue::B(sealed.into())), ("created_at".into(), n(info.created_at))]);
        if let Some(until) = info.until {
            item.insert("until".into(), n(until));
        }
        self.put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<SecretInfo>, StoreError> {
        let mut out =
            self.secret_items(tenant).await?.iter().map(|i| info_of(tenant, i)).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|i| (i.created_at, i.id.clone()));
        Ok(out)
    }

    async fn expire_secret(&self, tenant: &TenantId, id: &SecretId, until: EpochMillis) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant.as_str()), secret_sk(id))))
            .update_expression("SET #until = :u, #ttl = :ttl")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#until", "until")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":u", n(until))
            .expression_attribute_values(":ttl", ttl_secs(until + 7 * DAY_MS))
            .send()
            .await;
        applied(res)
    }

    async fn delete_secret(&self, tenant: &TenantId, id: &SecretId) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant.as_str()), secret_sk(id))))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        applied(res)
    }

    async fn signing_secrets(&self, tenant: &TenantId, now: EpochMillis) -> Result<Vec<SigningSecret>, StoreError> {
        let mut live = Vec::new();
        for item in self.secret_items(tenant).await? {
            let info = info_of(tenant, &item)?;
            if !info.signs_at(now) {
                continue;
            }
            let Some(AttributeValue::B(sealed)) = item.get("sealed") else {
                return Err(StoreError::Corrupt { id: info.id.to_string(), what: "no sealed secret".into() });
            };
            let plain = self.sealer()?.open(sealed.as_ref(), tenant.as_str(), info.id.as_str()).await?;
            let secret = SigningSecret::from_bytes(plain)
                .map_err(|e| StoreError::Corrupt { id: info.id.to_string(), what: e.into() })?;
            live.push((info, secret));
        }
        live.sort_by_key(|(i, _)| (i.created_at, i.id.clone()));
        Ok(live.into_iter().map(|(_, s)| s).collect())
    }
}
