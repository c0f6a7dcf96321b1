//! The reconciler Lambda: run every minute by EventBridge, re-enqueues tasks
//! that are due but in no queue. The clients are built here, once per cold
//! start; each invocation (its event's content is not used) is one pass.

use std::time::Duration;

use courier::clock::{Clock, SystemClock};
use courier::dynamo::DynamoStore;
use courier::reconciler::Reconciler;
use courier::sqs::SqsQueue;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let store = DynamoStore::from_config(&config, &sdk);
    let queue = SqsQueue::from_config(&config, &sdk);
    let reconciler = Reconciler::new(store, queue, Duration::from_secs(config.reconcile_grace_s));
    let reconciler = &reconciler;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| async move {
        reconciler.run_once(SystemClock.now()).await.map_err(Error::from)
    }))
    .await
}
