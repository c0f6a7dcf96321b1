//! [`ReconcileIndex`] on DynamoDB: the sparse `by-recon` index, read shard by
//! shard in check-time order, and each shard's watermark.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::codec::{get_n, n, opt_s, req_n, s, state_from_item};
use super::errors::{Busy, applied, store_error};
use super::keys::{RUN_PREFIX, STATE, decode_cursor, encode_cursor, id_of, key, state_sk, task_pk};
use super::{DynamoStore, Item};
use crate::domain::EpochMillis;
use crate::ports::{CandidatePage, ReconcileIndex, StoreError, Unit};
use crate::resources::{
    RECONCILE_HASH_KEY as RPK, RECONCILE_INDEX, RECONCILE_RANGE_KEY as RSK, TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK,
};

impl DynamoStore {
    /// Every item of one partition, all pages (small partitions: the flow
    /// policies and holds, the tenant registry).
    pub(super) async fn partition_items(&self, pk: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", super::PK)
                .expression_attribute_values(":pk", super::codec::s(pk))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(store_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// Reads many items by key (missing ones are left out), keyed by (pk, sk).
    pub(super) async fn batch_get_keys(&self, all: Vec<Item>) -> Result<HashMap<(String, String), Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in all.chunks(100) {
            let mut keys: Vec<Item> = chunk.to_vec();
            for attempt in 0..6 {
                if keys.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
                }
                let ka = KeysAndAttributes::builder().set_keys(Some(keys.clone())).build().map_err(store_error)?;
                let out =
                    self.client.batch_get_item().request_items(&self.table, ka).send().await.map_err(store_error)?;
                for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                    if let (Some(pk), Some(sk)) = (opt_s(&item, PK), opt_s(&item, SK)) {
                        found.insert((pk.to_owned(), sk.to_owned()), item);
                    }
                }
                keys =
                    out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|ka| ka.keys).unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Unavailable(Box::new(Busy("items left unread by a batch read".into()))));
            }
        }
        Ok(found)
    }
}

impl ReconcileIndex for DynamoStore {
    async fn reconcile_page(
        &self,
        shard: u32,
        from: EpochMillis,
        to: EpochMillis,
        limit: usize,
        start: Option<&str>,
    ) -> Result<CandidatePage, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(RECONCILE_INDEX)
            .key_condition_expression("#r = :r AND #ra BETWEEN :from AND :to")
            .expression_attribute_names("#r", RPK)
            .expression_attribute_names("#ra", RSK)
            .expression_attribute_values(":r", s(format!("RECON#{shard}")))
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":to", n(to))
            .limit(limit.clamp(1, 100) as i32);
        let start = start.and_then(decode_cursor).and_then(|c| serde_json::from_str::<Vec<String>>(&c).ok());
        if let Some([pk, sk, at]) = start.as_deref() {
            let mut esk = key(pk.as_str(), sk.as_str());
            esk.insert(RPK.into(), s(format!("RECON#{shard}")));
            esk.insert(RSK.into(), AttributeValue::N(at.clone()));
            q = q.set_exclusive_start_key(Some(esk));
        }
        let out = q.send().await.map_err(store_error)?;
        let found = out.items.unwrap_or_default();
        let units: Vec<(Unit, Item)> = found
            .iter()
            .filter_map(|i| {
                let run = match opt_s(i, SK)? {
                    STATE => None,
                    sk => Some(sk.strip_prefix(RUN_PREFIX)?.parse().ok()?),
                };
                Some((Unit { task: id_of(i)?, run }, key(opt_s(i, PK)?, opt_s(i, SK)?)))
            })
            .collect();
        let read = self.batch_get_keys(units.iter().map(|(_, k)| k.clone()).collect()).await?;
        let mut items = Vec::with_capacity(units.len());
        for (unit, k) in &units {
            let pair = (opt_s(k, PK).unwrap_or_default().to_owned(), opt_s(k, SK).unwrap_or_default().to_owned());
            if let Some(i) = read.get(&pair) {
                items.push(state_from_item(&unit.task, unit.run, i)?);
            }
        }
        let (next, checked_to) = match out.last_evaluated_key {
            None => (None, to),
            Some(last) => {
                let at: EpochMillis = get_n("RECONCILER", &last, RSK)?.unwrap_or(from);
                let parts = [opt_s(&last, PK), opt_s(&last, SK)].map(|p| p.unwrap_or_default().to_owned());
                let cursor = serde_json::json!([parts[0], parts[1], at.to_string()]).to_string();
                (Some(encode_cursor(&cursor)), at)
            }
        };
        Ok(CandidatePage { items, next, checked_to })
    }

    async fn push_reconcile(&self, unit: &Unit, at: EpochMillis) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .update_expression("SET #rsk = :at")
            .condition_expression("attribute_exists(#rpk)")
            .expression_attribute_names("#rsk", RSK)
            .expression_attribute_names("#rpk", RPK)
            .expression_attribute_values(":at", n(at))
            .send()
            .await;
        // A unit purged meanwhile has nothing left to check.
        applied(res).map(|_| ())
    }

    async fn watermark(&self, shard: u32) -> Result<Option<EpochMillis>, StoreError> {
        let out = self.get_item(key("RECONCILER", format!("WATERMARK#{shard}"))).await?;
        let out = match out {
            Some(i) => Some(i),
            // Written by a reconciler that did not page by shard yet.
            None => self.get_item(key("RECONCILER", "WATERMARK")).await?,
        };
        out.map(|i| req_n("RECONCILER", &i, "at")).transpose()
    }

    async fn set_watermark(&self, shard: u32, at: EpochMillis) -> Result<(), StoreError> {
        let mut item = key("RECONCILER", format!("WATERMARK#{shard}"));
        item.insert("at".into(), n(at));
        self.put(item).send().await.map_err(store_error)?;
        Ok(())
    }
}
