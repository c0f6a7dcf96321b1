//! History kept past its retention: when DynamoDB's TTL deletes a task's
//! items (its state, request, attempts, cron runs), the stream consumer
//! writes them to S3 as gzip-compressed JSON lines, one object per tenant and
//! day per stream batch: `archive/<tenant>/<yyyy-mm-dd>/<batch>.jsonl.gz`.
//! A TTL deletion is recognisable in the stream: its record names the
//! DynamoDB service as the user (`userIdentity.principalId`
//! `dynamodb.amazonaws.com`). A retried batch writes the same objects again
//! (the same keys), so nothing is archived twice.

use std::collections::BTreeMap;
use std::io::Write;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};

use crate::domain::{EpochMillis, TaskId, TenantId, format_millis};
use crate::ports::StoreError;

/// An item TTL deleted, as the stream saw it last.
#[derive(Clone, Debug, PartialEq)]
pub struct Expired {
    pub task_id: TaskId,
    /// The item's sort key (`STATE`, `SPEC`, `ATTEMPT#…`, `RUN#…`).
    pub sk: String,
    /// The tenant, when the item names it (state and run items do).
    pub tenant: Option<TenantId>,
    /// When TTL deleted it (the record's time).
    pub at: EpochMillis,
    /// The item as it was (DynamoDB JSON).
    pub item: Value,
}

/// Whether a stream record is a TTL deletion.
pub fn is_ttl_removal(r: &Value) -> bool {
    r["eventName"] == "REMOVE"
        && r["userIdentity"]["type"] == "Service"
        && r["userIdentity"]["principalId"] == "dynamodb.amazonaws.com"
}

/// The task items TTL deleted in a batch.
pub fn expired(records: &[Value]) -> Vec<Expired> {
    records
        .iter()
        .filter(|r| is_ttl_removal(r))
        .filter_map(|r| {
            let d = &r["dynamodb"];
            let task_id = TaskId::parse(d["Keys"]["pk"]["S"].as_str()?.strip_prefix("TASK#")?).ok()?;
            let item = d["OldImage"].clone();
            let tenant = item["tenant"]["S"].as_str().and_then(|t| TenantId::parse(t).ok());
            let at = d["ApproximateCreationDateTime"].as_f64().map_or(0, |s| (s * 1000.0) as EpochMillis);
            Some(Expired { task_id, sk: d["Keys"]["sk"]["S"].as_str()?.to_owned(), tenant, at, item })
        })
        .collect()
}

/// The listing groups TTL deleted in a batch (their members that still
/// exist are listed on their own from then on).
pub fn expired_groups(records: &[Value]) -> Vec<crate::ports::ExpiredGroup> {
    use base64::Engine;
    records
        .iter()
        .filter(|r| is_ttl_removal(r))
        .filter_map(|r| {
            let d = &r["dynamodb"];
            let group = d["Keys"]["pk"]["S"].as_str()?.strip_prefix(crate::resources::LIST_GROUP_PREFIX)?;
            let old = &d["OldImage"];
            let tenant = TenantId::parse(old["tenant"]["S"].as_str()?).ok()?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(old["ids"]["B"].as_str()?).ok()?;
            let ids = crate::dynamo::decode_group_ids(&bytes);
            Some(crate::ports::ExpiredGroup { tenant, group: group.to_owned(), ids })
        })
        .collect()
}

/// The objects a batch's expired items make: key and gzip bytes, grouped by
/// tenant and day (an item whose tenant could not be found goes under
/// `_unknown`). `batch` names the objects (the same batch, the same keys).
pub fn objects(items: &[Expired], batch: &str) -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut groups: BTreeMap<(String, String), Vec<&Expired>> = BTreeMap::new();
    for e in items {
        let tenant = e.tenant.as_ref().map_or_else(|| "_unknown".to_owned(), |t| t.as_str().to_owned());
        let day = format_millis(e.at).get(..10).unwrap_or("1970-01-01").to_owned();
        groups.entry((tenant, day)).or_default().push(e);
    }
    let name: String = {
        use sha2::Digest;
        sha2::Sha256::digest(batch.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
    };
    groups
        .into_iter()
        .map(|((tenant, day), items)| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            for e in items {
                let line = json!({"task_id": e.task_id.as_str(), "sk": e.sk, "tenant": e.tenant.as_ref().map(TenantId::as_str),
                                  "expired_at": format_millis(e.at), "item": e.item});
                gz.write_all(line.to_string().as_bytes())?;
                gz.write_all(b"\n")?;
            }
            Ok((format!("{PREFIX}{tenant}/{day}/{name}.jsonl.gz"), gz.finish()?))
        })
        .collect()
}

/// Where archive objects start.
pub const PREFIX: &str = "archive/";

