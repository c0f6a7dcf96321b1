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
    let store = DynamoStore::from_config(&config, &sdk);
    let queue = SqsQueue::from_config(&config, &sdk);
    let scheduler = EventBridgeScheduler::from_config(&config, &sdk);
    let settings = ApiSettings::from_config(&config);
    let state = Arc::new(AppState { store, queue, scheduler, settings, limits: Default::default() });
    let app = courier::api::router(state).layer(axum::middleware::map_request(source_ip));
    lambda_http::run(app).await
}

/// Hands API Gateway's `requestContext.http.sourceIp` to the router (the
/// audit log records it).
async fn source_ip(mut req: axum::extract::Request) -> axum::extract::Request {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref()
        && let Some(ip) = ctx.http.source_ip.clone()
    {
        req.extensions_mut().insert(courier::api::SourceIp(ip));
    }
    req
}
