//! The API Lambda: HTTP API (API Gateway) events in, task operations out.
//! The clients are built here, once per cold start, into the router's state.

use std::sync::Arc;

use courier::api::{ApiSettings, AppState};
use courier::dynamo::DynamoStore;
use courier::schedules::EventBridgeScheduler;
use courier::sqs::SqsQueue;
use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config.table, config.retention_days)
        .with_reconcile_grace(config.reconcile_grace_s as i64 * 1000);
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), &config.queue_url, &config.dlq_url);
    let scheduler = EventBridgeScheduler::new(
        aws_sdk_scheduler::Client::new(&sdk),
        &config.schedule_group,
        &config.scheduler_role_arn,
        &config.queue_url,
        &config.queue_arn,
    );
    let settings = ApiSettings::from_config(&config);
    let state = Arc::new(AppState { store, queue, scheduler, settings });
    lambda_http::run(courier::api::router(state)).await
}
