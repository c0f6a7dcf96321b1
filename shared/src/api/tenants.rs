//! Admin endpoints: tenants, their quotas and their API keys. Keys are shown
//! once, when created; rotation is creating a new key and revoking the old one
//! when its users have moved (both work in between).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, audit, auth, views};
use crate::domain::{
    DEFAULT_KEY_LIFETIME_MS, EpochMillis, FieldError, KeyId, KeyInfo, MAX_KEY_LIFETIME_MS, NewApiKey, Quotas, Tenant,
    TenantId, decode_document, format_millis, now_millis, parse_duration, parse_time,
};
use crate::domain::{EventType, FlowKey, FlowPolicy, MAX_PARALLELISM, PolicyScope, Rate};
use crate::ports::{EventSettings, FlowPolicies, TenantStore};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantDto {
    name: Option<String>,
    enabled: Option<bool>,
    max_active_tasks: Option<u64>,
    create_rate_per_second: Option<u64>,
    /// Deliveries per period across all the tenant's targets (`"1000/m"`); `null` clears it.
    #[serde(default, deserialize_with = "present")]
    delivery_rate: Option<Value>,
    /// Requests in flight at once across all the tenant's targets; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    delivery_parallelism: Option<Value>,
    /// The lifecycle event types published for the tenant (`[]`: none).
    events: Option<Vec<String>>,
}

/// The `events` of a tenant document: known event type names, each once.
fn event_types(names: &[String]) -> Result<Vec<EventType>, ApiError> {
    let mut out: Vec<EventType> = Vec::new();
    for n in names {
        let t = EventType::parse(n).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            FieldError::new("invalid", "events", format!("unknown event type `{n}`: one of {}", known.join(", ")))
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort();
    Ok(out)
}

/// A field given, even as `null` (which clears it): `Some(Value::Null)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The tenant's delivery limits after `dto`, from `current`: `None` when the
/// body does not touch them, `Some(None)` when they end up cleared. They are
/// a flow policy on the tenant's key (`t:<tenant>`, the admin's), so the
/// sender enforces them with the flow gate and reads them with the other
/// policies, never per delivery.
fn delivery_limits(dto: &TenantDto, current: Option<&FlowPolicy>) -> Result<Option<Option<FlowPolicy>>, ApiError> {
    if dto.delivery_rate.is_none() && dto.delivery_parallelism.is_none() {
        return Ok(None);
    }
    let mut p = current.cloned().unwrap_or(FlowPolicy {
        rate: None,
        burst: None,
        parallelism: None,
        breaker: None,
        adaptive: false,
        updated_at: 0,
        updated_by: String::new(),
    });
    match &dto.delivery_rate {
        None => {}
        Some(Value::Null) => p.rate = None,
        Some(Value::String(s)) => {
            p.rate = Some(Rate::parse(s).map_err(|m| FieldError::new("invalid", "delivery_rate", m))?);
        }
        Some(_) => {
            let m = "delivery_rate must be a rate such as \"1000/m\" or null";
            return Err(FieldError::new("invalid", "delivery_rate", m).into());
        }
    }
    match &dto.delivery_parallelism {
        None => {}
        Some(Value::Null) => p.parallelism = None,
        Some(v) => {
            let n = v.as_u64().filter(|n| (1..=u64::from(MAX_PARALLELISM)).contains(n)).ok_or_else(|| {
                FieldError::new(
                    "invalid",
                    "delivery_parallelism",
                    format!("delivery_parallelism must be an integer from 1 to {MAX_PARALLELISM} or null"),
                )
            })?;
            p.parallelism = Some(n as u32);
        }
    }
    p.adaptive = false;
    p.updated_at = now_millis();
    p.updated_by = "admin".to_owned();
    Ok(Some(p.limits().then_some(p)))
}

/// Stores the limits `delivery_limits` decided.
async fn apply_limits<S: FlowPolicies>(
    store: &S,
    id: &TenantId,
    limits: Option<Option<FlowPolicy>>,
) -> Result<(), ApiError> {
    let key = FlowKey::tenant(id);
    match limits {
        None => {}
        Some(Some(p)) => {
            store.put_policy(&key, &PolicyScope::Admin, &p).await?;
            tracing::info!(tenant = %id, rate = ?p.rate.map(|r| r.to_string()), parallelism = ?p.parallelism, "delivery limits set");
        }
        Some(None) => {
            store.delete_policy(&key, &PolicyScope::Admin).await?;
            tracing::info!(tenant = %id, "delivery limits cleared");
        }
    }
    Ok(())
}

fn parse(body: &[u8]) -> Result<TenantDto, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    Ok(decode_document(body)?)
}

