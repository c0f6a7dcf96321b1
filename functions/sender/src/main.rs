//! The sender Lambda: SQS batches in, HTTP requests out, partial batch
//! failures reported for redelivery. The clients are built here, once per
//! cold start; every invocation borrows the one [`Sender`].

#![recursion_limit = "256"]

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use courier::clock::SystemClock;
use courier::domain::EpochMillis;
use courier::dynamo::DynamoStore;
use courier::schedules::EventBridgeScheduler;
use courier::sender::{HttpClients, Sender, SenderSettings};
use courier::sqs::SqsQueue;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let store = DynamoStore::from_config(&config, &sdk);
    let queue = SqsQueue::from_config(&config, &sdk);
    let scheduler = EventBridgeScheduler::from_config(&config, &sdk);
    let http = HttpClients::new(config.target_guard.clone())?;
    let sender = Sender::new(store, queue, scheduler, http, SenderSettings::from_config(&config))
        .with_clock(Arc::new(SystemClock));
    let sender = &sender;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = Some(event.context.deadline as EpochMillis).filter(|d| *d > 0);
        Ok::<_, Error>(sender.handle(event.payload, deadline).await)
    }))
    .await
}
