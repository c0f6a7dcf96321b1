//! The DynamoDB Streams event-source mapping, locally: reads every shard of
//! the table's stream from its start, keeps the records the deployed mapping's
//! filter keeps (task `STATE` items and cron runs' `RUN#` items), invokes the counter function with the
//! real DynamoDB event shape, and moves on only when it succeeds: a failure
//! retries the very same records, as Lambda does (not a fresh read, which
//! could bring more records and so a batch of another identity). Like the
//! deployed mapping (`BatchSize: 500`, `MaximumBatchingWindowInSeconds: 1`), it
//! gathers records for up to the batching window before it invokes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use serde_json::{Map, Value, json};

use crate::runtime::FunctionHost;

/// How often the stream's shards are listed again.
const DESCRIBE_EVERY: Duration = Duration::from_secs(5);

/// The deployed mapping's `BatchSize`.
pub const BATCH_SIZE: usize = 500;
/// The deployed mapping's `MaximumBatchingWindowInSeconds`.
pub const BATCHING_WINDOW: Duration = Duration::from_secs(1);

/// Polls the stream of `table` until aborted, gathering records for up to
/// `window` (or [`BATCH_SIZE`] records) per invocation.
pub async fn run(
    streams: aws_sdk_dynamodbstreams::Client,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    counter: Arc<FunctionHost>,
    window: Duration,
    swept: crate::ttl::Swept,
) {
    let mut bridge = Bridge {
        swept,
        streams,
        ddb,
        table,
        counter,
        window,
        iterators: HashMap::new(),
        failed: HashMap::new(),
        gathering: HashMap::new(),
        described: None,
    };
    loop {
        match bridge.poll().await {
            Ok(0) => {
                tokio::time::sleep(Duration::from_millis(if bridge.gathering.is_empty() { 250 } else { 100 })).await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "stream poll failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

struct Bridge {
    /// Keys the local TTL sweeper deleted: their `REMOVE` records are TTL deletions.
    swept: crate::ttl::Swept,
    streams: aws_sdk_dynamodbstreams::Client,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    counter: Arc<FunctionHost>,
    /// Next iterator per shard (`None`: the shard is finished).
    iterators: HashMap<String, Option<String>>,
    /// A shard's batch whose invocation failed, with the iterator after it.
    failed: HashMap<String, (Vec<Value>, Option<String>)>,
    /// How long records are gathered before an invocation.
    window: Duration,
    /// The stream's ARN and when it and its shards were last described.
    described: Option<(String, std::time::Instant)>,
    /// Records read from a shard and not yet delivered, with when the first came.
    gathering: HashMap<String, (Vec<Value>, std::time::Instant)>,
}

impl Bridge {
    /// One pass over every shard; returns how many records it delivered.
    async fn poll(&mut self) -> anyhow::Result<usize> {
        // The stream and its shards are looked up again every few seconds, not per poll.
        let stale = self.described.as_ref().is_none_or(|(_, at)| at.elapsed() >= DESCRIBE_EVERY);
        if stale {
            let desc = self.ddb.describe_table().table_name(&self.table).send().await?;
            let arn = desc.table.and_then(|t| t.latest_stream_arn).ok_or_else(|| anyhow::anyhow!("no stream"))?;
            self.described = Some((arn, std::time::Instant::now()));
        }
        let Some((arn, _)) = self.described.clone() else { return Ok(0) };
        let shards = if stale {
            let out = self.streams.describe_stream().stream_arn(&arn).send().await?;
            out.stream_description.map(|d| d.shards.unwrap_or_default()).unwrap_or_default()
        } else {
            Vec::new()
        };
        for shard in shards {
            let Some(id) = shard.shard_id else { continue };
            if !self.iterators.contains_key(&id) {
                let it = self
                    .streams
                    .get_shard_iterator()
                    .stream_arn(&arn)
                    .shard_id(&id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await?;
                self.iterators.insert(id, it.shard_iterator);
            }
        }
        let mut delivered = 0;
        let ids: Vec<String> = self.iterators.keys().cloned().collect();
        for id in ids {
            if let Some((kept, next)) = self.failed.remove(&id) {
                if let Err(e) = self.counter.invoke(&json!({"Records": kept})).await {
                    self.failed.insert(id, (kept, next));
                    return Err(e.into());
                }
                delivered += kept.len();
                self.iterators.insert(id, next);
                continue;
            }
            let mut next = self.iterators.get(&id).cloned().flatten();
            if let Some(iterator) = next.clone() {
                let room = BATCH_SIZE - self.gathering.get(&id).map_or(0, |(g, _)| g.len());
                let out = self.streams.get_records().shard_iterator(iterator).limit(room as i32).send().await?;
                let mut records: Vec<Value> =
                    out.records.unwrap_or_default().iter().map(|r| record_json(r, &arn)).collect();
                for r in &mut records {
                    let keys = &r["dynamodb"]["Keys"];
                    let key = (
                        keys["pk"]["S"].as_str().unwrap_or_default().to_owned(),
                        keys["sk"]["S"].as_str().unwrap_or_default().to_owned(),
                    );
                    if r["eventName"] == "REMOVE" && self.swept.lock().unwrap_or_else(|p| p.into_inner()).remove(&key) {
                        r["userIdentity"] = json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
                    }
                }
                let kept: Vec<Value> = records.into_iter().filter(kept_by_filters).collect();
                if !kept.is_empty() {
                    let (g, _) =
                        self.gathering.entry(id.clone()).or_insert_with(|| (Vec::new(), std::time::Instant::now()));
                    g.extend(kept);
                }
                next = out.next_shard_iterator;
                self.iterators.insert(id.clone(), next.clone());
            }
            // The batch goes when it is full, its window has passed, or its shard has ended.
            let ready = self
                .gathering
                .get(&id)
                .is_some_and(|(g, since)| g.len() >= BATCH_SIZE || since.elapsed() >= self.window || next.is_none());
            if !ready {
                continue;
            }
            let Some((kept, _)) = self.gathering.remove(&id) else { continue };
            if let Err(e) = self.counter.invoke(&json!({"Records": kept})).await {
                // Lambda retries the same batch: keep it, and the iterator after it.
                self.failed.insert(id, (kept, next));
                return Err(e.into());
            }
            delivered += kept.len();
        }
        Ok(delivered)
    }
}

/// The deployed mapping's filters: task state items and cron runs' items, new
/// flow history entries (breaker events), and task items and listing groups
/// TTL deleted (the archive, relisting).
fn kept_by_filters(r: &Value) -> bool {
    let keys = &r["dynamodb"]["Keys"];
    let (pk, sk) = (keys["pk"]["S"].as_str().unwrap_or_default(), keys["sk"]["S"].as_str().unwrap_or_default());
    let task = pk.starts_with("TASK#") && (sk == "STATE" || sk.starts_with("RUN#"));
    let breaker = r["eventName"] == "INSERT" && pk.starts_with("FLOW#") && sk.starts_with("HIST#");
    let expired = courier::archive::is_ttl_removal(r) && (pk.starts_with("TASK#") || pk.starts_with("LIST#"));
    task || breaker || expired
}

/// A stream record in Lambda's DynamoDB event format.
fn record_json(r: &Record, arn: &str) -> Value {
    let image = |m: Option<&HashMap<String, AttributeValue>>| -> Value {
        m.map_or(Value::Null, |m| Value::Object(m.iter().map(|(k, v)| (k.clone(), attr(v))).collect()))
    };
    let d = r.dynamodb();
    json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|e| e.as_str()),
        "eventVersion": r.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region(),
        "eventSourceARN": arn,
        "dynamodb": {
            "ApproximateCreationDateTime": d
                .and_then(|d| d.approximate_creation_date_time())
                .map_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp() as f64, |t| t.as_secs_f64()),
            "Keys": image(d.and_then(|d| d.keys())),
            "NewImage": image(d.and_then(|d| d.new_image())),
            "OldImage": image(d.and_then(|d| d.old_image())),
            "SequenceNumber": d.and_then(|d| d.sequence_number()),
            "SizeBytes": d.and_then(|d| d.size_bytes()),
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    })
}

/// An attribute value in DynamoDB JSON.
fn attr(v: &AttributeValue) -> Value {
    use base64::Engine;
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    match v {
        AttributeValue::S(s) => json!({"S": s}),
        AttributeValue::N(n) => json!({"N": n}),
        AttributeValue::Bool(b) => json!({"BOOL": b}),
        AttributeValue::Null(n) => json!({"NULL": n}),
        AttributeValue::B(b) => json!({"B": b64(b.as_ref())}),
        AttributeValue::Ss(s) => json!({"SS": s}),
        AttributeValue::Ns(n) => json!({"NS": n}),
        AttributeValue::Bs(bs) => json!({"BS": bs.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>()}),
        AttributeValue::L(l) => json!({"L": l.iter().map(attr).collect::<Vec<_>>()}),
        AttributeValue::M(m) => {
            json!({"M": Value::Object(m.iter().map(|(k, v)| (k.clone(), attr(v))).collect::<Map<String, Value>>())})
        }
        _ => Value::Null,
    }
}
