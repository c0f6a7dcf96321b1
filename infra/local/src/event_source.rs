//! The SQS event-source mapping, locally: long-poll the delivery queue, hand
//! each batch to the sender as a real `SqsEvent`, delete the messages it did
//! not report in `batchItemFailures`. A function error leaves the whole batch
//! for redelivery, as Lambda does.

use std::collections::HashSet;
use std::sync::Arc;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde_json::{Map, Value, json};

use crate::runtime::FunctionHost;

/// Settings of one mapping (the template's `BatchSize`).
#[derive(Clone, Debug)]
pub struct Mapping {
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: i32,
    /// Long-poll wait per receive, seconds.
    pub wait_seconds: i32,
}

/// Polls forever (until the task is aborted).
pub async fn run(sqs: aws_sdk_sqs::Client, mapping: Mapping, sender: Arc<FunctionHost>) {
    loop {
        if let Err(e) = poll_once(&sqs, &mapping, &sender).await {
            tracing::warn!(error = %e, "event source poll failed");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// One receive → invoke → delete cycle; returns how many messages it handled.
pub async fn poll_once(sqs: &aws_sdk_sqs::Client, m: &Mapping, sender: &FunctionHost) -> anyhow::Result<usize> {
    let out = sqs
        .receive_message()
        .queue_url(&m.queue_url)
        .max_number_of_messages(m.batch_size.clamp(1, 10))
        .wait_time_seconds(m.wait_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await?;
    let messages = out.messages.unwrap_or_default();
    if messages.is_empty() {
        return Ok(0);
    }
    let event = sqs_event(&messages, &m.queue_arn);
    let failed: HashSet<String> = match sender.invoke(&event).await {
        Ok(resp) => resp
            .get("batchItemFailures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|f| f.get("itemIdentifier")?.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "sender invocation failed; the batch will be redelivered");
            return Ok(messages.len());
        }
    };
    let entries: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .enumerate()
        .filter(|(_, msg)| !failed.contains(msg.message_id().unwrap_or_default()))
        .filter_map(|(i, msg)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(msg.receipt_handle()?)
                .build()
                .ok()
        })
        .collect();
    if !entries.is_empty() {
        sqs.delete_message_batch().queue_url(&m.queue_url).set_entries(Some(entries)).send().await?;
    }
    Ok(messages.len())
}

/// The `SqsEvent` Lambda builds from received messages.
pub fn sqs_event(messages: &[Message], queue_arn: &str) -> Value {
    let region = queue_arn.split(':').nth(3).unwrap_or("us-east-1");
    let records: Vec<Value> = messages
        .iter()
        .map(|msg| {
            let attributes: Map<String, Value> = msg
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone()))).collect())
                .unwrap_or_default();
            let message_attributes: Map<String, Value> = msg
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                json!({
                                    "stringValue": v.string_value(),
                                    "stringListValues": [],
                                    "binaryListValues": [],
                                    "dataType": v.data_type(),
                                }),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": msg.message_id(),
                "receiptHandle": msg.receipt_handle(),
                "body": msg.body(),
                "attributes": attributes,
                "messageAttributes": message_attributes,
                "md5OfBody": msg.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    json!({ "Records": records })
}
