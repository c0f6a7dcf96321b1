//! The EventBridge adapter of [`EventBus`]: `PutEvents` to Courier's bus, at
//! most ten entries per call, `source` = `courier`, `detail-type` = the event
//! type. Entries EventBridge reports as failed are sent again (three tries);
//! what still fails is an error, so the stream batch is retried and nothing
//! is lost (a receiver may see an event twice: dedupe by `detail.id`).

use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::domain::BusEvent;
use crate::ports::{EventBus, EventError};

/// Every event's `source`.
pub const SOURCE: &str = "courier";
/// The most entries one `PutEvents` takes.
pub const MAX_ENTRIES: usize = 10;

#[derive(Clone, Debug)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self { client, bus: bus.into() }
    }

    /// The configured bus (`COURIER_EVENT_BUS`), if any.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Option<Self> {
        config.event_bus.as_ref().map(|bus| Self::new(Client::new(sdk), bus))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> EventError {
    EventError(Box::new(e))
}

impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), EventError> {
        for chunk in events.chunks(MAX_ENTRIES) {
            let mut entries: Vec<PutEventsRequestEntry> = chunk
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(SOURCE)
                        .detail_type(e.kind.as_str())
                        .detail(e.detail.to_string())
                        .time(DateTime::from_millis(e.at))
                        .build()
                })
                .collect();
            for attempt in 1..=3 {
                let out = self.client.put_events().set_entries(Some(entries.clone())).send().await.map_err(err)?;
                if out.failed_entry_count == 0 {
                    break;
                }
                // Results line up with the entries: keep the failed ones.
                let results = out.entries.unwrap_or_default();
                let why: Vec<String> = results.iter().filter_map(|r| r.error_message.clone()).collect();
                entries = entries
                    .into_iter()
                    .zip(results.iter().map(|r| r.error_code.is_some()).chain(std::iter::repeat(true)))
                    .filter_map(|(e, failed)| failed.then_some(e))
                    .collect();
                if attempt == 3 {
                    return Err(err(Failed(format!("{} entries failed: {}", entries.len(), why.join("; ")))));
                }
                tracing::warn!(failed = entries.len(), "PutEvents: some entries failed; sending them again");
            }
        }
        Ok(())
    }
}
