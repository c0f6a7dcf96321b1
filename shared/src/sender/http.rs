//! The sender's HTTP side: the guarded clients, built once per cold start,
//! and sending one attempt of a task's request (what the target answered, or
//! why it could not be reached, as an [`Attempt`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Sender;
use crate::domain::{
    Attempt, Blocked, Outcome, ReceiverHints, RequestSpec, SigningSecret, TargetGuard, TaskState, format_millis,
    mask_headers, mask_url, signature_header, webhook_id,
};
use crate::ports::{DeliveryLedger, DeliveryQueue, Scheduler};

/// Courier's version, sent in `User-Agent`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Response headers kept per attempt.
const MAX_RESPONSE_HEADERS: usize = 50;

/// The HTTP clients: connection reuse, HTTP/2 when offered (ALPN), rustls,
/// no proxies from the environment. Redirects are not followed unless a task
/// asks. Both clients carry the target guard: a resolver that drops refused
/// addresses at connect time (so a name cannot rebind past it), and a
/// redirect policy that checks every hop; IP-literal URLs, which skip the
/// resolver, are checked by [`HttpClients::check`] before sending.
#[derive(Debug)]
pub struct HttpClients {
    guard: Arc<TargetGuard>,
    direct: reqwest::Client,
    following: reqwest::Client,
}

/// The HTTP client could not be built: the sender must not start (a default
/// client would follow redirects, wait forever and skip the guard).
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("the HTTP client cannot be built")]
    Client(#[source] reqwest::Error),
    #[error("the TLS configuration cannot be built")]
    Tls(#[source] rustls::Error),
}

/// How many redirects a task that follows them may take.
const MAX_REDIRECTS: usize = 5;

tokio::task_local! {
    /// The port of the hop being sent: the resolver only sees a name, and an
    /// allow-list entry may name a port. Set around each send, moved on by
    /// the redirect policy; absent, only entries without a port apply.
    static HOP_PORT: std::cell::Cell<Option<u16>>;
}

/// Resolves names with the system resolver and keeps only the addresses the guard allows.
struct GuardedResolver {
    guard: Arc<TargetGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let port = HOP_PORT.try_with(std::cell::Cell::get).ok().flatten();
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = guard.filter_resolved(&host, port, found)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What reqwest builds for each client with its `rustls` feature: the platform's
/// verifier (the system's CA store), TLS 1.2 and 1.3, HTTP/2 offered by ALPN.
fn tls_config() -> Result<rustls::ClientConfig, HttpClientError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(HttpClientError::Tls)?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

impl HttpClients {
    /// Builds both clients at init, where Lambda does not bill the first invocation for it.
    pub fn new(guard: TargetGuard) -> Result<Self, HttpClientError> {
        Self::with_user_agent(guard, &format!("Courier/{VERSION}"))
    }

    fn with_user_agent(guard: TargetGuard, user_agent: &str) -> Result<Self, HttpClientError> {
        let guard = Arc::new(guard);
        // One TLS configuration for both clients: building it loads the system's CA
        // store, the largest part of the sender's init when each client did it.
        let tls = tls_config()?;
        let build = |policy| {
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .user_agent(user_agent)
                .redirect(policy)
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver { guard: guard.clone() }))
                .pool_idle_timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(HttpClientError::Client)
        };
        let hop_guard = guard.clone();
        let follow = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("stopped after {MAX_REDIRECTS} redirects"));
            }
            match hop_guard.check_url(attempt.url()) {
                Err(Blocked(why)) => {
                    let hop = mask_url(attempt.url().as_str());
                    attempt.error(Blocked(format!("redirect to {hop}: {why}")))
                }
                Ok(()) => {
                    let port = attempt.url().port_or_known_default();
                    let _ = HOP_PORT.try_with(|p| p.set(port));
                    attempt.follow()
                }
            }
        });
        Ok(Self { direct: build(reqwest::redirect::Policy::none())?, following: build(follow)?, guard })
    }

    fn get(&self, follow: bool) -> &reqwest::Client {
        if follow { &self.following } else { &self.direct }
    }

    /// Judges a URL before it is sent (scheme, and the host when it is an address).
    pub fn check(&self, url: &url::Url) -> Result<(), Blocked> {
        self.guard.check_url(url)
    }

    /// Sends a request with the port of its first hop known to the resolver.
    async fn send(&self, req: reqwest::RequestBuilder, port: Option<u16>) -> Result<reqwest::Response, reqwest::Error> {
        HOP_PORT.scope(std::cell::Cell::new(port), req.send()).await
    }
}

