//! The target guard (SSRF) and secret masking, end to end: the real API and
//! sender binaries under policy `public` (the deployed default), with
//! loopback targets standing in for the addresses a deployed Courier must not
//! reach. Nothing here sends to a non-loopback address.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Reply, Target, TestStack, stack_options};

const WAIT: Duration = Duration::from_secs(20);

/// A test stack whose functions run the deployed guard.
async fn public_stack(area: &str, allowlist: &str) -> TestStack {
    let mut opts = stack_options(area);
    opts.extra_env.push(("COURIER_TARGET_POLICY".into(), "public".into()));
    opts.extra_env.push(("COURIER_TARGET_ALLOWLIST".into(), allowlist.into()));
    TestStack::start(opts).await
}

fn task(url: &str) -> Value {
    json!({"request": {"method": "POST", "url": url, "body": "x"}})
}

async fn attempts(stack: &TestStack, id: &str) -> Vec<Value> {
    let (status, page) = stack.api.get(&format!("/v1/tasks/{id}/attempts?limit=100")).await;
    assert_eq!(status, 200, "{page}");
    page["attempts"].as_array().cloned().unwrap_or_default()
}

fn assert_blocked_at_create(status: u16, body: &Value, url: &str) {
    assert_eq!(status, 400, "{url}: {body}");
    assert_eq!(body["error"]["code"], "blocked_address", "{url}: {body}");
    assert_eq!(body["error"]["field"], "request.url", "{url}: {body}");
}

#[tokio::test]
async fn literal_blocked_addresses_in_any_spelling_are_refused_at_create_and_names_are_blocked_at_send() {
    let target = Target::start(&[]).await;
    let stack = public_stack("guard-public", "").await;
    let api = &stack.api;
    let port = target.addr.port();

    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0x7f.0.0.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://user:pw@127.0.0.1:{port}/"),
    ] {
        // Loopback spellings only: were the guard to let one through, the request
        // would still stay on this machine. Off-machine addresses (metadata,
        // private ranges) are refused in the unit tests of `check_target`.
        let (status, body) = api.post("/v1/tasks", &task(&url).to_string()).await;
        assert_blocked_at_create(status, &body, &url);
    }
    // Batch items and a change of URL are judged the same way.
    let never_sent =
        json!({"request": {"method": "GET", "url": "http://hooks.example.invalid/"}, "schedule": {"delay": "1h"}});
    let batch = json!({"tasks": [task(&format!("http://127.1:{port}/")), never_sent]});
    let (status, resp) = api.post("/v1/tasks/batch", &batch.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["results"][0]["error"]["code"], "blocked_address", "{resp}");
    assert_eq!(resp["results"][0]["error"]["field"], "tasks[0].request.url", "{resp}");
    assert_eq!(resp["results"][1]["status"], 201, "{resp}");
    let later = api.create_task(never_sent).await;
    let id = later["id"].as_str().expect("id");
    let (status, body) =
        api.patch(&format!("/v1/tasks/{id}"), &json!({"request": {"url": "http://2130706433/"}}).to_string()).await;
    assert_blocked_at_create(status, &body, "PATCH http://2130706433/");

    // A name is accepted, then judged on what it resolves to: localhost is loopback.
    let url = format!("http://localhost:{port}/hook");
    let id = api.create("POST", &url).await;
    let failed = api.wait_for_status(&id, "failed", WAIT).await;
    let reason = failed["failure_reason"].as_str().expect("reason");
    assert!(reason.contains("blocked: localhost resolves only to refused addresses"), "{reason}");
    assert_eq!(failed["attempts"], 1, "a blocked attempt is not retried: {failed}");
    let history = attempts(&stack, &id).await;
    assert_eq!(history.len(), 1);
    let a = &history[0];
    assert_eq!(a["outcome"], "blocked");
    assert!(a["status_code"].is_null() && a["response_body"].is_null(), "{a}");
    assert!(a["error"].as_str().is_some_and(|e| e.contains("is loopback; policy public")), "{a}");
    assert!(target.received().is_empty(), "the target must receive nothing");
}

