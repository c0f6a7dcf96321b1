//! The status-counter Lambda: DynamoDB Streams batches of task state changes
//! in, per-tenant status counts out.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    courier::counter::run(config, &sdk).await
}
