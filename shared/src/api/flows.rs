//! Flow policies: `GET /v1/flows`, `GET|PUT|DELETE /v1/flows/{key}`.
//!
//! Both the admin and tenants use these routes. The `{key}` segment is
//! `host:port` (a host key) or a bare name (a named key of the caller's
//! tenant; the admin names the tenant with `?tenant=`). On a host key the
//! admin sets the policy every tenant shares, and a tenant only its own
//! share, never above the admin's limits. Enforcement takes the lower of
//! both on every reservation, so an admin lowering a host's limit below
//! existing shares is allowed: the shares simply stop mattering.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::auth::{self, Caller};
use super::{ApiError, AppState};
use crate::domain::{
    BreakerSettings, EpochMillis, FieldError, FlowEvent, FlowKey, FlowPolicy, FlowShared, PolicyScope, Rate, TenantId,
    decode_document, format_millis, humanize, now_millis,
};
use crate::ports::{FlowPolicies, TenantStore};

/// Transitions shown in a key's view.
const HISTORY: usize = 20;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

/// The query parameters of a flow route; anything else is a 400.
fn query(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(
                FieldError::new("unknown_field", k.clone(), format!("`{k}` is not a query parameter here")).into()
            );
        }
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The tenant `?tenant=` names: only the admin may name one (a tenant is
/// always itself), and it must exist.
async fn named_tenant<S: TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    caller: &Caller,
    pairs: &[(String, String)],
) -> Result<Option<TenantId>, ApiError> {
    let Some(raw) = param(pairs, "tenant") else {
        return Ok(match caller {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t.id.clone()),
        });
    };
    if matches!(caller, Caller::Tenant(_)) {
        return Err(ApiError::Forbidden("only the admin names a tenant with ?tenant="));
    }
    let id = TenantId::parse(raw)
        .map_err(|_| FieldError::new("invalid", "tenant", format!("tenant `{raw}` is not a tenant id (tnt_…)")))?;
    if app.store.get_tenant(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no tenant {id}")));
    }
    super::audit::note_tenant(&id);
    Ok(Some(id))
}

/// What one request on `/v1/flows/{key}` is about.
struct Target {
    caller: Caller,
    key: FlowKey,
    scope: PolicyScope,
}

impl Target {
    /// A tenant's share of a host key: only rate, burst and parallelism.
    fn is_share(&self) -> bool {
        self.key.is_host() && self.scope != PolicyScope::Admin
    }
}

async fn target<S: TenantStore, Q, C>(
    app: &AppState<S, Q, C>,
    headers: &HeaderMap,
    segment: &str,
    raw: Option<&str>,
) -> Result<Target, ApiError> {
    let caller = auth::caller(app, headers).await?;
    let pairs = query(raw, &["tenant"])?;
    let tenant = named_tenant(app, &caller, &pairs).await?;
    let key = FlowKey::from_path(segment, tenant.as_ref())?;
    let scope = PolicyScope::for_key(&key, tenant.as_ref());
    Ok(Target { caller, key, scope })
}

pub async fn get_one<S: TenantStore + FlowPolicies, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let t = target(&app, &headers, &key, raw.as_deref()).await?;
    Ok(Json(view(&app, &t).await?))
}

pub async fn put<S: TenantStore + FlowPolicies, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = target(&app, &headers, &key, raw.as_deref()).await?;
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    let doc: Value = decode_document(body)?;
    let mut policy = FlowPolicy::parse_input(&doc, t.is_share())?;
    if t.is_share() && matches!(t.caller, Caller::Tenant(_)) {
        let admin = app.store.get_policy(&t.key, &PolicyScope::Admin).await?;
        policy.check_share(admin.as_ref())?;
    }
    policy.updated_at = now_millis();
    policy.updated_by = t.caller.id();
    let created = app.store.put_policy(&t.key, &t.scope, &policy).await?;
    tracing::info!(key = %t.key, scope = t.scope.as_str(), by = %policy.updated_by, created, "flow policy set");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&app, &t).await?)).into_response())
}

