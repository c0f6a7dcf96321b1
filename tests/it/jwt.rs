//! JWT callers beside API keys: the `/jwt/v1/…` routes, guarded by the HTTP
//! API's JWT authorizer (locally, the front with a local ES256 issuer), reach
//! the same API as the tenant the token's claim names; the function trusts
//! the authorizer's claims and never parses a token.

use std::sync::Arc;

use courier_local::jwt::{Issuer, LOCAL_AUDIENCE, LOCAL_ISSUER};
use serde_json::json;

use crate::helpers::{Api, TestStack, stack_options};

#[tokio::test]
async fn a_tenant_calls_with_a_jwt_or_a_key_and_bad_tokens_get_401_with_the_reason() {
    let issuer = Arc::new(Issuer::generate().expect("an ES256 key"));
    let mut opts = stack_options("jwt");
    opts.jwt = Some(issuer.clone());
    let stack = TestStack::start(opts).await;
    let base = stack.local.api_url.clone();
    let token = issuer.mint("courier_tenant", &stack.tenant, 300).expect("mint");
    let jwt = Api::new(&base, Some(&token));

    // The local issuer publishes its keys, as an identity provider does.
    let (status, jwks) = Api::new(&base, None).get("/local-issuer/.well-known/jwks.json").await;
    assert_eq!(
        (status, jwks["keys"][0]["kty"].as_str(), jwks["keys"][0]["alg"].as_str()),
        (200, Some("EC"), Some("ES256"))
    );
    // The same API, as the tenant the token names.
    let body = json!({"request": {"method": "POST", "url": "https://jwt.invalid/hook"}, "schedule": {"delay": "1h"}});
    let (status, created) = jwt.post("/jwt/v1/tasks", &body.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, by_key) = stack.api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "the key's tenant sees the JWT's task: {by_key}");
    let (status, listed) = jwt.get("/jwt/v1/tasks?limit=5").await;
    assert_eq!((status, listed["tasks"][0]["id"].as_str()), (200, Some(id.as_str())));
    let (_, me) = jwt.get("/jwt/v1/whoami").await;
    assert_eq!(me["tenant"]["id"], stack.tenant.as_str());
    let (status, _) = jwt.delete(&format!("/jwt/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    let (_, audit) = stack.admin.get("/v1/audit?action=task.cancel").await;
    assert_eq!(audit["entries"][0]["actor"], format!("jwt:{}", stack.tenant), "{audit}");

    // Refused by the authorizer, with the reason.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "exp": now + 300, "courier_tenant": stack.tenant});
    let signed = |change: serde_json::Value| {
        let mut c = claims.clone();
        for (k, v) in change.as_object().expect("object") {
            c[k] = v.clone();
        }
        issuer.sign(&json!({"alg": "ES256", "typ": "JWT"}), &c).expect("sign")
    };
    use base64::Engine;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims.clone()));
    let other_issuer = Issuer::generate().expect("key").mint("courier_tenant", &stack.tenant, 300).expect("mint");
    let cases = [
        (signed(json!({"exp": now - 10})), "expired"),
        (signed(json!({"aud": "someone-else"})), "audience"),
        (signed(json!({"iss": "https://evil.invalid/"})), "issuer"),
        (unsigned, "alg none"),
        (other_issuer, "signature"),
        (stack.api.key.clone().expect("key"), "not a JWT"),
    ];
    for (token, why) in cases {
        let resp = stack.api.http.get(format!("{base}/jwt/v1/tasks")).bearer_auth(&token).send().await.expect("call");
        assert_eq!(resp.status(), 401, "{why}");
        let header =
            resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(header.starts_with("Bearer error=\"invalid_token\""), "{header}");
        let body: serde_json::Value = resp.json().await.expect("json");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{why}: {message}");
    }
    // Valid tokens the API refuses: an unknown tenant, no tenant claim.
    for (change, why) in [
        (json!({"courier_tenant": "tnt_0123456789abcdef"}), "unknown tenant"),
        (json!({"courier_tenant": null}), "names no tenant"),
    ] {
        let mut c = claims.clone();
        for (k, v) in change.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let t = issuer.sign(&json!({"alg": "ES256"}), &c).expect("sign");
        let (status, body) = Api::new(&base, Some(&t)).get("/jwt/v1/tasks").await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(why)), "{why}: {body}");
    }

    // API keys keep working on /v1; a JWT there is no key.
    assert_eq!(stack.api.get("/v1/tasks?limit=1").await.0, 200);
    assert_eq!(jwt.get("/v1/tasks?limit=1").await.0, 401);
    // Nobody can name a JWT tenant by header: another tenant's key with the
    // header naming this tenant is still that other tenant.
    let (_, other_key) = stack.admin.new_tenant("other", json!({})).await;
    let resp = stack
        .api
        .http
        .get(format!("{base}/v1/tasks/{id}"))
        .bearer_auth(&other_key)
        .header(courier::api::JWT_TENANT_HEADER, stack.tenant.clone())
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 404, "the header is dropped before the API sees it");
}
