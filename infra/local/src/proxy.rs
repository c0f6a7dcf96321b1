//! A forwarding HTTP proxy in front of the AWS emulator, one per caller, that
//! shows every exchange to an [`Observer`] (the IAM recorder, a meter). A
//! function pointed at it (`AWS_ENDPOINT_URL`) cannot tell the difference:
//! requests and answers pass through unchanged (the emulator ignores the
//! signature's host).
//!
//! The upstream is chosen per AWS service, as the SDKs choose endpoints
//! (`AWS_ENDPOINT_URL_<SERVICE>` over `AWS_ENDPOINT_URL`), so a proxy can sit
//! in front of another one (a fault proxy) or of one emulator per service.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

/// The services Courier's functions call, by the suffix of their endpoint
/// variable (`AWS_ENDPOINT_URL_DYNAMODB`, …).
pub const SERVICES: [&str; 4] = ["DYNAMODB", "DYNAMODB_STREAMS", "SQS", "SCHEDULER"];

/// One request and its answer, as the proxy saw them.
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub request: &'a [u8],
    /// The upstream's status; 502 when it could not be reached.
    pub status: StatusCode,
    pub response: &'a [u8],
}

/// Sees every exchange after it completed (whatever its outcome).
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, exchange: &Exchange<'_>);
}

/// Where requests go: one default endpoint and per-service overrides.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub default: String,
    pub by_service: HashMap<&'static str, String>,
}

impl Upstreams {
    /// The endpoints a process with this environment would call.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let default = non_empty("AWS_ENDPOINT_URL")?;
        let by_service =
            SERVICES.iter().filter_map(|s| non_empty(&format!("AWS_ENDPOINT_URL_{s}")).map(|url| (*s, url))).collect();
        Some(Self { default, by_service })
    }

    fn for_request(&self, headers: &HeaderMap) -> &str {
        service_of(headers).and_then(|s| self.by_service.get(s)).map_or(&self.default, String::as_str)
    }
}

/// The service a request is for, from its `X-Amz-Target` (JSON protocols) or
/// its signature's credential scope (REST and query protocols).
pub fn service_of(headers: &HeaderMap) -> Option<&'static str> {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let Some(target) = header("x-amz-target") {
        let prefix = target.split('.').next().unwrap_or_default();
        return match prefix {
            p if p.starts_with("DynamoDBStreams_") => Some("DYNAMODB_STREAMS"),
            p if p.starts_with("DynamoDB_") => Some("DYNAMODB"),
            "AmazonSQS" => Some("SQS"),
            _ => None,
        };
    }
    match signing_scope(headers)?.1 {
        "sqs" => Some("SQS"),
        "scheduler" => Some("SCHEDULER"),
        "dynamodb" => Some("DYNAMODB"),
        _ => None,
    }
}

/// `(region, service)` of a SigV4 `Authorization` header's credential scope.
pub fn signing_scope(headers: &HeaderMap) -> Option<(&str, &str)> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?.split([',', ' ']).next()?;
    let mut parts = credential.split('/').skip(2);
    Some((parts.next()?, parts.next()?))
}

struct Proxy {
    upstreams: Upstreams,
    http: reqwest::Client,
    observer: Arc<dyn Observer>,
}

/// A running proxy; dropping it stops it.
pub struct RunningProxy {
    /// `http://127.0.0.1:<port>`: what to put in the caller's `AWS_ENDPOINT_URL`.
    pub url: String,
    server: JoinHandle<()>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts a proxy on a free loopback port.
pub async fn start(upstreams: Upstreams, observer: Arc<dyn Observer>) -> std::io::Result<RunningProxy> {
    let proxy = Arc::new(Proxy { upstreams, http: reqwest::Client::new(), observer });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(forward).with_state(proxy)).await;
    });
    Ok(RunningProxy { url, server })
}

async fn forward(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let upstream = p.upstreams.for_request(&parts.headers).trim_end_matches('/');
    let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |q| q.as_str()));
    let mut fwd = p.http.request(parts.method.clone(), url).body(body.clone());
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let (status, headers, bytes) = match fwd.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            (status, headers, resp.bytes().await.unwrap_or_default())
        }
        Err(_) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new()),
    };
    p.observer.observe(&Exchange {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        request: &body,
        status,
        response: &bytes,
    });
    let mut out = Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if k != "content-length" && k != "transfer-encoding" {
            out.headers_mut().append(k, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().expect("value"))).collect()
    }

    const SIGNED_SCHEDULER: &str = "AWS4-HMAC-SHA256 Credential=test/20261123/eu-west-1/scheduler/aws4_request, \
                                    SignedHeaders=host;x-amz-date, Signature=abc";

    #[test]
    fn the_service_comes_from_the_target_or_the_signature() {
        assert_eq!(service_of(&headers(&[("x-amz-target", "DynamoDB_20120810.PutItem")])), Some("DYNAMODB"));
        assert_eq!(
            service_of(&headers(&[("x-amz-target", "DynamoDBStreams_20120810.GetRecords")])),
            Some("DYNAMODB_STREAMS")
        );
        assert_eq!(service_of(&headers(&[("x-amz-target", "AmazonSQS.SendMessage")])), Some("SQS"));
        let signed = headers(&[("authorization", SIGNED_SCHEDULER)]);
        assert_eq!(service_of(&signed), Some("SCHEDULER"));
        assert_eq!(signing_scope(&signed), Some(("eu-west-1", "scheduler")));
        assert_eq!(service_of(&headers(&[])), None);
    }

    #[test]
    fn a_service_endpoint_overrides_the_default_one() {
        let env: HashMap<&str, &str> =
            [("AWS_ENDPOINT_URL", "http://127.0.0.1:1"), ("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:2")].into();
        let up = Upstreams::from_lookup(|k| env.get(k).map(|v| (*v).to_owned())).expect("endpoint");
        assert_eq!(up.for_request(&headers(&[("x-amz-target", "AmazonSQS.SendMessage")])), "http://127.0.0.1:2");
        assert_eq!(up.for_request(&headers(&[("x-amz-target", "DynamoDB_20120810.Query")])), "http://127.0.0.1:1");
        assert!(Upstreams::from_lookup(|_| None).is_none(), "no endpoint: nothing to proxy to");
    }
}
