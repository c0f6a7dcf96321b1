//! The audit log's entries: who did what, when, to which resource, from
//! where, and how it ended. An entry never holds a secret: the actor is the
//! admin or a key *id* (the public part of `ck_<key id>_<secret>`), never key
//! material or an `Authorization` value.

use super::{EpochMillis, TenantId};

/// Action names, as stored and filtered on. Stable: tools filter on them.
pub mod actions {
    pub const TENANT_CREATE: &str = "tenant.create";
    pub const TENANT_UPDATE: &str = "tenant.update";
    /// Rotation is a `key.create` followed by a `key.revoke` of the old key.
    pub const KEY_CREATE: &str = "key.create";
    pub const KEY_REVOKE: &str = "key.revoke";
    /// A signing secret created (`POST /v1/secrets`).
    pub const SECRET_CREATE: &str = "secret.create";
    /// Signing secrets rotated (`POST /v1/secrets/rotate`).
    pub const SECRET_ROTATE: &str = "secret.rotate";
    /// A signing secret revoked (`DELETE /v1/secrets/{id}`).
    pub const SECRET_REVOKE: &str = "secret.revoke";
    pub const FLOW_PUT: &str = "flow.put";
    pub const FLOW_DELETE: &str = "flow.delete";
    pub const TASK_CANCEL: &str = "task.cancel";
    pub const TASK_PATCH: &str = "task.patch";
    pub const TASK_RETRY: &str = "task.retry";
    pub const TASK_PAUSE: &str = "task.pause";
    pub const TASK_RESUME: &str = "task.resume";
    pub const TASKS_PURGE: &str = "tasks.purge";
    pub const REPLAY_START: &str = "replay.start";
    pub const REPLAY_CANCEL: &str = "replay.cancel";
    pub const REPLAY_RESUME: &str = "replay.resume";
    /// Failed authentications: one entry per source address and minute, counted.
    pub const AUTH_FAILED: &str = "auth.failed";

    /// Every action name.
    pub const ALL: &[&str] = &[
        TENANT_CREATE,
        TENANT_UPDATE,
        KEY_CREATE,
        KEY_REVOKE,
        SECRET_CREATE,
        SECRET_ROTATE,
        SECRET_REVOKE,
        FLOW_PUT,
        FLOW_DELETE,
        TASK_CANCEL,
        TASK_PATCH,
        TASK_RETRY,
        TASK_PAUSE,
        TASK_RESUME,
        TASKS_PURGE,
        REPLAY_START,
        REPLAY_CANCEL,
        REPLAY_RESUME,
        AUTH_FAILED,
    ];
}

/// Who acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The holder of the admin key.
    Admin,
    /// A tenant API key, by its id.
    Key(String),
    /// A JWT the HTTP API's authorizer accepted, by the tenant it names.
    Jwt(String),
    /// No valid credential: a failed authentication (`claimed`: the key id
    /// the bearer token claims, when it has the shape of a key; unverified).
    Anonymous { claimed: Option<String> },
}

impl Actor {
    /// The stored text: `admin`, `key:<id>`, `jwt:<tenant>` or `anonymous` (`anonymous:<claimed id>`).
    pub fn as_text(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::Key(id) => format!("key:{id}"),
            Self::Jwt(tenant) => format!("jwt:{tenant}"),
            Self::Anonymous { claimed: None } => "anonymous".to_owned(),
            Self::Anonymous { claimed: Some(id) } => format!("anonymous:{id}"),
        }
    }

    /// The actor a bearer token names, from its shape alone (the key id is
    /// the public part of `ck_<key id>_<secret>`): verification is the
    /// handler's job, this only never copies the secret part.
    pub fn from_token(token: &str, is_admin: bool) -> Self {
        if is_admin {
            return Self::Admin;
        }
        Self::Key(key_id_of(token).unwrap_or("unknown").to_owned())
    }
}

/// The key id of a `ck_<key id>_<secret>` token, if it has that shape.
pub fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("ck_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = !id.is_empty() && id.len() <= 64 && !secret.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(id)
}

/// How an action ended, from its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    /// 2xx.
    Ok,
    /// 401 or 403: not allowed.
    Denied,
    /// Any other 4xx: refused as asked (invalid, not found, conflict, quota).
    Rejected,
    /// 5xx: failed on our side; the action may or may not have happened.
    Error,
}

impl AuditOutcome {
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            401 | 403 => Self::Denied,
            400..=499 => Self::Rejected,
            _ => Self::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Rejected => "rejected",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ok, Self::Denied, Self::Rejected, Self::Error].into_iter().find(|o| o.as_str() == s)
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: EpochMillis,
    /// `admin`, `key:<id>`, `anonymous[:<claimed id>]` (see [`Actor::as_text`]).
    pub actor: String,
    /// The tenant the entry belongs to (its own actions, and the admin's on
    /// it); `None` for service-wide ones (admin flow policies, failed logins).
    pub tenant: Option<TenantId>,
    pub action: String,
    /// What was acted on: `tsk_…`, `tnt_…`, `tnt_…/keys/<id>`, `flow:<key>`, `rpl_…`, a route.
    pub resource: String,
    pub source_ip: Option<String>,
    pub outcome: AuditOutcome,
    /// The HTTP status answered.
    pub status: u16,
    /// How many events the entry stands for (failed authentications of one
    /// address in one minute are counted in one entry; 1 otherwise).
    pub count: u64,
}

/// What a listing of the audit log asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// `None`: every tenant's entries and the service-wide ones (admin only).
    pub tenant: Option<TenantId>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub since: Option<EpochMillis>,
    pub until: Option<EpochMillis>,
}

impl AuditQuery {
    /// Whether `e` passes the equality filters (the time range is the store's).
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && self.action.as_ref().is_none_or(|a| *a == e.action)
            && self.resource.as_ref().is_none_or(|r| *r == e.resource)
            && self.tenant.as_ref().is_none_or(|t| e.tenant.as_ref() == Some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_names_the_key_id_and_never_the_secret() {
        let actor = Actor::from_token("ck_abc123_deadbeefdeadbeef", false);
        assert_eq!(actor.as_text(), "key:abc123");
        assert!(!actor.as_text().contains("deadbeef"));
        assert_eq!(Actor::from_token("whatever", true).as_text(), "admin");
        assert_eq!(key_id_of("Bearer-ish"), None);
        assert_eq!(key_id_of("ck_a-b_c"), None, "only alphanumeric ids are copied");
    }

    #[test]
    fn outcomes_follow_the_status_class() {
        assert_eq!(AuditOutcome::of_status(201), AuditOutcome::Ok);
        assert_eq!(AuditOutcome::of_status(403), AuditOutcome::Denied);
        assert_eq!(AuditOutcome::of_status(409), AuditOutcome::Rejected);
        assert_eq!(AuditOutcome::of_status(503), AuditOutcome::Error);
        assert_eq!(AuditOutcome::parse("denied"), Some(AuditOutcome::Denied));
    }
}
