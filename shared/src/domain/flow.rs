//! Flow control: what a flow key is, what a policy on it says, the shared
//! state every sender reads and writes for it, and the pure arithmetic the
//! sender does on that state (rate slots, breaker judgement, back-off,
//! adaptive factor). No I/O: the store writes what these functions decide.
//!
//! A delivery is governed by its **host key** (`h:<host>:<port>`, global,
//! set by the admin) and, when the task names one, by its **named key**
//! (`n:<tenant>:<name>`, scoped to the tenant). The *primary* key (named if
//! set, else the host) owns the breaker and the Retry-After pause.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{EpochMillis, FieldError, TenantId, parse_duration};

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

    /// The key as the API shows it: `host:port` or the bare name.
    pub fn display(&self) -> &str {
        match self.0.split_once(':') {
            Some(("h", rest)) => rest,
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

    /// The key that owns the breaker and the pause.
    pub fn primary(&self) -> FlowKey {
        self.named_key().unwrap_or_else(|| self.host_key())
    }
}

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
    } else if s % 3_600 == 0 {
        format!("{}h", s / 3_600)
    } else if s % 60 == 0 {
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

/// The breaker's position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPosition {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerPosition {
    pub fn code(self) -> &'static str {
        match self {
            Self::Closed => "c",
            Self::Open => "o",
            Self::HalfOpen => "h",
        }
    }

    pub fn from_code(c: &str) -> Self {
        match c {
            "o" => Self::Open,
            "h" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The shared runtime state of one key (its `STATE` item, decoded). Every
/// field is what the store holds; absent attributes read as the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowShared {
    /// Next free rate slot (µs) of the key's own bucket.
    pub next_us: Option<i64>,
    /// Next free rate slot (µs) of each tenant's share, by bucket attribute suffix.
    pub shares: BTreeMap<String, i64>,
    /// Parallelism leases by slot: `expiry_ms * 1000 + nonce`.
    pub leases: BTreeMap<u32, i64>,
    /// Retry-After pause: nothing is sent before this.
    pub paused_until: Option<EpochMillis>,
    /// Adaptive factor applied to the rate (1.0 = the policy's rate).
    pub factor: f64,
    /// When the factor last changed.
    pub factor_at: Option<EpochMillis>,
    /// 429/503 answers since the factor last changed, and the last one's time.
    pub throttles: u32,
    pub throttled_at: Option<EpochMillis>,
    pub breaker: BreakerPosition,
    /// Open: until when. Half-open: the probe's deadline.
    pub breaker_until: Option<EpochMillis>,
    pub breaker_since: Option<EpochMillis>,
    /// Consecutive trips (reset after a long closed stretch).
    pub trips: u32,
    pub probe_token: Option<String>,
    pub closed_at: Option<EpochMillis>,
    /// The fixed breaker window: its start and counts.
    pub window_start: Option<EpochMillis>,
    pub window_requests: u32,
    pub window_failures: u32,
}

impl FlowShared {
    pub fn new() -> Self {
        Self { factor: 1.0, ..Self::default() }
    }

    /// Leases still held at `now`.
    pub fn in_flight(&self, now: EpochMillis) -> usize {
        self.leases.values().filter(|v| **v / 1_000 > now).count()
    }

    /// Slots among `0..parallelism` free at `now`.
    pub fn free_slots(&self, parallelism: u32, now: EpochMillis) -> Vec<u32> {
        (0..parallelism).filter(|i| self.leases.get(i).is_none_or(|v| *v / 1_000 <= now)).collect()
    }

    pub fn next_of(&self, bucket: &BucketId) -> Option<i64> {
        match bucket {
            BucketId::Key => self.next_us,
            BucketId::Share(s) => self.shares.get(s).copied(),
        }
    }
}

/// Which rate bucket of a key's state item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BucketId {
    /// The key's own (admin's, or the named key's) bucket.
    Key,
    /// A tenant's share of a host key (suffix: the tenant id's hex).
    Share(String),
}

impl BucketId {
    pub fn share(tenant: &TenantId) -> Self {
        Self::Share(tenant.as_str().trim_start_matches("tnt_").to_owned())
    }
}

/// How one bucket's reservation is written.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketForm {
    /// The bucket is idle (its next slot is at or before `base`): `next = base + add`,
    /// on condition that it still is.
    Idle { base_us: i64 },
    /// The bucket is busy: `next = next + add`, on condition that
    /// `base < next <= ceiling` (its next slot is within the horizon).
    Busy { base_us: i64, ceiling_us: i64 },
}

