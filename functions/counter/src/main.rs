//! The status-counter Lambda: DynamoDB Streams batches of task state changes
//! in, per-tenant status counts out. The store is built here, once per cold
//! start; an error makes Lambda retry the batch.

use courier::dynamo::DynamoStore;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let store = DynamoStore::from_config(&config, &sdk);
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| async move {
        courier::counter::handle(store, &event.payload).await.map_err(Error::from)
    }))
    .await
}
