//! The audit log's API side: a middleware that records every credential,
//! policy and manual operation with its outcome, failed authentications
//! (one counted entry per source address and minute), the public
//! [`record`] helper for handlers that audit by hand, and `GET /v1/audit`.
//!
//! Who is the bearer token's key id (`ck_<key id>_<secret>`: the public part)
//! or `admin`; never key material or an `Authorization` value. Which tenant
//! an entry belongs to is what the handler's authentication resolved (or the
//! tenant the admin acted on), passed up through a task-local note, so the
//! middleware costs no extra read.
//!
//! Write policy: act, then write the entry before answering. The actions are
//! multi-step and mostly not transactional, so the entry is written once the
//! outcome is known; if that write fails the answer still goes out (the
//! action has happened: failing it would invite a retry of a done action)
//! and the whole entry is logged at `error` level (`audit entry not stored`)
//! so the security log survives in the function's logs.

use std::cell::RefCell;
use std::sync::Arc;

use axum::Json;
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::{self, Caller};
use super::{ApiError, AppState};
use crate::domain::{
    Actor, AuditEntry, AuditOutcome, AuditQuery, FieldError, TenantId, audit_actions as act, format_millis, key_id_of,
    now_millis, parse_time,
};
use crate::ports::{AuditLog, TenantStore};

/// The caller's source address, as the front (API Gateway's
/// `requestContext.http.sourceIp`) saw it: a request extension the
/// function's entrypoint sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIp(pub String);

/// What a handler learned that the middleware cannot see: the tenant the
/// entry belongs to and, for creations, the new resource.
#[derive(Default)]
struct Note {
    tenant: Option<TenantId>,
    resource: Option<String>,
}

tokio::task_local! {
    static NOTE: RefCell<Note>;
}

/// Says which tenant the current request's entry belongs to (no-op outside
/// an audited request).
pub(super) fn note_tenant(t: &TenantId) {
    let _ = NOTE.try_with(|n| n.borrow_mut().tenant = Some(t.clone()));
}

/// Names the resource a creation made (`tenants/tnt_…`, `replays/rpl_…`).
pub(super) fn note_resource(r: impl Into<String>) {
    let r = r.into();
    let _ = NOTE.try_with(|n| n.borrow_mut().resource = Some(r));
}