/// One bucket's part of a reservation.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketWrite {
    pub bucket: BucketId,
    pub form: BucketForm,
    /// `k × interval`.
    pub add_us: i64,
}

/// One conditional write on a key's state: rate slots and/or parallelism
/// leases for one batch's messages to that key. It also requires the key not
/// to be paused and its breaker closed.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub buckets: Vec<BucketWrite>,
    /// Lease slots to take (`slot`, value `expiry_ms*1000+nonce`): each must be free at `now`.
    pub leases: Vec<(u32, i64)>,
    pub now: EpochMillis,
}

/// A conditional write's result: the item after it, or as it was when the condition failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Cas {
    Written(FlowShared),
    Refused(FlowShared),
}

/// One sender's tally for a key since its last report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub requests: u32,
    pub failures: u32,
    /// 429/503 answers.
    pub throttles: u32,
}

/// A change of a key's breaker, pause or adaptive factor: one conditional
/// write of its state (plus, for the breaker and the pause, its hold item
/// in the policy partition and a history entry).
#[derive(Clone, Debug, PartialEq)]
pub enum FlowChange {
    /// Closed → open (condition: closed).
    Open { trips: u32, until: EpochMillis, why: String },
    /// Open and due (or half-open with a dead prober) → half-open, owned by `token`.
    HalfOpen { token: String, until: EpochMillis },
    /// Half-open (owned by `token`) → closed; the window restarts.
    Close { token: String },
    /// Half-open (owned by `token`) → open again.
    Reopen { token: String, trips: u32, until: EpochMillis, why: String },
    /// Pause the key until `until` (condition: not already paused longer).
    Pause { until: EpochMillis, why: String },
    /// Adaptive factor `from` → `to` (condition: still `from`).
    Factor { from: f64, to: f64, why: String },
}

impl FlowChange {
    /// The history entry's `to` state.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
            Self::Close { .. } => "closed",
            Self::Reopen { .. } => "open",
            Self::Pause { .. } => "paused",
            Self::Factor { from, to, .. } if to < from => "rate_halved",
            Self::Factor { .. } => "rate_restored",
        }
    }
}

/// What holds every delivery to a key for a while (the hold items every
/// sender reads with the policies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// `open`, `paused` or `closed` (a closed hold has `until` in the past).
    pub kind: String,
    pub until: EpochMillis,
}

/// One past transition of a key, newest first in views.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub at: EpochMillis,
    pub to: String,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<EpochMillis>,
}

/// Every policy and hold, as the sender caches them.
#[derive(Clone, Debug, Default)]
pub struct FlowSnapshot {
    pub policies: std::collections::HashMap<(FlowKey, PolicyScope), FlowPolicy>,
    pub holds: std::collections::HashMap<FlowKey, Hold>,
}

impl FlowSnapshot {
    pub fn policy(&self, key: &FlowKey, scope: &PolicyScope) -> Option<&FlowPolicy> {
        self.policies.get(&(key.clone(), scope.clone()))
    }
}

/// The plan for one bucket: how to write it and how many slots (`k ≥ 1`)
/// it reserves, from the sender's last view of `next` (`cached`). `None`:
/// the cached view says the bucket is full past the horizon: hold without a write.
pub fn plan_bucket(
    cached: Option<i64>,
    now_us: i64,
    interval_us: i64,
    burst: u32,
    horizon_us: i64,
    n: u32,
) -> Option<(BucketForm, u32)> {
    let t = interval_us.max(1);
    let tau = i64::from(burst.max(1) - 1) * t;
    let base = now_us - tau;
    match cached {
        Some(next) if next > base => {
            if next > now_us + horizon_us {
                return None;
            }
            let k = 1 + (now_us + horizon_us - next) / t;
            Some((BucketForm::Busy { base_us: base, ceiling_us: now_us + horizon_us }, n.min(k as u32).max(1)))
        }
        _ => {
            let k = 1 + (tau + horizon_us) / t;
            Some((BucketForm::Idle { base_us: base }, n.min(k as u32).max(1)))
        }
    }
}

/// The send time (µs) of the `i`-th of `k` slots a written bucket granted:
/// the bucket's `next` after the write minus what is left after slot `i`.
pub fn slot_at(next_after_us: i64, k: u32, i: u32, interval_us: i64) -> i64 {
    next_after_us - i64::from(k - i) * interval_us
}

/// The adaptive factor after another halving.
pub fn halved(factor: f64) -> f64 {
    (factor / 2.0).max(MIN_FACTOR)
}

/// The adaptive factor one clean step later.
pub fn restored(factor: f64) -> f64 {
    (factor * 2.0).min(1.0)
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