#[tokio::test]
async fn the_allow_list_lets_exactly_its_port_through_and_a_redirect_to_another_port_is_stopped() {
    let allowed = Target::start(&[]).await;
    let other = Target::start(&[]).await;
    let other_port = other.addr.port();
    let redirecting = Target::start_with(vec![
        Reply::status(302).header("location", format!("http://127.0.0.1:{other_port}/stolen")),
        Reply::status(302).header("location", format!("http://localhost:{other_port}/stolen")),
        Reply::status(302).header("location", allowed.url("/landed")),
    ])
    .await;
    let allowlist = format!("127.0.0.1:{},127.0.0.1:{}", allowed.addr.port(), redirecting.addr.port());
    let stack = public_stack("guard-allow", &allowlist).await;
    let api = &stack.api;

    // The allow-listed address and port: delivered, by address and by a name resolving to it.
    let id = api.create("POST", &allowed.url("/by-address")).await;
    api.wait_for_status(&id, "succeeded", WAIT).await;
    let id = api.create("POST", &format!("http://localhost:{}/by-name", allowed.addr.port())).await;
    api.wait_for_status(&id, "succeeded", WAIT).await;
    let paths: Vec<String> = allowed.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/by-address", "/by-name"]);

    // The same address on another port: refused at create, and blocked at send by name.
    let (status, body) = api.post("/v1/tasks", &task(&other.url("/")).to_string()).await;
    assert_blocked_at_create(status, &body, &other.url("/"));
    let id = api.create("POST", &format!("http://localhost:{other_port}/")).await;
    let failed = api.wait_for_status(&id, "failed", WAIT).await;
    assert_eq!(failed["last_attempt"]["outcome"], "blocked", "{failed}");

    // Redirects from the allowed target to the other port, as an address and as a name: stopped.
    for hop in ["address", "name"] {
        let body =
            json!({"request": {"method": "GET", "url": redirecting.url(&format!("/{hop}")), "follow_redirects": true}});
        let id = api.create_task(body).await["id"].as_str().expect("id").to_owned();
        let failed = api.wait_for_status(&id, "failed", WAIT).await;
        let last = &failed["last_attempt"];
        assert_eq!(last["outcome"], "blocked", "redirect to an {hop}: {failed}");
        let error = last["error"].as_str().unwrap_or_default();
        let why =
            if hop == "address" { "blocked: redirect to http://127.0.0.1:" } else { "blocked: localhost resolves" };
        assert!(error.starts_with(why), "{last}");
        assert!(last["status_code"].is_null(), "{last}");
        assert_eq!(failed["attempts"], 1, "not retried: {failed}");
    }
    assert!(other.received().is_empty(), "the refused target must receive nothing");
    // A redirect to an allowed hop is followed.
    let body = json!({"request": {"method": "GET", "url": redirecting.url("/ok"), "follow_redirects": true}});
    let id = api.create_task(body).await["id"].as_str().expect("id").to_owned();
    api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(redirecting.received().len(), 3);
    assert_eq!(allowed.received().last().map(|r| r.path.clone()), Some("/landed".to_owned()));
}

#[tokio::test]
async fn proxies_are_ignored_url_secrets_are_sent_but_masked_and_unsafe_credentials_are_refused() {
    let target = Target::start(&[]).await;
    // The sender ignores proxy variables: a "proxy" on loopback must see nothing.
    let proxy = Target::start(&[]).await;
    let mut opts = stack_options("guard-secrets"); // local-only: loopback allowed
    let proxy_env = [("HTTP_PROXY", proxy.url("")), ("http_proxy", proxy.url("")), ("ALL_PROXY", proxy.url(""))];
    let sender_env = opts.function_env.entry("sender".into()).or_default();
    sender_env.extend(proxy_env.into_iter().map(|(k, v)| (k.to_owned(), v)));
    // The emulator (on 127.0.0.1) is reached directly; a target named localhost would be proxied.
    sender_env.extend([("NO_PROXY".to_owned(), "127.0.0.1".to_owned()), ("no_proxy".into(), "127.0.0.1".into())]);
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let id = api.create("POST", &format!("http://localhost:{}/direct", target.addr.port())).await;
    api.wait_for_status(&id, "succeeded", WAIT).await;
    assert_eq!(target.received().len(), 1, "sent straight to the target");
    assert!(proxy.received().is_empty(), "not through the proxy");

    let port = target.addr.port();
    let url = format!("http://user:secret@127.0.0.1:{port}/x?token=abc&page=2");
    let id = api.create("GET", &url).await;

    let task = api.wait_for_status(&id, "succeeded", WAIT).await;
    let masked = format!("http://***:***@127.0.0.1:{port}/x?token=***&page=2");
    assert_eq!(task["request"]["url"], masked.as_str(), "{task}");
    assert_eq!(task["last_attempt"]["request"]["url"], masked.as_str(), "{task}");
    let history = attempts(&stack, &id).await;
    assert_eq!(history[0]["request"]["url"], masked.as_str());
    let shown = format!("{task}{}", Value::Array(history));
    assert!(!shown.contains("secret") && !shown.contains("abc"), "no secret shown: {shown}");

    let got = target.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].path, "/x?token=abc&page=2", "the real query is sent");
    // user:secret, as basic credentials.
    assert_eq!(got[1].header("authorization"), Some("Basic dXNlcjpzZWNyZXQ="));

    let body =
        json!({"request": {"method": "GET", "url": target.url("/"), "auth": {"type": "bearer", "token": "abc\ndef"}}});
    let (status, e) = api.post("/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["field"], "request.auth.token", "{e}");
    let body = json!({"request": {"method": "GET", "url": target.url("/"), "headers": {"X-Foo": "a\r\nInjected: 1"}}});
    let (status, e) = api.post("/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["field"], "request.headers.X-Foo", "{e}");
    assert_eq!(target.received().len(), 2, "nothing refused was sent");
}
