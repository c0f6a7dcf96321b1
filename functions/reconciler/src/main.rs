//! The reconciler Lambda: run every minute by EventBridge, re-enqueues tasks
//! that are due but in no queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    courier::reconciler::run(config, &sdk).await
}
