//! The stream-consumer Lambda: DynamoDB Streams batches of task and run state
//! changes in; per-tenant status counts and per-minute activity, lifecycle
//! events to EventBridge (for the tenants that opted in) and callback tasks
//! out. The store, bus and queue are built here, once per cold start; an
//! error makes Lambda retry the batch.

use courier::counter::{Consumer, OptIns};
use courier::dynamo::DynamoStore;
use courier::events::EventBridgeBus;
use courier::sqs::SqsQueue;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let consumer = Consumer {
        store: DynamoStore::from_config(&config, &sdk),
        bus: EventBridgeBus::from_config(&config, &sdk),
        queue: SqsQueue::from_config(&config, &sdk),
        opt_ins: OptIns::default(),
        host_breaker_events: config.host_breaker_events,
        archive: courier::archive::S3Archive::from_config(&config, &sdk),
    };
    let consumer = &consumer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| async move {
        consumer.handle(&event.payload).await.map_err(Error::from)
    }))
    .await
}
