//! Who is calling: a tenant (by API key) or the admin (by the deploy-time
//! admin key). Keys are looked up by their SHA-256; nothing stores them.

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::domain::{Tenant, hash_key, same_secret};
use crate::ports::TenantStore;

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get("authorization")
        .ok_or(ApiError::Unauthorized("Authorization: Bearer <api key> is required"))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization header is not valid text"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or(ApiError::Unauthorized("Authorization must be `Bearer <api key>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("Authorization must be `Bearer <api key>`"));
    }
    Ok(token.trim())
}

/// The calling tenant: 401 without a valid key, 403 when the tenant is disabled.
pub async fn tenant<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let key = bearer(headers)?;
    let tenant_id =
        app.store.tenant_of_key(&hash_key(key)).await?.ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    let tenant = app.store.get_tenant(&tenant_id).await?.ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    if !tenant.enabled {
        return Err(ApiError::Forbidden("this tenant is disabled"));
    }
    Ok(tenant)
}

/// Checks the admin key: 401 without a bearer key, 403 for any other key or
/// when no admin key is configured.
pub fn admin<S, Q, C>(app: &AppState<S, Q, C>, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = bearer(headers)?;
    match &app.settings.admin_key {
        None => Err(ApiError::Forbidden("the admin API is disabled (no admin key configured)")),
        Some(admin) if same_secret(admin, key) => Ok(()),
        Some(_) => Err(ApiError::Forbidden("this key may not use the admin API")),
    }
}