/// The archive bucket.
#[derive(Clone, Debug)]
pub struct S3Archive {
    client: Client,
    bucket: String,
}

fn s3_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

impl S3Archive {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    /// An S3 client for `sdk`; path-style addressing when the endpoint is
    /// overridden (a local emulator serves no per-bucket host names).
    pub fn client(sdk: &aws_config::SdkConfig) -> Client {
        let mut conf = aws_sdk_s3::config::Builder::from(sdk);
        if sdk.endpoint_url().is_some() || std::env::var("AWS_ENDPOINT_URL_S3").is_ok() {
            conf = conf.force_path_style(true);
        }
        Client::from_conf(conf.build())
    }

    /// The configured bucket (`COURIER_ARCHIVE_BUCKET`), if any.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Option<Self> {
        config.archive_bucket.as_ref().map(|b| Self::new(Self::client(sdk), b))
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .content_encoding("gzip")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    /// The objects under `archive/<tenant>/<day>` (either may be left out), with their sizes.
    pub async fn list(&self, tenant: Option<&str>, day: Option<&str>) -> Result<Vec<(String, i64)>, StoreError> {
        let prefix = match (tenant, day) {
            (Some(t), Some(d)) => format!("{PREFIX}{t}/{d}/"),
            (Some(t), None) => format!("{PREFIX}{t}/"),
            _ => PREFIX.to_owned(),
        };
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(s3_error)?;
            for o in page.contents() {
                let key = o.key().unwrap_or_default();
                if day.is_none_or(|d| key.contains(&format!("/{d}/"))) {
                    out.push((key.to_owned(), o.size().unwrap_or(0)));
                }
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// An object's lines, uncompressed.
    pub async fn get(&self, key: &str) -> Result<Vec<Value>, StoreError> {
        let out = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(s3_error)?;
        let bytes = out.body.collect().await.map_err(s3_error)?.into_bytes();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .map_err(|e| StoreError::Permanent(Box::new(e)))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_group_ttl_deleted_names_its_tenant_and_members_in_order() {
        use base64::Engine;
        let t = TenantId::generate();
        let ids = [TaskId::generate(), TaskId::generate()];
        let bytes = crate::dynamo::encode_group_ids(&ids).expect("generated ids");
        let keys = json!({"pk": {"S": "LIST#tsk_019000000000800000000000000000a5"}, "sk": {"S": "LIST"}});
        let old = json!({"tenant": {"S": t.as_str()}, "ids": {"B": base64::engine::general_purpose::STANDARD.encode(&bytes)}});
        let removal =
            |by: Value| json!({"eventName": "REMOVE", "userIdentity": by, "dynamodb": {"Keys": keys, "OldImage": old}});
        let ttl = json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
        let groups = expired_groups(&[removal(ttl), removal(json!(null))]);
        assert_eq!(
            groups,
            vec![crate::ports::ExpiredGroup {
                tenant: t,
                group: "tsk_019000000000800000000000000000a5".into(),
                ids: ids.to_vec()
            }],
            "a delete by anyone but TTL is not an expiry"
        );
        assert!(expired(&[removal(json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"}))]).is_empty());
    }

    #[test]
    fn ttl_removals_become_one_gzip_object_per_tenant_and_day() {
        let t = TenantId::generate();
        let (a, b) = (TaskId::generate(), TaskId::generate());
        let ttl = json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
        let rec = |id: &TaskId, sk: &str, tenant: Option<&TenantId>, by: Value| {
            let mut old = json!({"pk": {"S": format!("TASK#{id}")}, "sk": {"S": sk}});
            if let Some(t) = tenant {
                old["tenant"] = json!({"S": t.as_str()});
            }
            json!({"eventName": "REMOVE", "userIdentity": by, "dynamodb": {
                "ApproximateCreationDateTime": 1_796_495_000.0,
                "Keys": {"pk": {"S": format!("TASK#{id}")}, "sk": {"S": sk}}, "OldImage": old}})
        };
        let records = [
            rec(&a, "STATE", Some(&t), ttl.clone()),
            rec(&a, "ATTEMPT#0000000001", None, ttl.clone()),
            rec(&b, "STATE", Some(&t), Value::Null), // deleted by a caller, not TTL
        ];
        let mut items = expired(&records);
        assert_eq!(items.len(), 2, "only TTL deletions");
        items[1].tenant = items[0].tenant.clone();
        let objs = objects(&items, "1..9").expect("gzip");
        assert_eq!(objs.len(), 1);
        let (key, bytes) = &objs[0];
        assert!(key.starts_with(&format!("archive/{t}/2026-12-05/")) && key.ends_with(".jsonl.gz"), "{key}");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).expect("gunzip");
        assert_eq!(text.lines().count(), 2);
        assert_eq!(objects(&items, "1..9").expect("again")[0].0, *key, "a retried batch writes the same key");
    }
}