pub async fn delete<S: TenantStore + FlowPolicies, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let t = target(&app, &headers, &key, raw.as_deref()).await?;
    if !app.store.delete_policy(&t.key, &t.scope).await? {
        return Err(ApiError::NotFound(format!("no policy on {} for this caller", t.key.display())));
    }
    tracing::info!(key = %t.key, scope = t.scope.as_str(), by = %t.caller.id(), "flow policy deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list<S: TenantStore + FlowPolicies, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::caller(&app, &headers).await?;
    let pairs = query(raw.as_deref(), &["tenant", "limit", "cursor"])?;
    let tenant = named_tenant(&app, &caller, &pairs).await?;
    let limit = match param(&pairs, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v.parse::<usize>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            FieldError::new("invalid", "limit", format!("limit must be an integer from 1 to {MAX_LIMIT}"))
        })?,
    };
    let after = param(&pairs, "cursor").map(decode_cursor).transpose()?;
    let snapshot = app.store.flow_snapshot().await?;
    let mut visible: Vec<_> = snapshot
        .policies
        .iter()
        .filter(|((_, scope), _)| tenant.as_ref().is_none_or(|t| *scope == PolicyScope::Tenant(t.clone())))
        .map(|((key, scope), p)| ((key.as_str().to_owned(), scope.as_str().to_owned()), key, scope, p))
        .filter(|(sort, ..)| after.as_ref().is_none_or(|a| sort > a))
        .collect();
    visible.sort_by(|a, b| a.0.cmp(&b.0));
    let more = visible.len() > limit;
    visible.truncate(limit);
    let cursor = if more { visible.last().map(|(sort, ..)| encode_cursor(sort)) } else { None };
    let now = now_millis();
    let items: Vec<Value> = visible
        .iter()
        .map(|(_, key, scope, p)| {
            let hold = snapshot.holds.get(*key).filter(|h| h.until > now);
            json!({
                "key": key.display(),
                "kind": kind(key),
                "tenant": scope_tenant(scope),
                "policy": policy_view(p),
                "hold": hold.map(|h| json!({"kind": h.kind, "until": format_millis(h.until)})),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": cursor})))
}

fn encode_cursor((key, scope): &(String, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{key}\n{scope}"))
}

fn decode_cursor(c: &str) -> Result<(String, String), ApiError> {
    let bad = || FieldError::new("invalid", "cursor", "cursor must be a cursor returned by the previous page");
    if c.len() > 512 {
        return Err(bad().into());
    }
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (key, scope) = text.split_once('\n').ok_or_else(bad)?;
    if FlowKey::parse(key).is_none() || PolicyScope::parse(scope).is_none() {
        return Err(bad().into());
    }
    Ok((key.to_owned(), scope.to_owned()))
}

fn kind(key: &FlowKey) -> &'static str {
    if key.is_host() {
        "host"
    } else if key.is_tenant() {
        "tenant"
    } else {
        "named"
    }
}

fn scope_tenant(scope: &PolicyScope) -> Option<&str> {
    match scope {
        PolicyScope::Admin => None,
        PolicyScope::Tenant(t) => Some(t.as_str()),
    }
}

fn duration(ms: u64) -> String {
    humanize(std::time::Duration::from_millis(ms))
}

/// Breaker settings as the input takes them (durations as `30s`, `5m`).
fn breaker_view(b: &BreakerSettings) -> Value {
    json!({
        "enabled": b.enabled,
        "min_requests": b.min_requests,
        "failure_percent": b.failure_percent,
        "window": duration(b.window_ms),
        "open_min": duration(b.open_min_ms),
        "open_max": duration(b.open_max_ms),
        "probes": b.probes,
    })
}

fn policy_view(p: &FlowPolicy) -> Value {
    json!({
        "rate": p.rate.map(|r| r.to_string()),
        "burst": p.burst,
        "parallelism": p.parallelism,
        "breaker": p.breaker.as_ref().map(breaker_view),
        "adaptive": p.adaptive,
        "updated_at": format_millis(p.updated_at),
        "updated_by": p.updated_by,
    })
}

/// The lower of two optional limits (either alone is the limit).
fn lower<T>(a: Option<T>, b: Option<T>, le: impl Fn(&T, &T) -> bool) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if le(&a, &b) { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The limits deliveries to the key meet for the target's scope: on a host
/// key the lower of the admin's and the tenant's share.
fn effective(policies: &[&FlowPolicy], factor: f64) -> Value {
    let rate = policies
        .iter()
        .fold(None, |acc: Option<Rate>, p| lower(acc, p.rate, |a: &Rate, b: &Rate| a.per_second() <= b.per_second()));
    let burst = rate.map(|_| policies.iter().filter(|p| p.rate.is_some()).map(|p| p.burst()).min().unwrap_or(1));
    let parallelism = policies.iter().filter_map(|p| p.parallelism).min();
    json!({
        "rate": rate.map(|r| r.to_string()),
        "burst": burst,
        "parallelism": parallelism,
        "factor": factor,
    })
}

fn future(at: Option<EpochMillis>, now: EpochMillis) -> Option<String> {
    at.filter(|a| *a > now).map(format_millis)
}

fn state_view(s: &FlowShared, now: EpochMillis) -> Value {
    json!({
        "breaker": {
            "state": s.breaker.as_str(),
            "since": s.breaker_since.map(format_millis),
            "until": s.breaker_until.map(format_millis),
            "trips": s.trips,
            "window": {
                "start": s.window_start.map(format_millis),
                "requests": s.window_requests,
                "failures": s.window_failures,
            },
        },
        "paused_until": future(s.paused_until, now),
        "in_flight": s.in_flight(now),
        "next_slot_at": future(s.next_us.map(|us| us.div_euclid(1_000)), now),
    })
}

fn event_view(e: &FlowEvent) -> Value {
    json!({
        "at": format_millis(e.at),
        "to": e.to,
        "why": e.why,
        "until": e.until.map(format_millis),
    })
}

/// The key as the target's caller sees it: its policy in that scope, the
/// limits that apply, the breaker settings and the shared state.
async fn view<S: FlowPolicies, Q, C>(app: &AppState<S, Q, C>, t: &Target) -> Result<Value, ApiError> {
    let policy = app.store.get_policy(&t.key, &t.scope).await?;
    let admin = if t.is_share() { app.store.get_policy(&t.key, &PolicyScope::Admin).await? } else { None };
    let (shared, history) = app.store.flow_state(&t.key, HISTORY).await?;
    let shared = shared.unwrap_or_else(FlowShared::new);
    let now = now_millis();
    let governing: Vec<&FlowPolicy> = policy.iter().chain(admin.iter()).collect();
    // The breaker is the key's: the admin's on a host key, the owner's on a named key.
    let breaker_owner = if t.is_share() { admin.as_ref() } else { policy.as_ref() };
    let breaker = breaker_owner.and_then(|p| p.breaker.clone()).unwrap_or_else(|| app.settings.flow_breaker.clone());
    let mut v = json!({
        "key": t.key.display(),
        "kind": kind(&t.key),
        "tenant": scope_tenant(&t.scope),
        "policy": policy.as_ref().map(policy_view),
        "effective": effective(&governing, shared.factor),
        "breaker_settings": breaker_view(&breaker),
        "state": state_view(&shared, now),
        "history": history.iter().map(event_view).collect::<Vec<_>>(),
    });
    if t.is_share() {
        v["admin_policy"] = admin.as_ref().map_or(Value::Null, policy_view);
    }
    Ok(v)
}

#[cfg(test)]
#[path = "flows_tests.rs"]
mod tests;
