//! Flow policies: the rate, burst, parallelism and breaker settings of a
//! key, who they apply to, and how `PUT /v1/flows/{key}`'s body is read.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::super::{EpochMillis, FieldError, TenantId, parse_duration};
use super::FlowKey;

/// Requests per period: `"10/s"`, `"600/m"`, `"1000/h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
}

impl Rate {
    pub const MAX_PER_SECOND: f64 = 1_000.0;

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("rate `{s}` must be requests per period such as \"10/s\", \"600/m\" or \"1000/h\"");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let period_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 || count > 10_000 {
            return Err(format!("rate `{s}`: the count must be 1 to 10000"));
        }
        let rate = Self { count, period_ms };
        if rate.per_second() > Self::MAX_PER_SECOND {
            return Err(format!("rate `{s}` is over {} requests per second", Self::MAX_PER_SECOND));
        }
        Ok(rate)
    }

    pub fn per_second(&self) -> f64 {
        f64::from(self.count) * 1_000.0 / self.period_ms as f64
    }

    /// The spacing of requests at this rate scaled by `factor` (0 < f ≤ 1), in µs.
    pub fn interval_us(&self, factor: f64) -> i64 {
        let f = factor.clamp(MIN_FACTOR, 1.0);
        ((self.period_ms as f64 * 1_000.0) / (f64::from(self.count) * f)).ceil() as i64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_ms {
            1_000 => "s",
            60_000 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

/// The adaptive factor never goes below this (1/16 of the policy's rate).
pub const MIN_FACTOR: f64 = 1.0 / 16.0;
/// A clean stretch this long restores one step of the adaptive factor.
pub const RESTORE_AFTER_MS: i64 = 60_000;
/// Two halvings are at least this far apart.
pub const HALVE_SPACING_MS: i64 = 5_000;
/// Parallelism ceiling per key (one lease attribute per slot on one item).
pub const MAX_PARALLELISM: u32 = 32;

/// Circuit breaker settings of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerSettings {
    pub enabled: bool,
    /// Requests in the window before the breaker may open.
    pub min_requests: u32,
    /// Failure share (percent) of the window's requests that opens it.
    pub failure_percent: u8,
    pub window_ms: u64,
    /// How long it stays open on the first trip; doubles on each repeated trip up to `open_max_ms`.
    pub open_min_ms: u64,
    pub open_max_ms: u64,
    /// Requests one sender sends while half-open before judging.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_requests: 10,
            failure_percent: 70,
            window_ms: 300_000,
            open_min_ms: 30_000,
            open_max_ms: 600_000,
            probes: 3,
        }
    }
}

impl BreakerSettings {
    /// How long the breaker stays open after its `trips`-th consecutive trip (0-based).
    pub fn open_for(&self, trips: u32) -> i64 {
        let ms = self.open_min_ms.saturating_mul(1u64 << trips.min(20));
        ms.min(self.open_max_ms) as i64
    }

    /// Whether a window with these counts opens the breaker.
    pub fn trips(&self, requests: u32, failures: u32) -> bool {
        self.enabled
            && requests >= self.min_requests
            && u64::from(failures) * 100 >= u64::from(self.failure_percent) * u64::from(requests)
    }

    /// The window a report at `now` belongs to (fixed windows).
    pub fn window_start(&self, now: EpochMillis) -> EpochMillis {
        let w = self.window_ms.max(1) as i64;
        now.div_euclid(w) * w
    }
}

/// A policy on one key (the key and its scope live outside: in the item's key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// `None`: the defaults (or, for a tenant's share of a host, the admin's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSettings>,
    #[serde(default = "yes")]
    pub adaptive: bool,
    #[serde(default)]
    pub updated_at: EpochMillis,
    /// `admin` or the tenant id that wrote it.
    #[serde(default)]
    pub updated_by: String,
}

fn yes() -> bool {
    true
}

/// Who a policy applies to: the admin's policy on a key, or one tenant's
/// (its named keys, or its share of a host key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyScope {
    Admin,
    Tenant(TenantId),
}

impl PolicyScope {
    /// The scope's part of the stored sort key.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Admin => "admin",
            Self::Tenant(t) => t.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s == "admin" { Some(Self::Admin) } else { TenantId::parse(s).ok().map(Self::Tenant) }
    }

    /// The scope a policy on `key` has when `tenant` (or the admin, `None`) sets it:
    /// a named key's policy is always its owner's.
    pub fn for_key(key: &FlowKey, tenant: Option<&TenantId>) -> Self {
        match (key.owner(), tenant) {
            (Some(owner), _) => Self::Tenant(owner),
            (None, Some(t)) => Self::Tenant(t.clone()),
            (None, None) => Self::Admin,
        }
    }
}

impl FlowPolicy {
    /// Whether the policy limits anything (a rate or a parallelism cap).
    pub fn limits(&self) -> bool {
        self.rate.is_some() || self.parallelism.is_some()
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(1).max(1)
    }