fn quotas(dto: &TenantDto, base: Quotas) -> Result<Quotas, ApiError> {
    let q = Quotas {
        max_active_tasks: dto.max_active_tasks.unwrap_or(base.max_active_tasks),
        create_rate_per_second: dto.create_rate_per_second.unwrap_or(base.create_rate_per_second),
    };
    if !(1..=10_000_000).contains(&q.max_active_tasks) {
        return Err(FieldError::new("invalid", "max_active_tasks", "max_active_tasks must be 1 to 10000000").into());
    }
    if !(1..=100_000).contains(&q.create_rate_per_second) {
        return Err(
            FieldError::new("invalid", "create_rate_per_second", "create_rate_per_second must be 1 to 100000").into()
        );
    }
    Ok(q)
}

/// Creates a tenant and its first key; the one place besides key creation a key is shown.
pub async fn create_tenant_with_key<S: TenantStore>(
    store: &S,
    name: &str,
    quotas: Quotas,
) -> Result<(Tenant, NewApiKey), ApiError> {
    let now = now_millis();
    let tenant =
        Tenant { id: TenantId::generate(), name: name.to_owned(), enabled: true, quotas, active: 0, created_at: now };
    store.create_tenant(&tenant).await?;
    let key = NewApiKey::generate();
    store.put_key(&tenant.id, &key.key_id, &key.hash, now, now + DEFAULT_KEY_LIFETIME_MS).await?;
    Ok((tenant, key))
}

pub async fn create<S: TenantStore + FlowPolicies + EventSettings, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::admin(&app, &headers)?;
    let dto = parse(&body)?;
    let name = dto.name.clone().unwrap_or_default();
    if name.is_empty() || name.len() > 100 {
        return Err(FieldError::new("invalid", "name", "name must be 1 to 100 characters").into());
    }
    if dto.enabled.is_some() {
        return Err(
            FieldError::new("unknown_field", "enabled", "a new tenant is enabled; disable it with PATCH").into()
        );
    }
    let q = quotas(&dto, Quotas::default())?;
    let limits = delivery_limits(&dto, None)?;
    let events = dto.events.as_deref().map(event_types).transpose()?.unwrap_or_default();
    let (tenant, key) = create_tenant_with_key(&app.store, &name, q).await?;
    apply_limits(&app.store, &tenant.id, limits.clone()).await?;
    if !events.is_empty() {
        app.store.set_event_types(&tenant.id, &events).await?;
    }
    tracing::info!(tenant = %tenant.id, key_id = %key.key_id, "tenant created");
    audit::note_tenant(&tenant.id);
    audit::note_resource(format!("tenants/{}", tenant.id));
    let first = KeyInfo {
        id: key.key_id.clone(),
        created_at: tenant.created_at,
        revoked_at: None,
        expires_at: Some(tenant.created_at + DEFAULT_KEY_LIFETIME_MS),
    };
    let mut view = views::tenant(&tenant, &[first], limits.flatten().as_ref());
    view["api_key"] = json!({"id": key.key_id, "key": key.secret});
    view["events"] = json!(events.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The tenant a path segment names: a malformed id names no tenant, so it is
/// a 404 without a store call, as for any unknown id.
fn tenant_id(id: &str) -> Result<TenantId, ApiError> {
    let id = TenantId::parse(id).map_err(|_| ApiError::NotFound(format!("no tenant {id}")))?;
    audit::note_tenant(&id);
    Ok(id)
}

async fn tenant_view<S: TenantStore + FlowPolicies + EventSettings>(
    store: &S,
    id: &TenantId,
) -> Result<Value, ApiError> {
    let t = store.get_tenant(id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {id}")))?;
    let limits = store.get_policy(&FlowKey::tenant(id), &PolicyScope::Admin).await?;
    let mut v = views::tenant(&t, &store.list_keys(id).await?, limits.as_ref());
    let types = store.event_types(id).await?;
    v["events"] = json!(types.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    Ok(v)
}

/// Every tenant (the admin's view, the console's tenant picker): id, name,
/// whether enabled, active tasks against the quota.
pub async fn list<S: TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let mut tenants = app.store.list_tenants().await?;
    tenants.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.as_str().cmp(b.id.as_str())));
    let items: Vec<Value> = tenants
        .iter()
        .map(|t| {
            json!({"id": t.id.as_str(), "name": t.name, "enabled": t.enabled, "active_tasks": t.active,
                   "max_active_tasks": t.quotas.max_active_tasks})
        })
        .collect();
    Ok(Json(json!({"tenants": items})))
}

pub async fn get_one<S: TenantStore + FlowPolicies + EventSettings, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &headers)?;
    Ok(Json(tenant_view(&app.store, &tenant_id(&id)?).await?))
}

