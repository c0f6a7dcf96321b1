//! The API Lambda: HTTP API (API Gateway) events in, task operations out.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    courier::api::run(config, &sdk).await
}