impl<S: DeliveryLedger, Q: DeliveryQueue, C: Scheduler> Sender<S, Q, C> {
    pub(super) async fn send(
        &self,
        state: &TaskState,
        spec: &RequestSpec,
        secrets: &[SigningSecret],
    ) -> (Attempt, ReceiverHints) {
        let method = reqwest::Method::from_bytes(spec.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
        let client = self.http.get(spec.follow_redirects);
        let mut headers: Vec<(String, String)> = vec![
            ("user-agent".into(), format!("Courier/{VERSION}")),
            ("courier-task-id".into(), state.id.to_string()),
            ("courier-attempt".into(), state.attempts.to_string()),
        ];
        if let Some(b) = &state.business_id {
            headers.push(("courier-business-id".into(), b.clone()));
        }
        if let Some(run) = state.run {
            headers.push(("courier-scheduled-time".into(), format_millis(run)));
        }
        let mut courier_headers: Vec<(String, String)> = Vec::new();
        if let Some(trace) = &spec.trace {
            courier_headers.push(("traceparent".into(), trace.traceparent()));
            if let Some(st) = &trace.state {
                courier_headers.push(("tracestate".into(), st.clone()));
            }
        }
        let body = spec.body.as_ref().map(crate::domain::Body::to_bytes);
        if !secrets.is_empty() {
            // The raw bytes sent are the bytes signed; the timestamp is this attempt's.
            let id = webhook_id(&state.id, state.run);
            let ts = self.clock.now().div_euclid(1000);
            let signature = signature_header(secrets, &id, ts, body.as_deref().unwrap_or_default());
            courier_headers.push(("webhook-id".into(), id));
            courier_headers.push(("webhook-timestamp".into(), ts.to_string()));
            courier_headers.push(("webhook-signature".into(), signature));
        }
        // Courier's own trace and signature headers replace any of the same name the task set.
        let ours = |name: &str| courier_headers.iter().any(|(k, _)| k == name);
        headers.extend(spec.headers.iter().filter(|(k, _)| !ours(k)).cloned());
        headers.extend(courier_headers.iter().cloned());
        if let Some(auth) = &spec.auth {
            headers.push(("authorization".into(), auth.header_value()));
        }
        let mut req = client.request(method, spec.url.as_str()).timeout(Duration::from_millis(spec.timeout_ms));
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let body_size = body.as_ref().map_or(0, Vec::len);
        if let Some(body) = body {
            req = req.body(body);
        }
        let started_at = self.clock.now();
        let clock = Instant::now();
        let mut hints = ReceiverHints::default();
        let mut response_headers = Vec::new();
        // An IP-literal URL never reaches the resolver: judge it here.
        let sent = match self.http.check(spec.url.url()) {
            Err(blocked) => Err(SendError::Blocked(blocked)),
            Ok(()) => self.http.send(req, spec.url.url().port_or_known_default()).await.map_err(SendError::Http),
        };
        let result = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let raw: Vec<(String, String)> = resp
                    .headers()
                    .iter()
                    .take(MAX_RESPONSE_HEADERS)
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                hints = ReceiverHints::from_response(status, self.clock.now(), |name| {
                    raw.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
                });
                response_headers = mask_headers(&raw);
                read_truncated(resp, self.settings.response_body_limit)
                    .await
                    .map(|body| (status, body))
                    .map_err(SendError::Http)
            }
            Err(e) => Err(e),
        };
        let duration_ms = clock.elapsed().as_millis() as u64;
        let (status_code, outcome, response_body, error) = match result {
            Ok((status, body)) => {
                let outcome = if hints.stop && !spec.rules.classify(status).eq(&Outcome::Success) {
                    Outcome::StoppedByReceiver
                } else {
                    spec.rules.classify(status)
                };
                (Some(status), outcome, Some(body), None)
            }
            Err(e) => (None, e.outcome(), None, Some(e.text())),
        };
        let attempt = Attempt {
            run: state.run,
            number: state.attempts,
            started_at,
            method: spec.method.as_str().to_owned(),
            url: spec.url.masked(),
            request_headers: mask_headers(&headers),
            request_body_size: body_size,
            response_headers,
            duration_ms,
            status_code,
            outcome,
            response_body,
            error,
            next_delay_ms: None,
        };
        (attempt, hints)
    }
}