pub async fn update<S: TenantStore + FlowPolicies + EventSettings, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let dto = parse(&body)?;
    let id = tenant_id(&id)?;
    if dto.name.is_some() {
        return Err(FieldError::new("unknown_field", "name", "a tenant's name does not change").into());
    }
    let current = app.store.get_tenant(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {id}")))?;
    let q = (dto.max_active_tasks.is_some() || dto.create_rate_per_second.is_some())
        .then(|| quotas(&dto, current.quotas))
        .transpose()?;
    let current_limits = app.store.get_policy(&FlowKey::tenant(&id), &PolicyScope::Admin).await?;
    let limits = delivery_limits(&dto, current_limits.as_ref())?;
    let events = dto.events.as_deref().map(event_types).transpose()?;
    if !app.store.update_tenant(&id, dto.enabled, q).await? {
        return Err(ApiError::NotFound(format!("no tenant {id}")));
    }
    app.auth_cache.forget();
    apply_limits(&app.store, &id, limits).await?;
    if let Some(types) = events {
        app.store.set_event_types(&id, &types).await?;
    }
    tracing::info!(tenant = %id, enabled = ?dto.enabled, "tenant updated");
    Ok(Json(tenant_view(&app.store, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDto {
    /// How long the key works: `"90d"`, `"12h"`, or seconds.
    expires_in: Option<Value>,
    /// When the key stops working (RFC 3339).
    expires_at: Option<String>,
}

/// When a new key expires: one year unless the body says otherwise, never
/// more than five years, always in the future.
fn key_expiry(body: &[u8], now: EpochMillis) -> Result<EpochMillis, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let dto: KeyDto = decode_document(body)?;
    let at = match (&dto.expires_in, &dto.expires_at) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new("invalid", "expires_at", "give expires_in or expires_at, not both").into());
        }
        (Some(d), None) => {
            let d =
                parse_duration(d).map_err(|e| FieldError::new("invalid", "expires_in", format!("expires_in {e}")))?;
            let ms = EpochMillis::try_from(d.as_millis()).unwrap_or(EpochMillis::MAX);
            if ms < 1_000 {
                return Err(FieldError::new("invalid", "expires_in", "expires_in must be at least 1s").into());
            }
            now.saturating_add(ms)
        }
        (None, Some(t)) => {
            let at = parse_time("expires_at", t)?;
            if at <= now {
                return Err(FieldError::new("invalid", "expires_at", "expires_at must be in the future").into());
            }
            at
        }
        (None, None) => now + DEFAULT_KEY_LIFETIME_MS,
    };
    if at - now > MAX_KEY_LIFETIME_MS {
        let field = if dto.expires_in.is_some() { "expires_in" } else { "expires_at" };
        return Err(FieldError::new("invalid", field, format!("{field} may be at most 5 years away")).into());
    }
    Ok(at)
}

pub async fn create_key<S: TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::admin(&app, &headers)?;
    let id = tenant_id(&id)?;
    let now = now_millis();
    let expires_at = key_expiry(&body, now)?;
    app.store.get_tenant(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant {id}")))?;
    let key = NewApiKey::generate();
    app.store.put_key(&id, &key.key_id, &key.hash, now, expires_at).await?;
    tracing::info!(tenant = %id, key_id = %key.key_id, "API key created");
    audit::note_resource(format!("tenants/{id}/keys/{}", key.key_id));
    let view = json!({"id": key.key_id, "key": key.secret, "expires_at": format_millis(expires_at)});
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Admin: every tenant's unrevoked keys that expire within `within` (default
/// 30 days), soonest first, expired ones included.
pub async fn expiring_keys<S: TenantStore, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let mut within_ms = 30 * 86_400_000;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "within" => {
                let d = parse_duration(&Value::String(v.into_owned()))
                    .map_err(|e| FieldError::new("invalid", "within", format!("within {e}")))?;
                within_ms = EpochMillis::try_from(d.as_millis()).unwrap_or(EpochMillis::MAX);
            }
            other => {
                return Err(
                    FieldError::new("unknown_field", other, format!("unknown query parameter `{other}`")).into()
                );
            }
        }
    }
    let until = now_millis().saturating_add(within_ms);
    let mut keys = Vec::new();
    for t in app.store.list_tenants().await? {
        for k in app.store.list_keys(&t.id).await? {
            if k.revoked_at.is_none() && k.expires_at.is_some_and(|at| at <= until) {
                keys.push((t.id.clone(), k));
            }
        }
    }
    keys.sort_by_key(|(_, k)| k.expires_at);
    let keys: Vec<Value> = keys
        .iter()
        .map(|(t, k)| {
            let mut v = views::key(k);
            v["tenant"] = json!(t);
            v
        })
        .collect();
    Ok(Json(json!({"keys": keys})))
}

pub async fn revoke_key<S: TenantStore + FlowPolicies + EventSettings, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let id = tenant_id(&id)?;
    let Ok(key_id) = KeyId::parse(&key_id) else {
        return Err(ApiError::NotFound(format!("tenant {id} has no key {key_id}")));
    };
    if !app.store.revoke_key(&id, &key_id, now_millis()).await? {
        return Err(ApiError::NotFound(format!("tenant {id} has no key {key_id}")));
    }
    app.auth_cache.forget();
    tracing::info!(tenant = %id, key_id = %key_id, "API key revoked");
    Ok(Json(tenant_view(&app.store, &id).await?))
}
