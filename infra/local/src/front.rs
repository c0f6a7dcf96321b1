//! The local API Gateway: plain HTTP in, an HTTP API payload v2.0 event to
//! the API function, its response back out as HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::runtime::FunctionHost;

/// The largest request the front accepts (Lambda's synchronous payload limit).
const MAX_BODY: usize = 6 * 1024 * 1024;

/// Where the front publishes the local issuer's JSON Web Key Set.
pub const JWKS_PATH: &str = "/local-issuer/.well-known/jwks.json";

/// The prefix of the routes the JWT authorizer guards (`/jwt/v1/…`).
pub const JWT_PREFIX: &str = "/jwt/";

/// What the front serves: the API function, and the JWT authorizer of the
/// `/jwt/…` routes (`None`: those routes answer 401, as with no valid issuer).
#[derive(Clone)]
pub struct Front {
    pub api: Arc<FunctionHost>,
    pub jwt: Option<Arc<crate::jwt::Issuer>>,
}

/// Serves the API function over HTTP on `listener`.
pub async fn serve(listener: tokio::net::TcpListener, api: Arc<FunctionHost>) -> std::io::Result<()> {
    serve_front(listener, Front { api, jwt: None }).await
}

/// Serves the API function, with the `/jwt/…` routes behind `front.jwt`.
pub async fn serve_front(listener: tokio::net::TcpListener, front: Front) -> std::io::Result<()> {
    let app = Router::new().fallback(forward).with_state(front);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

/// The authorizer's refusal: 401 with the reason, as `WWW-Authenticate` says it.
fn unauthorized(reason: &str) -> Response {
    let mut resp = error(StatusCode::UNAUTHORIZED, "invalid_token", &format!("JWT refused: {reason}"), None);
    let value = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", reason.replace('"', "'"));
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

async fn forward(State(front): State<Front>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let api = front.api;
    let (parts, body) = req.into_parts();
    // The local issuer's keys, where an identity provider publishes them.
    if parts.uri.path() == JWKS_PATH {
        return match &front.jwt {
            Some(issuer) => axum::Json(issuer.jwks()).into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found", "no JWT issuer is configured", None),
        };
    }
    // The JWT routes: validated here as API Gateway's JWT authorizer does,
    // and the claims handed on in the event; no token, no call.
    let claims = if parts.uri.path().starts_with(JWT_PREFIX) {
        let Some(issuer) = &front.jwt else { return unauthorized("no JWT issuer is configured") };
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let Some(token) = token else { return unauthorized("no bearer token") };
        match issuer.verify(token.trim(), time::OffsetDateTime::now_utc().unix_timestamp()) {
            Ok(claims) => Some(crate::jwt::claims_as_strings(&claims)),
            Err(why) => return unauthorized(&why),
        }
    } else {
        None
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body over the gateway's 6 MiB limit",
            Some("body"),
        );
    };
    let mut event = to_event(&parts, &body, &peer.ip().to_string());
    if let Some(claims) = claims {
        event["routeKey"] = json!("ANY /jwt/{proxy+}");
        event["requestContext"]["routeKey"] = json!("ANY /jwt/{proxy+}");
        event["requestContext"]["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
    }
    match api.invoke(&event).await {
        Ok(resp) => from_response(&resp),
        Err(e) => {
            tracing::error!(error = %e, "API function invocation failed");
            // API Gateway answers 500 when the integration fails; in the API's error shape.
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the API function failed", None)
        }
    }
}

/// The front's own errors, in the API's one error shape.
fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message, "field": field}}))).into_response()
}

/// Builds the HTTP API (payload format 2.0) event API Gateway would send;
/// `source_ip` is the connection's peer, as API Gateway reports it.
pub fn to_event(parts: &axum::http::request::Parts, body: &Bytes, source_ip: &str) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if k == "cookie" {
            cookies.extend(v.split("; ").map(|c| Value::String(c.to_owned())));
            continue;
        }
        match headers.get_mut(k.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_owned(), Value::String(v));
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let mut query = Map::new();
    for (k, v) in url_pairs(&raw_query) {
        match query.get_mut(&k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let (body, is_b64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (Value::String(text.to_owned()), false),
        Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(body)), true),
    };
    let now = time::OffsetDateTime::now_utc();
    let path = parts.uri.path();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "cookies": if cookies.is_empty() { Value::Null } else { Value::Array(cookies) },
        "headers": headers,
        "queryStringParameters": if query.is_empty() { Value::Null } else { Value::Object(query) },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": parts.headers.get("user-agent").and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format(&time::format_description::well_known::Rfc2822).unwrap_or_default(),
            "timeEpoch": now.unix_timestamp_nanos() / 1_000_000,
        },
        "body": body,
        "isBase64Encoded": is_b64,
    })
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Turns the function's HTTP API response document into an HTTP response.
fn from_response(doc: &Value) -> Response {
    let status = doc.get("statusCode").and_then(Value::as_u64).unwrap_or(200);
    let body = match doc.get("body").and_then(Value::as_str) {
        None => Vec::new(),
        Some(b) if doc.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) => {
            base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default()
        }
        Some(b) => b.as_bytes().to_vec(),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Some(Value::Object(headers)) = doc.get("headers") {
        for (k, v) in headers {
            if let (Ok(k), Some(Ok(v))) = (HeaderName::from_bytes(k.as_bytes()), v.as_str().map(HeaderValue::from_str))
            {
                h.append(k, v);
            }
        }
    }
    if let Some(Value::Array(cookies)) = doc.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.append("set-cookie", v);
            }
        }
    }
    resp
}
