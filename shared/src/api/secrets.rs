//! Signing secrets (Standard Webhooks): `POST /v1/secrets` (a new secret,
//! shown once), `GET /v1/secrets` (ids, times and states, never a secret),
//! `POST /v1/secrets/rotate` (a new secret; the ones signing until now keep
//! signing for [`ROTATION_GRACE_MS`] so receivers can switch) and
//! `DELETE /v1/secrets/{id}` (stops signing at once).
//!
//! A tenant's key manages its own secrets. Every task of a tenant with a
//! secret is signed unless it opts out (`"signing": false`); senders pick up
//! a change within their cache time (`COURIER_SIGNING_CACHE_MS`, 60 s).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState, auth};
use crate::domain::{
    EpochMillis, FieldError, ROTATION_GRACE_MS, SecretId, SecretInfo, SigningSecret, TenantId, format_millis,
    now_millis,
};
use crate::ports::{SigningSecrets, TenantStore};

/// Secrets a tenant may hold that still sign (active or in their grace).
pub const MAX_LIVE_SECRETS: usize = 5;

fn view(info: &SecretInfo, now: EpochMillis) -> Value {
    json!({
        "id": info.id.as_str(),
        "created_at": format_millis(info.created_at),
        "state": info.state(now).as_str(),
        "until": info.until.map(format_millis),
    })
}

/// These routes take no body; anything but an empty one (or `{}`) is a 400.
fn no_body(body: &Bytes) -> Result<(), ApiError> {
    let text = std::str::from_utf8(body).unwrap_or("x").trim();
    if text.is_empty() || text == "{}" {
        Ok(())
    } else {
        Err(FieldError::new("invalid", FieldError::DOCUMENT, "this route takes no body").into())
    }
}

/// Makes and stores a new secret; returns its view with the secret in it.
async fn make<S: SigningSecrets, Q, C>(
    app: &AppState<S, Q, C>,
    tenant: &TenantId,
    now: EpochMillis,
) -> Result<Value, ApiError> {
    let secret = SigningSecret::generate().map_err(|e| ApiError::Internal(Box::new(e)))?;
    let info = SecretInfo { id: SecretId::generate(), created_at: now, until: None };
    app.store.put_secret(tenant, &info, &secret).await?;
    let mut v = view(&info, now);
    v["secret"] = Value::String(secret.expose());
    Ok(v)
}

/// The tenant's secrets that still sign, refusing a new one past the limit.
async fn live<S: SigningSecrets, Q, C>(
    app: &AppState<S, Q, C>,
    tenant: &TenantId,
    now: EpochMillis,
) -> Result<Vec<SecretInfo>, ApiError> {
    let live: Vec<SecretInfo> = app.store.list_secrets(tenant).await?.into_iter().filter(|s| s.signs_at(now)).collect();
    if live.len() >= MAX_LIVE_SECRETS {
        return Err(ApiError::Conflict(format!(
            "a tenant holds at most {MAX_LIVE_SECRETS} signing secrets that still sign; revoke one first"
        )));
    }
    Ok(live)
}

#[tracing::instrument(skip_all, fields(tenant))]
pub async fn create<S: TenantStore + SigningSecrets, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    no_body(&body)?;
    let now = now_millis();
    live(&app, &tenant.id, now).await?;
    let v = make(&app, &tenant.id, now).await?;
    tracing::info!(secret_id = v["id"].as_str(), "signing secret created");
    super::audit::note_resource(format!("secrets/{}", v["id"].as_str().unwrap_or_default()));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[tracing::instrument(skip_all, fields(tenant))]
pub async fn list<S: TenantStore + SigningSecrets, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    let now = now_millis();
    let secrets: Vec<Value> = app.store.list_secrets(&tenant.id).await?.iter().map(|s| view(s, now)).collect();
    Ok(Json(json!({"secrets": secrets})))
}

#[tracing::instrument(skip_all, fields(tenant))]
pub async fn rotate<S: TenantStore + SigningSecrets, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    no_body(&body)?;
    let now = now_millis();
    let previous = live(&app, &tenant.id, now).await?;
    // The new secret first: if ending the old ones' terms fails, both still sign.
    let mut v = make(&app, &tenant.id, now).await?;
    let until = now + ROTATION_GRACE_MS;
    let mut rotated = Vec::new();
    for mut old in previous.into_iter().filter(|s| s.until.is_none_or(|u| u > until)) {
        if app.store.expire_secret(&tenant.id, &old.id, until).await? {
            old.until = Some(until);
            rotated.push(view(&old, now));
        }
    }
    tracing::info!(secret_id = v["id"].as_str(), rotated = rotated.len(), "signing secret rotated");
    super::audit::note_resource(format!("secrets/{}", v["id"].as_str().unwrap_or_default()));
    v["previous"] = Value::Array(rotated);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[tracing::instrument(skip_all, fields(tenant))]
pub async fn revoke<S: TenantStore + SigningSecrets, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth::tenant(&app, &headers).await?;
    tracing::Span::current().record("tenant", tenant.id.as_str());
    let missing = || ApiError::NotFound(format!("no signing secret {id}"));
    let secret = SecretId::parse(&id).map_err(|_| missing())?;
    if !app.store.delete_secret(&tenant.id, &secret).await? {
        return Err(missing());
    }
    tracing::info!(secret_id = %secret, "signing secret revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeStore;

    fn app() -> AppState<FakeStore, (), ()> {
        AppState {
            store: FakeStore::new(),
            queue: (),
            scheduler: (),
            settings: super::super::ApiSettings {
                sqs_delay_max_s: 900,
                schedule_early_s: 60,
                admin_key: None,
                guard: Default::default(),
                flow_breaker: Default::default(),
            },
            limits: Default::default(),
            auth_cache: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_made_secret_is_shown_once_and_stored_for_signing() {
        let app = app();
        let tenant = TenantId::generate();
        let v = make(&app, &tenant, 1_000).await.expect("made");
        let shown = SigningSecret::parse(v["secret"].as_str().expect("secret")).expect("whsec_");
        assert_eq!(app.store.signing_secrets(&tenant, 2_000).await.expect("read"), [shown]);
        let listed = app.store.list_secrets(&tenant).await.expect("list");
        assert_eq!(view(&listed[0], 2_000)["state"], "active");
        assert!(view(&listed[0], 2_000).get("secret").is_none());
    }

    #[tokio::test]
    async fn a_tenant_cannot_hold_more_than_the_limit_of_live_secrets() {
        let app = app();
        let tenant = TenantId::generate();
        for _ in 0..MAX_LIVE_SECRETS {
            live(&app, &tenant, 0).await.expect("room");
            make(&app, &tenant, 0).await.expect("made");
        }
        assert!(matches!(live(&app, &tenant, 0).await, Err(ApiError::Conflict(_))));
    }

    #[test]
    fn routes_without_a_body_refuse_one() {
        assert!(no_body(&Bytes::from_static(b"")).is_ok());
        assert!(no_body(&Bytes::from_static(b" {} ")).is_ok());
        assert!(no_body(&Bytes::from_static(b"{\"a\":1}")).is_err());
    }
}
