//! The SQS adapter of [`DeliveryQueue`].

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::domain::{DeadLetter, QueueMessage};
use crate::ports::{DeliveryQueue, QueueError};

/// The longest `DelaySeconds` SQS accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// Whole seconds, rounded up: a delay never ends early.
fn secs_up(d: Duration) -> i32 {
    d.as_millis().div_ceil(1000) as i32
}

/// The longest visibility timeout SQS accepts.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// The delivery queue and its DLQ.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
}

impl SqsQueue {
    /// The deployed delivery queue and its dead-letter queue, from `config`.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Self {
        Self::new(Client::new(sdk), &config.queue_url, &config.dlq_url)
    }

    pub fn new(client: Client, queue_url: impl Into<String>, dlq_url: impl Into<String>) -> Self {
        Self { client, queue_url: queue_url.into(), dlq_url: dlq_url.into() }
    }
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> QueueError {
    QueueError(Box::new(e))
}

impl DeliveryQueue for SqsQueue {
    async fn enqueue(&self, msg: &QueueMessage, delay: Duration) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(msg.to_body())
            .delay_seconds(secs_up(delay.min(MAX_DELAY)))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn enqueue_many(&self, msgs: &[(QueueMessage, Duration)]) -> Result<Vec<usize>, QueueError> {
        let mut failed = Vec::new();
        for (chunk_no, chunk) in msgs.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (msg, delay))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(msg.to_body())
                        .delay_seconds(secs_up(*delay.min(&MAX_DELAY)))
                        .build()
                        .map_err(err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(err)?;
            failed.extend(out.failed.iter().filter_map(|f| f.id.parse::<usize>().ok()).map(|i| chunk_no * 10 + i));
        }
        Ok(failed)
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs_up(delay.min(MAX_VISIBILITY)))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn dead_letter(&self, doc: &DeadLetter) -> Result<(), QueueError> {
        self.client.send_message().queue_url(&self.dlq_url).message_body(doc.to_body()).send().await.map_err(err)?;
        Ok(())
    }
}

impl SqsQueue {
    async fn depth(&self, url: &str) -> Result<crate::ports::QueueDepth, QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(err)?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |a: A| attrs.get(&a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(crate::ports::QueueDepth {
            visible: get(A::ApproximateNumberOfMessages),
            in_flight: get(A::ApproximateNumberOfMessagesNotVisible),
            delayed: get(A::ApproximateNumberOfMessagesDelayed),
        })
    }
}

impl crate::ports::QueueDepths for SqsQueue {
    async fn queue_stats(&self) -> Result<crate::ports::QueueStats, QueueError> {
        let (delivery, dlq) = tokio::try_join!(self.depth(&self.queue_url), self.depth(&self.dlq_url))?;
        Ok(crate::ports::QueueStats { delivery, dlq })
    }
}
