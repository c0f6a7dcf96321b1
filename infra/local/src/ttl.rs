//! DynamoDB's TTL, locally: the emulator never expires items, so this sweeper
//! deletes those whose `ttl` has passed, as DynamoDB does (within a while,
//! not to the second). Each deletion's key is remembered so the stream bridge
//! marks its `REMOVE` record as DynamoDB marks a TTL deletion
//! (`userIdentity`: the service `dynamodb.amazonaws.com`), which is what the
//! archive recognises.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use courier::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL};

/// Keys (`pk`, `sk`) the sweeper deleted whose stream records are not seen yet.
pub type Swept = Arc<Mutex<HashSet<(String, String)>>>;

/// Sweeps `table` every `every` until aborted.
pub async fn run(ddb: aws_sdk_dynamodb::Client, table: String, every: Duration, swept: Swept) {
    loop {
        tokio::time::sleep(every).await;
        match sweep(&ddb, &table, &swept).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "TTL sweep"),
            Err(e) => tracing::warn!(error = %e, "TTL sweep failed"),
        }
    }
}

/// Deletes every item whose TTL has passed; returns how many.
pub async fn sweep(ddb: &aws_sdk_dynamodb::Client, table: &str, swept: &Swept) -> anyhow::Result<usize> {
    let now = AttributeValue::N(time::OffsetDateTime::now_utc().unix_timestamp().to_string());
    let mut start = None;
    let mut deleted = 0;
    loop {
        let page = ddb
            .scan()
            .table_name(table)
            .filter_expression("#ttl < :now")
            .projection_expression("#pk, #sk")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":now", now.clone())
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in page.items() {
            let (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) = (item.get(PK), item.get(SK)) else {
                continue;
            };
            swept.lock().unwrap_or_else(|p| p.into_inner()).insert((pk.clone(), sk.clone()));
            // Only if still expired (a write may have moved its TTL meanwhile).
            let res = ddb
                .delete_item()
                .table_name(table)
                .set_key(Some(item.clone()))
                .condition_expression("#ttl < :now")
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":now", now.clone())
                .send()
                .await;
            match res {
                Ok(_) => deleted += 1,
                Err(_) => {
                    swept.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pk.clone(), sk.clone()));
                }
            }
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(deleted);
        }
    }
}
