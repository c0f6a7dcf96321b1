//! Flow control: what a flow key is, what a policy on it says, the shared
//! state every sender reads and writes for it, and the pure arithmetic the
//! sender does on that state (rate slots, breaker judgement, back-off,
//! adaptive factor). No I/O: the store writes what these functions decide.
//!
//! A delivery is governed by its **host key** (`h:<host>:<port>`, global,
//! set by the admin) and, when the task names one, by its **named key**
//! (`n:<tenant>:<name>`, scoped to the tenant). The *primary* key (named if
//! set, else the host) owns the breaker and the Retry-After pause.

mod policy;
mod state;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FieldError, TenantId};

pub use policy::*;
pub use state::*;

/// A flow key as stored: `h:<host>:<port>` or `n:<tenant>:<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FlowKey(String);

impl FlowKey {
    /// The key of a target host (`host` as the URL parser normalised it).
    pub fn host(host_port: &str) -> Self {
        Self(format!("h:{host_port}"))
    }

    /// A key a tenant named on its tasks (`name` already validated).
    pub fn named(tenant: &TenantId, name: &str) -> Self {
        Self(format!("n:{tenant}:{name}"))
    }

    /// The key of all of a tenant's deliveries (its delivery limits, set by the admin).
    pub fn tenant(tenant: &TenantId) -> Self {
        Self(format!("t:{tenant}"))
    }

    /// Reads a key as the API's path names it: `host:port` is a host key, a
    /// bare name is the named key of `tenant` (which it then requires).
    pub fn from_path(segment: &str, tenant: Option<&TenantId>) -> Result<Self, FieldError> {
        if let Some((host, port)) = segment.rsplit_once(':') {
            let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
            if !port_ok || !host_ok {
                return Err(FieldError::new(
                    "invalid",
                    "key",
                    format!("key `{segment}` must be `host:port` (a host key) or a flow_key name"),
                ));
            }
            return Ok(Self::host(&segment.to_ascii_lowercase()));
        }
        check_name(segment).map_err(|m| FieldError::new("invalid", "key", m))?;
        let tenant = tenant.ok_or_else(|| {
            FieldError::new("required", "tenant", "a named flow key belongs to a tenant: pass ?tenant=")
        })?;
        Ok(Self::named(tenant, segment))
    }

    /// Parses a stored key.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = match s.split_once(':') {
            Some(("h", rest)) => rest.contains(':'),
            Some(("n", rest)) => {
                rest.split_once(':').is_some_and(|(t, n)| TenantId::parse(t).is_ok() && check_name(n).is_ok())
            }
            Some(("t", rest)) => TenantId::parse(rest).is_ok(),
            _ => false,
        };
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_host(&self) -> bool {
        self.0.starts_with("h:")
    }

    /// Whether this is a tenant's key (its limits across all its targets).
    pub fn is_tenant(&self) -> bool {
        self.0.starts_with("t:")
    }

    /// The key as the API shows it: `host:port`, the bare name or the tenant id.
    pub fn display(&self) -> &str {
        match self.0.split_once(':') {
            Some(("h" | "t", rest)) => rest,
            Some(("n", rest)) => rest.split_once(':').map_or(rest, |(_, n)| n),
            _ => &self.0,
        }
    }

    /// The tenant owning a named key.
    pub fn owner(&self) -> Option<TenantId> {
        let rest = self.0.strip_prefix("n:")?;
        TenantId::parse(rest.split_once(':')?.0).ok()
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FlowKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("`{s}` is not a flow key"))
    }
}

impl From<FlowKey> for String {
    fn from(k: FlowKey) -> String {
        k.0
    }
}

/// The rule for a task's `flow_key` name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(format!("flow_key `{name}` must match ^[a-z0-9][a-z0-9._-]{{0,63}}$")) }
}

/// Which keys govern one delivery: carried in its queue message, so the
/// sender gates it before claiming, with no read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowRef {
    /// `host:port` of the target URL.
    #[serde(rename = "h")]
    pub host: String,
    /// The task's `flow_key` name.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "t")]
    pub tenant: TenantId,
    /// The request's timeout (ms; 0: unknown), which bounds a lease or a probe.
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FlowRef {
    /// The keys of a request to `url` by `tenant`, with the task's `flow_key`.
    pub fn of(url: &url::Url, name: Option<&str>, tenant: &TenantId) -> Self {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        Self { host: format!("{host}:{port}"), name: name.map(str::to_owned), tenant: tenant.clone(), timeout_ms: 0 }
    }

    /// The same keys, with the request's timeout.
    pub fn with_timeout(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// The keys alone (what a batch's messages are grouped by).
    pub fn keys(&self) -> Self {
        Self { timeout_ms: 0, ..self.clone() }
    }

    pub fn host_key(&self) -> FlowKey {
        FlowKey::host(&self.host)
    }

    pub fn named_key(&self) -> Option<FlowKey> {
        self.name.as_deref().map(|n| FlowKey::named(&self.tenant, n))
    }

    /// The key of all the tenant's deliveries.
    pub fn tenant_key(&self) -> FlowKey {
        FlowKey::tenant(&self.tenant)
    }

    /// The key that owns the breaker and the pause.
    pub fn primary(&self) -> FlowKey {
        self.named_key().unwrap_or_else(|| self.host_key())
    }
}

#[cfg(test)]
mod tests;
