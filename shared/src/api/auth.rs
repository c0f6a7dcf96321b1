//! Who is calling: a tenant (by API key) or the admin (by the deploy-time
//! admin key). Keys are looked up by their SHA-256; nothing stores them, and
//! the function knows the admin key only by its SHA-256 too.

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::domain::{FieldError, Tenant, TenantId, format_millis, hash_key, now_millis};
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

/// The tenant a JWT names, as the API function's entry point sets it from
/// the HTTP API authorizer's claims (`/jwt/…` routes only; the entry point
/// drops this header from every request first, so no caller can send it).
pub const JWT_TENANT_HEADER: &str = "x-courier-jwt-tenant";

/// The tenant of a JWT caller, if the request came through the JWT authorizer.
async fn jwt_tenant<S: TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    headers: &HeaderMap,
) -> Option<Result<Tenant, ApiError>> {
    let named = headers.get(JWT_TENANT_HEADER)?;
    Some(
        async {
            let claim = named.to_str().unwrap_or_default().trim();
            if claim.is_empty() {
                return Err(ApiError::Unauthorized("the token names no tenant (its tenant claim is missing)"));
            }
            let id = TenantId::parse(claim)
                .map_err(|_| ApiError::Unauthorized("the token's tenant claim is not a tenant id"))?;
            let tenant =
                app.store.get_tenant(&id).await?.ok_or(ApiError::Unauthorized("the token names an unknown tenant"))?;
            super::audit::note_tenant(&tenant.id);
            if !tenant.enabled {
                return Err(ApiError::Forbidden("this tenant is disabled"));
            }
            Ok(tenant)
        }
        .await,
    )
}

/// The header with which the admin key acts as one tenant (the console's
/// tenant picker): only the admin key may send it.
pub const ACT_AS_TENANT: &str = "x-courier-tenant";

/// Whether the request names a tenant with the admin key: only meaningful
/// once [`tenant`] accepted it (which refuses the header from anyone else).
pub fn acts_as_tenant(headers: &HeaderMap) -> bool {
    headers.contains_key(ACT_AS_TENANT)
}

/// The calling tenant: 401 without a valid key, 403 when the tenant is disabled.
/// The admin key with `X-Courier-Tenant: <tenant id>` is that tenant.
pub async fn tenant<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    if let Some(t) = jwt_tenant(app, headers).await {
        return t;
    }
    let key = bearer(headers)?;
    if let Some(named) = headers.get(ACT_AS_TENANT) {
        if !app.settings.admin_key.as_ref().is_some_and(|admin| admin.matches(key)) {
            return Err(ApiError::Forbidden("only the admin key may name a tenant with X-Courier-Tenant"));
        }
        let id = named.to_str().ok().and_then(|v| TenantId::parse(v.trim()).ok()).ok_or_else(|| {
            FieldError::new("invalid", "X-Courier-Tenant", "X-Courier-Tenant must be a tenant id (tnt_…)")
        })?;
        let tenant = app.store.get_tenant(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {id}")))?;
        if !tenant.enabled {
            return Err(ApiError::Forbidden("this tenant is disabled"));
        }
        super::audit::note_tenant(&tenant.id);
        return Ok(tenant);
    }
    let grant =
        app.store.tenant_of_key(&hash_key(key)).await?.ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    if let Some(at) = grant.expires_at.filter(|at| *at <= now_millis()) {
        return Err(ApiError::KeyExpired(format!(
            "this API key expired at {}: ask the admin for a new one",
            format_millis(at)
        )));
    }
    let tenant =
        app.store.get_tenant(&grant.tenant).await?.ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    super::audit::note_tenant(&tenant.id);
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
        Some(admin) if admin.matches(key) => Ok(()),
        Some(_) => Err(ApiError::Forbidden("this key may not use the admin API")),
    }
}

/// Who is calling a route both the admin and tenants use.
#[derive(Debug)]
pub enum Caller {
    Admin,
    Tenant(Tenant),
}

impl Caller {
    /// `admin` or the tenant id: what `updated_by` records.
    pub fn id(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::Tenant(t) => t.id.as_str().to_owned(),
        }
    }
}

/// The admin (its key is compared first, by hash, so it never costs a
/// store read) or else the tenant owning the key: 401 without a valid key,
/// 403 when the tenant is disabled.
pub async fn caller<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if headers.contains_key(JWT_TENANT_HEADER) {
        return Ok(Caller::Tenant(tenant(app, headers).await?));
    }
    let key = bearer(headers)?;
    if app.settings.admin_key.as_ref().is_some_and(|admin| admin.matches(key)) {
        return Ok(Caller::Admin);
    }
    Ok(Caller::Tenant(tenant(app, headers).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiSettings;
    use crate::config::AdminKeyHash;

    const KEY: &str = "adm_0123456789abcdef0123456789abcdef";

    fn app(admin_key: Option<AdminKeyHash>) -> AppState<(), (), ()> {
        AppState {
            store: (),
            queue: (),
            scheduler: (),
            limits: Default::default(),
            settings: ApiSettings {
                sqs_delay_max_s: 900,
                schedule_early_s: 60,
                admin_key,
                guard: Default::default(),
                flow_breaker: Default::default(),
            },
        }
    }

    fn bearer_headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().expect("header"));
        h
    }

    #[test]
    fn the_admin_is_whoever_holds_the_key_whose_hash_is_configured() {
        let app = app(Some(AdminKeyHash::of_key(KEY)));
        assert!(admin(&app, &bearer_headers(KEY)).is_ok());
        assert!(matches!(admin(&app, &bearer_headers(&format!("{KEY}x"))), Err(ApiError::Forbidden(_))));
        // The hash itself is not a key.
        let hex = hash_key(KEY);
        assert!(matches!(admin(&app, &bearer_headers(&hex)), Err(ApiError::Forbidden(_))));
        assert!(matches!(admin(&app, &HeaderMap::new()), Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn without_a_configured_hash_the_admin_api_is_off() {
        assert!(matches!(admin(&app(None), &bearer_headers(KEY)), Err(ApiError::Forbidden(_))));
    }
}
