//! The router on the in-memory store with two tenants and an admin key: what
//! the API's route tests share.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{ApiSettings, AppState, SourceIp, create_tenant_with_key, router};
use crate::config::AdminKeyHash;
use crate::domain::{Quotas, TenantId};
use crate::testing::{FakeQueue, FakeScheduler, FakeStore};

pub(super) const ADMIN: &str = "adm_0123456789abcdef0123456789abcdef";

pub(super) struct World {
    pub app: Router,
    pub store: FakeStore,
    /// (tenant id, bearer key) of two tenants.
    pub a: (TenantId, String),
    pub b: (TenantId, String),
}

pub(super) async fn world() -> World {
    let store = FakeStore::new();
    let (ta, ka) = create_tenant_with_key(&store, "a", Quotas::default()).await.expect("tenant a");
    let (tb, kb) = create_tenant_with_key(&store, "b", Quotas::default()).await.expect("tenant b");
    let app = router(Arc::new(AppState {
        store: store.clone(),
        queue: FakeQueue::default(),
        scheduler: FakeScheduler::default(),
        limits: Default::default(),
        auth_cache: Default::default(),
        settings: ApiSettings {
            sqs_delay_max_s: 900,
            schedule_early_s: 60,
            admin_key: Some(AdminKeyHash::of_key(ADMIN)),
            guard: Default::default(),
            flow_breaker: Default::default(),
        },
    }));
    World { app, store, a: (ta.id, ka.secret), b: (tb.id, kb.secret) }
}

impl World {
    /// One request (with `key` as its bearer token, `body` as JSON, `ip` as
    /// the front's source address); the status and the JSON answer.
    pub async fn request(
        &self,
        key: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        ip: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).expect("method")).uri(uri);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut req = req.body(body).expect("request");
        if let Some(ip) = ip {
            req.extensions_mut().insert(SourceIp(ip.to_owned()));
        }
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") })
    }
}
