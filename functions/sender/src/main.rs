//! The sender Lambda: SQS batches in, HTTP requests out, partial batch
//! failures reported for redelivery.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    courier::sender::run(config, &sdk).await
}
