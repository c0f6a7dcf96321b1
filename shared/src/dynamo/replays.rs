//! [`ReplayStore`] on DynamoDB: one item per replay, saved under a version check.

use super::DynamoStore;
use super::codec::{json, n, s, to_json, ttl_secs};
use super::errors::{applied, store_error};
use super::keys::key;
use crate::domain::{Replay, ReplayId};
use crate::ports::{ReplayStore, StoreError};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_TTL_ATTRIBUTE as TTL};

impl ReplayStore for DynamoStore {
    async fn put_replay(&self, r: &Replay) -> Result<(), StoreError> {
        let mut item = key(format!("REPLAY#{}", r.id), "REPLAY");
        item.insert("doc".into(), s(to_json(r)));
        item.insert("version".into(), n(r.version));
        item.insert(TTL.into(), ttl_secs(r.created_at + self.retention_ms));
        self.put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_replay(&self, id: &ReplayId) -> Result<Option<Replay>, StoreError> {
        let out = self.get_item(key(format!("REPLAY#{id}"), "REPLAY")).await?;
        out.map(|i| json(id.as_str(), &i, "doc")).transpose()
    }

    async fn save_replay(&self, r: &Replay) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("REPLAY#{}", r.id), "REPLAY")))
            .update_expression("SET doc = :doc, version = :v")
            .condition_expression("version = :prev")
            .expression_attribute_values(":doc", s(to_json(r)))
            .expression_attribute_values(":v", n(r.version))
            .expression_attribute_values(":prev", n(r.version.saturating_sub(1)))
            .send()
            .await;
        applied(res)
    }
}