    /// Reads `PUT /v1/flows/{key}`'s body. `on_host_share`: a tenant setting
    /// its share of a host key (only `rate`, `burst`, `parallelism`).
    pub fn parse_input(doc: &Value, on_host_share: bool) -> Result<Self, FieldError> {
        let obj = doc
            .as_object()
            .ok_or_else(|| FieldError::new("invalid", FieldError::DOCUMENT, "body must be a JSON object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "rate" | "burst" | "parallelism" | "breaker" | "adaptive") {
                return Err(FieldError::new("unknown_field", k.clone(), format!("{k} is not a flow policy field")));
            }
            if on_host_share && matches!(k.as_str(), "breaker" | "adaptive") {
                return Err(FieldError::new(
                    "admin_only",
                    k.clone(),
                    format!("{k} on a host key is set by the admin; a tenant sets only rate, burst and parallelism"),
                ));
            }
        }
        let rate = match obj.get("rate") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Rate::parse(s).map_err(|m| FieldError::new("invalid", "rate", m))?),
            Some(_) => return Err(FieldError::new("invalid", "rate", "rate must be a string such as \"10/s\"")),
        };
        let burst = uint(obj, "burst", 1, 1_000)?;
        let parallelism = uint(obj, "parallelism", 1, u64::from(MAX_PARALLELISM))?.map(|p| p as u32);
        if burst.is_some() && rate.is_none() {
            return Err(FieldError::new("invalid", "burst", "burst needs a rate"));
        }
        let breaker = match obj.get("breaker") {
            None | Some(Value::Null) => None,
            Some(Value::Object(b)) => Some(parse_breaker(b)?),
            Some(_) => return Err(FieldError::new("invalid", "breaker", "breaker must be an object")),
        };
        let adaptive = match obj.get("adaptive") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(FieldError::new("invalid", "adaptive", "adaptive must be true or false")),
        };
        Ok(Self {
            rate,
            burst: burst.map(|b| b as u32),
            parallelism,
            breaker,
            adaptive,
            updated_at: 0,
            updated_by: String::new(),
        })
    }

    /// A tenant's share of a host may only lower the admin's limits: each of
    /// `rate`, `burst` and `parallelism` at most the admin's (rates compared per second).
    pub fn check_share(&self, admin: Option<&FlowPolicy>) -> Result<(), FieldError> {
        let Some(admin) = admin else { return Ok(()) };
        let above = |field: &str, mine: String, theirs: String| {
            FieldError::new(
                "above_admin_limit",
                field,
                format!("{field} {mine} is above the admin's limit of {theirs} for this host"),
            )
        };
        if let (Some(mine), Some(theirs)) = (self.rate, admin.rate)
            && mine.per_second() > theirs.per_second()
        {
            return Err(above("rate", mine.to_string(), theirs.to_string()));
        }
        if let (Some(mine), Some(theirs)) = (self.burst, admin.burst.or(admin.rate.map(|_| 1)))
            && mine > theirs
        {
            return Err(above("burst", mine.to_string(), theirs.to_string()));
        }
        if let (Some(mine), Some(theirs)) = (self.parallelism, admin.parallelism)
            && mine > theirs
        {
            return Err(above("parallelism", mine.to_string(), theirs.to_string()));
        }
        Ok(())
    }
}

fn uint(obj: &Map<String, Value>, field: &str, min: u64, max: u64) -> Result<Option<u64>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(FieldError::new("invalid", field, format!("{field} must be an integer from {min} to {max}"))),
        },
    }
}

fn duration_ms(obj: &Map<String, Value>, field: &str, min: u64, max: u64) -> Result<Option<u64>, FieldError> {
    let path = format!("breaker.{field}");
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let d = parse_duration(v).map_err(|m| FieldError::new("invalid", path.clone(), format!("{path}: {m}")))?;
            let ms = d.as_millis() as u64;
            if (min..=max).contains(&ms) {
                Ok(Some(ms))
            } else {
                Err(FieldError::new(
                    "invalid",
                    path.clone(),
                    format!("{path} must be from {} to {}", show(min), show(max)),
                ))
            }
        }
    }
}

fn show(ms: u64) -> String {
    humanize(Duration::from_millis(ms))
}

/// `90s`, `5m`, `1h` for a duration (the API's duration strings).
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn parse_breaker(b: &Map<String, Value>) -> Result<BreakerSettings, FieldError> {
    for k in b.keys() {
        if !matches!(
            k.as_str(),
            "enabled" | "min_requests" | "failure_percent" | "window" | "open_min" | "open_max" | "probes"
        ) {
            return Err(FieldError::new(
                "unknown_field",
                format!("breaker.{k}"),
                format!("breaker.{k} is not a breaker setting"),
            ));
        }
    }
    let mut s = BreakerSettings::default();
    match b.get("enabled") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(e)) => s.enabled = *e,
        Some(_) => return Err(FieldError::new("invalid", "breaker.enabled", "breaker.enabled must be true or false")),
    }
    if let Some(n) = uint(b, "min_requests", 1, 10_000).map_err(|e| e.prefixed("breaker"))? {
        s.min_requests = n as u32;
    }
    if let Some(n) = uint(b, "failure_percent", 1, 100).map_err(|e| e.prefixed("breaker"))? {
        s.failure_percent = n as u8;
    }
    if let Some(n) = uint(b, "probes", 1, 10).map_err(|e| e.prefixed("breaker"))? {
        s.probes = n as u32;
    }
    if let Some(ms) = duration_ms(b, "window", 10_000, 3_600_000)? {
        s.window_ms = ms;
    }
    if let Some(ms) = duration_ms(b, "open_min", 1_000, 600_000)? {
        s.open_min_ms = ms;
    }
    if let Some(ms) = duration_ms(b, "open_max", 1_000, 3_600_000)? {
        s.open_max_ms = ms;
    }
    if s.open_max_ms < s.open_min_ms {
        return Err(FieldError::new(
            "invalid",
            "breaker.open_max",
            "breaker.open_max must be at least breaker.open_min",
        ));
    }
    Ok(s)
}