/// The audited action of a route, by method and route template.
pub fn action_of(method: &Method, route: &str) -> Option<&'static str> {
    Some(match (method.as_str(), route) {
        ("POST", "/v1/tenants") => act::TENANT_CREATE,
        ("PATCH", "/v1/tenants/{id}") => act::TENANT_UPDATE,
        ("POST", "/v1/tenants/{id}/keys") => act::KEY_CREATE,
        ("DELETE", "/v1/tenants/{id}/keys/{key_id}") => act::KEY_REVOKE,
        ("POST", "/v1/secrets") => act::SECRET_CREATE,
        ("POST", "/v1/secrets/rotate") => act::SECRET_ROTATE,
        ("DELETE", "/v1/secrets/{id}") => act::SECRET_REVOKE,
        ("PUT", "/v1/flows/{key}") => act::FLOW_PUT,
        ("DELETE", "/v1/flows/{key}") => act::FLOW_DELETE,
        ("DELETE", "/v1/tasks/{id}" | "/v1/tasks/by-business-id/{business_id}") => act::TASK_CANCEL,
        ("PATCH", "/v1/tasks/{id}") => act::TASK_PATCH,
        ("POST", "/v1/tasks/{id}/retry") => act::TASK_RETRY,
        ("POST", "/v1/tasks/{id}/pause") => act::TASK_PAUSE,
        ("POST", "/v1/tasks/{id}/resume") => act::TASK_RESUME,
        ("POST", "/v1/tasks/purge") => act::TASKS_PURGE,
        ("POST", "/v1/replays") => act::REPLAY_START,
        ("DELETE", "/v1/replays/{id}") => act::REPLAY_CANCEL,
        ("POST", "/v1/replays/{id}/resume") => act::REPLAY_RESUME,
        _ => return None,
    })
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Records one entry now (for handlers that audit what the middleware
/// cannot see). Never fails the caller: a failed write is logged with the
/// whole entry.
pub async fn record<S: AuditLog, Q, C>(
    app: &AppState<S, Q, C>,
    actor: &Actor,
    tenant: Option<&TenantId>,
    action: &str,
    resource: &str,
    status: u16,
    source_ip: Option<&str>,
) {
    let entry = AuditEntry {
        at: now_millis(),
        actor: actor.as_text(),
        tenant: tenant.cloned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        source_ip: source_ip.map(str::to_owned),
        outcome: AuditOutcome::of_status(status),
        status,
        count: 1,
    };
    store(&app.store, &entry).await;
}

async fn store<S: AuditLog>(log: &S, e: &AuditEntry) {
    let res = if e.action == act::AUTH_FAILED { log.count_auth_failure(e).await } else { log.append_audit(e).await };
    if let Err(err) = res {
        tracing::error!(
            error = %err,
            actor = %e.actor,
            tenant = ?e.tenant.as_ref().map(|t| t.as_str()),
            action = %e.action,
            resource = %e.resource,
            source_ip = ?e.source_ip,
            status = e.status,
            "audit entry not stored"
        );
    }
}

/// The middleware: runs the handler with a fresh [`Note`], then writes the
/// entry of an audited route (any outcome) or of a failed authentication.
pub(super) async fn track<S: AuditLog, Q: Send + Sync + 'static, C: Send + Sync + 'static>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let source_ip = req.extensions().get::<SourceIp>().map(|s| s.0.clone());
    let token = bearer_token(req.headers()).map(str::to_owned);
    let jwt = req.headers().get(super::auth::JWT_TENANT_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (resp, note) = NOTE
        .scope(RefCell::new(Note::default()), async move {
            let resp = next.run(req).await;
            (resp, NOTE.with(|n| std::mem::take(&mut *n.borrow_mut())))
        })
        .await;
    let status = resp.status().as_u16();
    let action =
        if status == 401 { Some(act::AUTH_FAILED) } else { route.as_deref().and_then(|r| action_of(&method, r)) };
    let Some(action) = action else { return resp };
    let is_admin = token.as_deref().is_some_and(|t| app.settings.admin_key.as_ref().is_some_and(|a| a.matches(t)));
    let actor = match (action, token.as_deref()) {
        (act::AUTH_FAILED, t) => Actor::Anonymous { claimed: t.and_then(key_id_of).map(str::to_owned) },
        (_, _) if jwt.is_some() => Actor::Jwt(jwt.unwrap_or_default()),
        (_, Some(t)) => Actor::from_token(t, is_admin),
        (_, None) => Actor::Anonymous { claimed: None },
    };
    let resource = note.resource.unwrap_or_else(|| path.strip_prefix("/v1/").unwrap_or(&path).to_owned());
    let entry = AuditEntry {
        at: now_millis(),
        actor: actor.as_text(),
        tenant: note.tenant,
        action: action.to_owned(),
        resource,
        source_ip,
        outcome: AuditOutcome::of_status(status),
        status,
        count: 1,
    };
    store(&app.store, &entry).await;
    resp
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

fn query(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    const ALLOWED: &[&str] = &["actor", "action", "resource", "since", "until", "limit", "cursor", "tenant"];
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
    for (k, _) in &pairs {
        if !ALLOWED.contains(&k.as_str()) {
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

fn text_filter(pairs: &[(String, String)], name: &'static str) -> Result<Option<String>, ApiError> {
    match param(pairs, name) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > 300 => {
            Err(FieldError::new("invalid", name, format!("{name} must be 1 to 300 characters")).into())
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// One entry as the API shows it.
pub fn entry_view(e: &AuditEntry) -> Value {
    json!({
        "at": format_millis(e.at),
        "actor": e.actor,
        "tenant": e.tenant,
        "action": e.action,
        "resource": e.resource,
        "source_ip": e.source_ip,
        "outcome": e.outcome.as_str(),
        "status": e.status,
        "count": e.count,
    })
}

/// `GET /v1/audit`: a tenant key reads its tenant's entries, the admin key
/// everyone's (or one tenant's with `?tenant=`), newest first.
pub async fn list<S: TenantStore + AuditLog, Q, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let caller = auth::caller(&app, &headers).await?;
    let pairs = query(raw.as_deref())?;
    let tenant = match (param(&pairs, "tenant"), &caller) {
        (None, Caller::Admin) => None,
        (None, Caller::Tenant(t)) => Some(t.id.clone()),
        (Some(_), Caller::Tenant(_)) => return Err(ApiError::Forbidden("only the admin names a tenant with ?tenant=")),
        (Some(raw), Caller::Admin) => {
            Some(TenantId::parse(raw).map_err(|_| {
                FieldError::new("invalid", "tenant", format!("tenant `{raw}` is not a tenant id (tnt_…)"))
            })?)
        }
    };
    let time = |name: &'static str| param(&pairs, name).map(|v| parse_time(name, v)).transpose();
    let (since, until) = (time("since")?, time("until")?);
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(FieldError::new("invalid", "until", "until must not be before since").into());
    }
    let limit = match param(&pairs, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v.parse::<usize>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            FieldError::new("invalid", "limit", format!("limit must be an integer from 1 to {MAX_LIMIT}"))
        })?,
    };
    let cursor = text_filter(&pairs, "cursor")?;
    let q = AuditQuery {
        tenant,
        actor: text_filter(&pairs, "actor")?,
        action: text_filter(&pairs, "action")?,
        resource: text_filter(&pairs, "resource")?,
        since,
        until,
    };
    let page = app.store.audit_page(&q, limit, cursor.as_deref()).await.map_err(ApiError::store_on("cursor"))?;
    let entries: Vec<Value> = page.items.iter().map(entry_view).collect();
    Ok(Json(json!({"entries": entries, "next_cursor": page.cursor})))
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
