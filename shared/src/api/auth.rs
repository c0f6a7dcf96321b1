//! Who is calling: a tenant (by API key) or the admin (by the deploy-time
//! admin key). Keys are looked up by their SHA-256; nothing stores them, and
//! the function knows the admin key only by its SHA-256 too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::domain::{FieldError, KeyGrant, Tenant, TenantId, format_millis, hash_key, now_millis};
use crate::ports::TenantStore;

/// Entries one instance keeps of each kind before it drops the stale ones.
const CACHE_ENTRIES_MAX: usize = 10_000;

/// What this API instance read lately of API keys and tenants, kept for
/// `COURIER_AUTH_CACHE_MS`, so a warm instance authenticates a tenant's
/// creates without two reads each. So a key revoked, a tenant disabled or
/// its quotas changed take effect within that time on every instance (at
/// once on the one that made the change: it forgets all it kept). Only what
/// exists is kept: a new key works at once, an unknown one is read each
/// time. A key's expiry is checked on every request. The tenant's count of
/// active tasks ages with it, which the active-task quota's headroom
/// allows for (see `tasks::quota`).
#[derive(Debug, Default)]
pub struct AuthCache {
    /// Zero: nothing is kept.
    ttl: Duration,
    grants: Mutex<HashMap<String, (Instant, KeyGrant)>>,
    tenants: Mutex<HashMap<TenantId, (Instant, Tenant)>>,
}

fn fresh<K: std::hash::Hash + Eq, V: Clone>(map: &Mutex<HashMap<K, (Instant, V)>>, k: &K, ttl: Duration) -> Option<V> {
    let map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(k).filter(|(at, _)| at.elapsed() < ttl).map(|(_, v)| v.clone())
}

fn keep<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, (Instant, V)>>, k: K, v: V, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() >= CACHE_ENTRIES_MAX {
        map.retain(|_, (at, _)| at.elapsed() < ttl);
        if map.len() >= CACHE_ENTRIES_MAX {
            map.clear();
        }
    }
    map.insert(k, (Instant::now(), v));
}

impl AuthCache {
    /// Keeps what it reads for `ttl` (zero: keeps nothing).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, ..Self::default() }
    }

    /// Forgets everything: this instance changed a key or a tenant.
    pub fn forget(&self) {
        self.grants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    async fn grant<S: TenantStore>(&self, store: &S, hash: String) -> Result<Option<KeyGrant>, ApiError> {
        if let Some(g) = fresh(&self.grants, &hash, self.ttl) {
            return Ok(Some(g));
        }
        let grant = store.tenant_of_key(&hash).await?;
        if let Some(g) = &grant {
            keep(&self.grants, hash, g.clone(), self.ttl);
        }
        Ok(grant)
    }

    async fn tenant<S: TenantStore>(&self, store: &S, id: &TenantId) -> Result<Option<Tenant>, ApiError> {
        if let Some(t) = fresh(&self.tenants, id, self.ttl) {
            return Ok(Some(t));
        }
        let tenant = store.get_tenant(id).await?;
        if let Some(t) = &tenant {
            keep(&self.tenants, id.clone(), t.clone(), self.ttl);
        }
        Ok(tenant)
    }
}

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
            enabled_tenant(app, &id, || ApiError::Unauthorized("the token names an unknown tenant")).await
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
        return enabled_tenant(app, &id, || ApiError::NotFound(format!("no tenant {id}"))).await;
    }
    let grant = app
        .auth_cache
        .grant(&app.store, hash_key(key))
        .await?
        .ok_or(ApiError::Unauthorized("unknown or revoked API key"))?;
    if let Some(at) = grant.expires_at.filter(|at| *at <= now_millis()) {
        return Err(ApiError::KeyExpired(format!(
            "this API key expired at {}: ask the admin for a new one",
            format_millis(at)
        )));
    }
    enabled_tenant(app, &grant.tenant, || ApiError::Unauthorized("unknown or revoked API key")).await
}

/// The tenant `id` (as this instance last read it), noted for the audit
/// log: `missing()` when there is none, 403 when it is disabled.
async fn enabled_tenant<S: TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    id: &TenantId,
    missing: impl FnOnce() -> ApiError,
) -> Result<Tenant, ApiError> {
    let tenant = app.auth_cache.tenant(&app.store, id).await?.ok_or_else(missing)?;
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
            auth_cache: Default::default(),
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

    #[tokio::test]
    async fn a_warm_instance_reuses_what_it_read_until_it_ages_or_is_forgotten() {
        use crate::domain::{KeyId, Quotas};
        use crate::testing::FakeStore;
        let store = FakeStore::new();
        let id = TenantId::generate();
        let tenant = Tenant {
            id: id.clone(),
            name: "t".into(),
            enabled: true,
            quotas: Quotas { max_active_tasks: 10, create_rate_per_second: 100 },
            active: 0,
            created_at: 0,
        };
        store.create_tenant(&tenant).await.expect("tenant");
        let key_id = KeyId::generate();
        store.put_key(&id, &key_id, "h1", 0, i64::MAX).await.expect("key");

        let cache = AuthCache::new(Duration::from_millis(150));
        assert_eq!(cache.grant(&store, "h1".into()).await.expect("read").map(|g| g.tenant), Some(id.clone()));
        assert!(cache.tenant(&store, &id).await.expect("read").is_some_and(|t| t.enabled));
        // Changed behind its back: the instance answers from what it read.
        store.revoke_key(&id, &key_id, 1).await.expect("revoke");
        store.update_tenant(&id, Some(false), None).await.expect("disable");
        assert!(cache.grant(&store, "h1".into()).await.expect("read").is_some(), "still kept");
        assert!(cache.tenant(&store, &id).await.expect("read").is_some_and(|t| t.enabled), "still kept");
        // Until it ages…
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(cache.grant(&store, "h1".into()).await.expect("read").is_none(), "revoked, once aged");
        assert!(cache.tenant(&store, &id).await.expect("read").is_some_and(|t| !t.enabled), "disabled, once aged");
        // …or the instance forgets all it kept (it made a change itself).
        store.update_tenant(&id, Some(true), None).await.expect("enable");
        cache.forget();
        assert!(cache.tenant(&store, &id).await.expect("read").is_some_and(|t| t.enabled));
        // An unknown key is never kept: a key made later works at once.
        assert!(cache.grant(&store, "h2".into()).await.expect("read").is_none());
        store.put_key(&id, &KeyId::generate(), "h2", 0, i64::MAX).await.expect("key");
        assert!(cache.grant(&store, "h2".into()).await.expect("read").is_some(), "a new key works at once");
        // A zero time keeps nothing.
        let off = AuthCache::new(Duration::ZERO);
        assert!(off.grant(&store, "h2".into()).await.expect("read").is_some());
        assert!(off.grants.lock().expect("lock").is_empty() && off.tenants.lock().expect("lock").is_empty());
    }
}
