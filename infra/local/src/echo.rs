//! A local delivery target: answers every request and logs it, so a user of
//! `make run` can watch Courier's requests arrive. `/status/<code>` answers
//! with that status instead of 200.

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::net::TcpListener;

/// Serves the echo target on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, Router::new().fallback(echo)).await
}

async fn echo(req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let courier: Vec<String> = parts
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("courier-") || k.starts_with("webhook-") || k.starts_with("trace") || k == "user-agent"
        })
        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
        .collect();
    println!("echo target received {} {} ({} body bytes) {}", parts.method, parts.uri, body.len(), courier.join(" "));
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    (status, format!("{{\"received\":true,\"bytes\":{}}}", body.len()))
}