/// Reads at most `limit` bytes of the body, as (lossy) UTF-8.
async fn read_truncated(mut resp: reqwest::Response, limit: usize) -> Result<String, reqwest::Error> {
    let mut buf = Vec::with_capacity(limit.min(4096));
    while buf.len() < limit {
        match resp.chunk().await? {
            Some(chunk) => buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]),
            None => break,
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Why a request got no response.
enum SendError {
    /// The guard refused the URL before sending.
    Blocked(Blocked),
    Http(reqwest::Error),
}

impl SendError {
    fn outcome(&self) -> Outcome {
        match self {
            Self::Blocked(_) => Outcome::Blocked,
            Self::Http(e) => classify_error(e),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Blocked(b) => b.to_string(),
            Self::Http(e) => match blocked_cause(e) {
                Some(b) => b.to_string(),
                None => error_text(e),
            },
        }
    }
}

/// The guard's refusal inside a client error: from the resolver (no address
/// left) or the redirect policy (a refused hop).
fn blocked_cause(e: &reqwest::Error) -> Option<&Blocked> {
    error_chain(e).find_map(|c| c.downcast_ref::<Blocked>())
}

fn classify_error(e: &reqwest::Error) -> Outcome {
    if blocked_cause(e).is_some() {
        return Outcome::Blocked;
    }
    if e.is_timeout() {
        return Outcome::Timeout;
    }
    let text = error_text(e).to_ascii_lowercase();
    if text.contains("dns") || text.contains("failed to lookup") || text.contains("name or service not known") {
        Outcome::Dns
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        Outcome::Tls
    } else {
        Outcome::Connect
    }
}

/// The error with its causes, e.g. `error sending request: client error (Connect): Connection refused`.
fn error_text(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error_chain(e) {
        let s = cause.to_string();
        if parts.last().is_none_or(|p| !p.contains(&s)) {
            parts.push(s);
        }
    }
    let mut text = parts.join(": ");
    if let Some(url) = e.url() {
        // The URL may carry credentials; the attempt already shows it, masked.
        text = text.replace(&format!(" for url ({url})"), "").replace(url.as_str(), &mask_url(url.as_str()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_cannot_be_built_fails_the_cold_start_instead_of_falling_back() {
        assert!(HttpClients::with_user_agent(TargetGuard::default(), "Courier\n").is_err());
        assert!(HttpClients::new(TargetGuard::default()).is_ok());
    }

    /// A loopback HTTP server answering 200 to every request; returns its port.
    async fn loopback_ok() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            }
        });
        port
    }

    async fn get(http: &HttpClients, url: &str) -> Result<u16, SendError> {
        let url = url::Url::parse(url).expect("url");
        http.check(&url).map_err(SendError::Blocked)?;
        let req = http.get(false).get(url.as_str());
        http.send(req, url.port_or_known_default()).await.map(|r| r.status().as_u16()).map_err(SendError::Http)
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_refused_addresses_is_blocked_before_any_connection() {
        let port = loopback_ok().await;
        let http = HttpClients::new(TargetGuard::default()).expect("client");
        let e = get(&http, &format!("http://localhost:{port}/")).await.expect_err("localhost is loopback");
        assert_eq!(e.outcome(), Outcome::Blocked);
        assert!(e.text().starts_with("blocked: localhost resolves only to refused addresses ("), "{}", e.text());
        let e = get(&http, &format!("http://127.0.0.1:{port}/")).await.expect_err("a loopback literal");
        assert_eq!(e.text(), "blocked: 127.0.0.1 is loopback (policy public)");
        let local = HttpClients::new(TargetGuard::new(crate::domain::TargetPolicy::LocalOnly, vec![])).expect("client");
        assert_eq!(get(&local, &format!("http://localhost:{port}/")).await.ok(), Some(200));
    }

    #[tokio::test]
    async fn the_resolver_knows_the_port_so_a_ported_entry_lets_only_that_port_through() {
        let (open, other) = (loopback_ok().await, loopback_ok().await);
        let allow = TargetGuard::parse_allowlist(&format!("127.0.0.1:{open}")).expect("valid");
        let http = HttpClients::new(TargetGuard::new(crate::domain::TargetPolicy::Public, allow)).expect("client");
        assert_eq!(get(&http, &format!("http://localhost:{open}/")).await.ok(), Some(200));
        assert_eq!(get(&http, &format!("http://127.0.0.1:{open}/")).await.ok(), Some(200));
        let e = get(&http, &format!("http://localhost:{other}/")).await.expect_err("another port");
        assert_eq!(e.outcome(), Outcome::Blocked);
        let e = get(&http, &format!("http://127.0.0.1:{other}/")).await.expect_err("another port");
        assert_eq!(e.outcome(), Outcome::Blocked);
    }
}
