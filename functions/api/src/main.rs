//! The API Lambda: HTTP API (API Gateway) events in, task operations out.
//! The clients are built here, once per cold start, into the router's state.

use std::sync::Arc;

use courier::api::{ApiSettings, AppState};
use courier::dynamo::DynamoStore;
use courier::schedules::EventBridgeScheduler;
use courier::sqs::SqsQueue;
use lambda_http::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    courier::telemetry::init();
    let config = courier::Config::from_env()?;
    let sdk = courier::aws::load().await;
    let store = DynamoStore::from_config(&config, &sdk);
    let queue = SqsQueue::from_config(&config, &sdk);
    let scheduler = EventBridgeScheduler::from_config(&config, &sdk);
    let settings = ApiSettings::from_config(&config);
    let auth_cache = courier::api::AuthCache::new(std::time::Duration::from_millis(config.auth_cache_ms));
    let state = Arc::new(AppState { store, queue, scheduler, settings, limits: Default::default(), auth_cache });
    let claim = config.jwt_tenant_claim.clone();
    let router = courier::api::router(state).layer(axum::middleware::map_request(source_ip));
    // Before routing (a router's own layers run after it): the `/jwt` prefix goes.
    let app = tower::Layer::layer(&tower::util::MapRequestLayer::new(move |req| jwt_caller(&claim, req)), router);
    lambda_http::run(app).await
}

/// The `/jwt/…` routes, which the HTTP API's JWT authorizer guards: the
/// tenant its claims name goes on as [`courier::api::JWT_TENANT_HEADER`] and
/// the path loses its `/jwt` prefix. That header is dropped from every
/// request first, so only the authorizer's claims can set it; the function
/// never parses a token itself.
fn jwt_caller<B>(claim: &str, mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    req.headers_mut().remove(courier::api::JWT_TENANT_HEADER);
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/jwt") else { return req };
    if !rest.starts_with('/') {
        return req;
    }
    let claims = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => {
            ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).map(|j| j.claims.clone())
        }
        _ => None,
    };
    // No claims: the authorizer did not run (no such deployment), so the
    // path stays as it is and matches no route.
    let Some(claims) = claims else { return req };
    let tenant = claims.get(claim).cloned().unwrap_or_default();
    if let Ok(v) = axum::http::HeaderValue::from_str(&tenant) {
        req.headers_mut().insert(courier::api::JWT_TENANT_HEADER, v);
    }
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Ok(uri) = format!("{rest}{query}").parse() {
        *req.uri_mut() = uri;
    }
    req
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
