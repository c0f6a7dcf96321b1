//! Typed configuration, read once at cold start from the environment that
//! `template.yaml` (or the local stack) sets. Every field is documented and
//! validated; adapters never read the environment themselves.

use std::env;

use crate::domain::{TargetGuard, TargetPolicy};
use sha2::{Digest, Sha256};

/// Configuration shared by Courier's functions.
#[derive(Clone, Debug)]
pub struct Config {
    /// `COURIER_TABLE`: the DynamoDB table holding tasks and attempts.
    pub table: String,
    /// `COURIER_QUEUE_URL`: the delivery queue.
    pub queue_url: String,
    /// `COURIER_DLQ_URL`: the dead-letter queue for tasks that finally fail and poison messages.
    pub dlq_url: String,
    /// `COURIER_QUEUE_ARN`: the delivery queue's ARN (the target of cron schedules).
    pub queue_arn: String,
    /// `COURIER_SCHEDULE_GROUP`: the EventBridge Scheduler group of far-future and cron tasks.
    pub schedule_group: String,
    /// `COURIER_SCHEDULER_ROLE_ARN`: the role Scheduler assumes to send to the queue.
    pub scheduler_role_arn: String,
    /// `COURIER_SQS_DELAY_MAX_S` (default 900, the SQS maximum): tasks due within this go
    /// straight to SQS with `DelaySeconds`; later ones through Scheduler.
    pub sqs_delay_max_s: u64,
    /// `COURIER_SCHEDULE_EARLY_S` (default 60): how long before the due time a one-time
    /// schedule fires; the rest is an SQS delay, so the request leaves on time.
    pub schedule_early_s: u64,
    /// `COURIER_RECONCILE_GRACE_S` (default 120): how long after its due time (or lease) a task
    /// that has not moved is re-enqueued by the reconciler.
    pub reconcile_grace_s: u64,
    /// `COURIER_ADMIN_KEY_SHA256` (optional, 64 hex digits): the SHA-256 of the admin API's
    /// bearer key (tenants and keys). The key itself never reaches a function. Unset: the
    /// admin API answers 403.
    pub admin_key: Option<AdminKeyHash>,
    /// `COURIER_SENDER_CONCURRENCY` (default 16): messages of one SQS batch sent at once.
    pub sender_concurrency: usize,
    /// `COURIER_RESPONSE_BODY_LIMIT` (default 4096, at most 65536): bytes of a response body kept per attempt.
    pub response_body_limit: usize,
    /// `COURIER_LEASE_MARGIN_MS` (default 30000): how long past the request timeout a claim stays live.
    pub lease_margin_ms: u64,
    /// `COURIER_RETENTION_DAYS` (default 90): days finished tasks and attempts are kept before TTL deletes them.
    pub retention_days: u64,
    /// `COURIER_AUDIT_RETENTION_DAYS` (default 90): days audit entries are kept before TTL deletes them.
    pub audit_retention_days: u64,
    /// `COURIER_TARGET_POLICY` (`public`, the default, or `local-only`) and
    /// `COURIER_TARGET_ALLOWLIST` (comma list of CIDRs and host names, each
    /// with an optional `:port`): which addresses tasks may reach.
    pub target_guard: TargetGuard,
    /// Flow control's settings (see [`FlowConfig`]).
    pub flow: FlowConfig,
    /// `COURIER_SIGNING_KEY_ID` (optional): the KMS key (id, ARN or alias) sealing
    /// tenants' signing secrets. Unset: creating a secret fails.
    /// `COURIER_EVENT_BUS` (optional): the EventBridge bus lifecycle events go to. Unset: no events.
    pub event_bus: Option<String>,
    /// `COURIER_ARCHIVE_BUCKET` (optional): the S3 bucket expired task history is archived to.
    pub archive_bucket: Option<String>,
    /// `COURIER_JWT_TENANT_CLAIM` (default `courier_tenant`): the JWT claim naming the caller's
    /// tenant on the `/jwt/…` routes (the HTTP API's JWT authorizer has checked the token).
    pub jwt_tenant_claim: String,
    /// `COURIER_HOST_BREAKER_EVENTS` (`true`/`false`, default false): publish the breaker events
    /// of host keys, which belong to no tenant (a tenant opts in to its own keys' events).
    pub host_breaker_events: bool,
    pub signing_key_id: Option<String>,
    /// `COURIER_SIGNING_CACHE_MS` (default 60000): how long a sender reuses a tenant's
    /// unsealed signing secrets (a new or revoked secret takes effect within it).
    pub signing_cache_ms: u64,
    /// `COURIER_AUTH_CACHE_MS` (default and most 5000, 0 keeps nothing): how long an API instance reuses
    /// what it read of an API key and its tenant (a revoked key, a disabled tenant or new
    /// quotas take effect within it).
    pub auth_cache_ms: u64,
}

/// Flow control's settings: how long a sender trusts its cached policies,
/// how far ahead it reserves rate slots, and the breaker every key without
/// a policy of its own gets.
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// `COURIER_FLOW_CACHE_MS` (default 5000): how long a sender reuses the policies and holds it read.
    pub cache_ms: u64,
    /// `COURIER_FLOW_HORIZON_MS` (default 1000): how far ahead one write reserves rate slots.
    pub horizon_ms: u64,
    /// `COURIER_BREAKER_MIN_REQUESTS` (10), `COURIER_BREAKER_FAILURE_PERCENT` (70),
    /// `COURIER_BREAKER_WINDOW_S` (300), `COURIER_BREAKER_OPEN_MIN_S` (30),
    /// `COURIER_BREAKER_OPEN_MAX_S` (600), `COURIER_BREAKER_PROBES` (3): the default breaker.
    pub breaker: crate::domain::BreakerSettings,
}

/// The SHA-256 of the admin key: all a function holds of it, so the key is in
/// no environment variable. `Debug` prints no digits: a hash of a guessable
/// key is as good as the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKeyHash([u8; 32]);

impl AdminKeyHash {
    /// Parses 64 hex digits (either case).
    pub fn parse(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(out))
    }

    /// The hash of `key` (what an operator computes before deploying).
    pub fn of_key(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `key` is the admin key; compares every byte whatever the first difference.
    pub fn matches(&self, key: &str) -> bool {
        let other = Sha256::digest(key.as_bytes());
        self.0.iter().zip(other.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKeyHash(***)")
    }
}

/// `COURIER_ADMIN_KEY_SHA256`, refusing the plain key a function must not hold.
fn admin_key_hash(get: &impl Fn(&str) -> Option<String>) -> Result<Option<AdminKeyHash>, ConfigError> {
    if get("COURIER_ADMIN_KEY").is_some_and(|k| !k.is_empty()) {
        return Err(ConfigError::Invalid {
            name: "COURIER_ADMIN_KEY",
            rule: "not read: give the function only COURIER_ADMIN_KEY_SHA256, the key's SHA-256",
        });
    }
    match get("COURIER_ADMIN_KEY_SHA256").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(hex) => AdminKeyHash::parse(hex.trim())
            .map(Some)
            .ok_or(ConfigError::Invalid { name: "COURIER_ADMIN_KEY_SHA256", rule: "64 hex digits (a SHA-256)" }),
    }
}

/// A configuration variable is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {rule}")]
    Invalid { name: &'static str, rule: &'static str },
    #[error("environment variable {name} is invalid: {detail}")]
    Malformed { name: &'static str, detail: String },
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| env::var(k).ok())
    }

    /// Reads the configuration from any key lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| get(name).filter(|v| !v.is_empty()).ok_or(ConfigError::Missing(name));
        let number = |name: &'static str, default: u64, max: u64, rule: &'static str| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => {
                    v.parse::<u64>().ok().filter(|n| (1..=max).contains(n)).ok_or(ConfigError::Invalid { name, rule })
                }
            }
        };
        Ok(Self {
            table: required("COURIER_TABLE")?,
            queue_url: required("COURIER_QUEUE_URL")?,
            dlq_url: required("COURIER_DLQ_URL")?,
            sender_concurrency: number("COURIER_SENDER_CONCURRENCY", 16, 256, "an integer in 1..=256")? as usize,
            response_body_limit: number("COURIER_RESPONSE_BODY_LIMIT", 4096, 65_536, "an integer in 1..=65536")?
                as usize,
            lease_margin_ms: number("COURIER_LEASE_MARGIN_MS", 30_000, 900_000, "an integer in 1..=900000")?,
            retention_days: number("COURIER_RETENTION_DAYS", 90, 3650, "an integer in 1..=3650")?,
            audit_retention_days: number("COURIER_AUDIT_RETENTION_DAYS", 90, 3650, "an integer in 1..=3650")?,
            queue_arn: required("COURIER_QUEUE_ARN")?,
            schedule_group: required("COURIER_SCHEDULE_GROUP")?,
            scheduler_role_arn: required("COURIER_SCHEDULER_ROLE_ARN")?,
            sqs_delay_max_s: number("COURIER_SQS_DELAY_MAX_S", 900, 900, "an integer in 1..=900")?,
            schedule_early_s: number("COURIER_SCHEDULE_EARLY_S", 60, 900, "an integer in 1..=900")?,
            reconcile_grace_s: number("COURIER_RECONCILE_GRACE_S", 120, 86_400, "an integer in 1..=86400")?,
            admin_key: admin_key_hash(&get)?,
            signing_key_id: get("COURIER_SIGNING_KEY_ID").filter(|v| !v.is_empty()),
            event_bus: get("COURIER_EVENT_BUS").filter(|v| !v.is_empty()),
            archive_bucket: get("COURIER_ARCHIVE_BUCKET").filter(|v| !v.is_empty()),
            jwt_tenant_claim: get("COURIER_JWT_TENANT_CLAIM")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "courier_tenant".to_owned()),
            host_breaker_events: get("COURIER_HOST_BREAKER_EVENTS").is_some_and(|v| v == "true"),
            signing_cache_ms: number("COURIER_SIGNING_CACHE_MS", 60_000, 3_600_000, "an integer in 1..=3600000")?,
            auth_cache_ms: match get("COURIER_AUTH_CACHE_MS").filter(|v| !v.is_empty()) {
                None => 5_000,
                Some(v) => v.parse::<u64>().ok().filter(|n| *n <= 5_000).ok_or(ConfigError::Invalid {
                    name: "COURIER_AUTH_CACHE_MS",
                    rule: "an integer in 0..=5000 (the active-task quota's headroom allows for 5 s)",
                })?,
            },
            flow: FlowConfig {
                cache_ms: number("COURIER_FLOW_CACHE_MS", 5_000, 600_000, "an integer in 1..=600000")?,
                horizon_ms: number("COURIER_FLOW_HORIZON_MS", 1_000, 10_000, "an integer in 1..=10000")?,
                breaker: crate::domain::BreakerSettings {
                    enabled: true,
                    min_requests: number("COURIER_BREAKER_MIN_REQUESTS", 10, 10_000, "an integer in 1..=10000")? as u32,
                    failure_percent: number("COURIER_BREAKER_FAILURE_PERCENT", 70, 100, "an integer in 1..=100")? as u8,
                    window_ms: number("COURIER_BREAKER_WINDOW_S", 300, 3_600, "an integer in 1..=3600")? * 1_000,
                    open_min_ms: number("COURIER_BREAKER_OPEN_MIN_S", 30, 600, "an integer in 1..=600")? * 1_000,
                    open_max_ms: number("COURIER_BREAKER_OPEN_MAX_S", 600, 3_600, "an integer in 1..=3600")? * 1_000,
                    probes: number("COURIER_BREAKER_PROBES", 3, 10, "an integer in 1..=10")? as u32,
                },
            },
            target_guard: TargetGuard::new(
                match get("COURIER_TARGET_POLICY").filter(|p| !p.is_empty()) {
                    None => TargetPolicy::default(),
                    Some(p) => TargetPolicy::parse(&p).ok_or(ConfigError::Invalid {
                        name: "COURIER_TARGET_POLICY",
                        rule: "`public` or `local-only`",
                    })?,
                },
                TargetGuard::parse_allowlist(&get("COURIER_TARGET_ALLOWLIST").unwrap_or_default())
                    .map_err(|e| ConfigError::Malformed { name: "COURIER_TARGET_ALLOWLIST", detail: e.to_string() })?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| m.get(k).cloned()
    }

    const BASE: [(&str, &str); 6] = [
        ("COURIER_TABLE", "t"),
        ("COURIER_QUEUE_URL", "http://q"),
        ("COURIER_DLQ_URL", "http://d"),
        ("COURIER_QUEUE_ARN", "arn:aws:sqs:us-east-1:1:q"),
        ("COURIER_SCHEDULE_GROUP", "g"),
        ("COURIER_SCHEDULER_ROLE_ARN", "arn:aws:iam::1:role/r"),
    ];

    #[test]
    fn reads_required_values_and_defaults() {
        let c = Config::from_lookup(lookup(&BASE)).expect("valid");
        assert_eq!(c.table, "t");
        assert_eq!(c.sender_concurrency, 16);
        assert_eq!(c.response_body_limit, 4096);
        assert_eq!((c.signing_key_id, c.signing_cache_ms), (None, 60_000));
    }

    #[test]
    fn names_the_missing_or_invalid_variable() {
        assert_eq!(Config::from_lookup(lookup(&BASE)).expect("valid").admin_key, None);
        let e = Config::from_lookup(lookup(&BASE[1..])).expect_err("missing table");
        assert!(e.to_string().contains("COURIER_TABLE"));
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_RESPONSE_BODY_LIMIT", "100000"));
        let e = Config::from_lookup(lookup(&pairs)).expect_err("too large");
        assert!(e.to_string().contains("COURIER_RESPONSE_BODY_LIMIT"));
    }

    const ADMIN_KEY: &str = "adm_0123456789abcdef0123456789abcdef";

    #[test]
    fn the_admin_key_is_read_as_its_hash_and_never_as_itself() {
        let hex = crate::domain::hash_key(ADMIN_KEY);
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_ADMIN_KEY_SHA256", &hex));
        let c = Config::from_lookup(lookup(&pairs)).expect("valid");
        let hash = c.admin_key.expect("admin key hash");
        assert!(hash.matches(ADMIN_KEY));
        assert!(!hash.matches("adm_0123456789abcdef0123456789abcdeF"));
        assert_eq!(AdminKeyHash::parse(&hex.to_uppercase()), Some(hash));

        for bad in ["abc", &hex[1..], &format!("{}g", &hex[1..])] {
            let mut pairs = BASE.to_vec();
            pairs.push(("COURIER_ADMIN_KEY_SHA256", bad));
            let e = Config::from_lookup(lookup(&pairs)).expect_err("not a SHA-256");
            assert!(e.to_string().contains("COURIER_ADMIN_KEY_SHA256"), "{e}");
        }
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_ADMIN_KEY", ADMIN_KEY));
        let e = Config::from_lookup(lookup(&pairs)).expect_err("the plain key is refused");
        assert!(e.to_string().contains("COURIER_ADMIN_KEY_SHA256"), "{e}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let hex = crate::domain::hash_key(ADMIN_KEY);
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_ADMIN_KEY_SHA256", &hex));
        let shown = format!("{:?}", Config::from_lookup(lookup(&pairs)).expect("valid"));
        assert!(shown.contains("admin_key: Some(AdminKeyHash(***))"), "{shown}");
        assert!(!shown.contains(&hex[..16]) && !shown.contains(&hex.to_uppercase()[..16]), "{shown}");
        assert!(shown.contains("table: \"t\""), "the rest is still shown: {shown}");
    }

    #[test]
    fn the_target_guard_defaults_to_public_and_rejects_bad_settings_by_name() {
        let c = Config::from_lookup(lookup(&BASE)).expect("valid");
        assert_eq!(c.target_guard, TargetGuard::default());
        assert_eq!(c.target_guard.policy, TargetPolicy::Public);
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_TARGET_POLICY", "local-only"));
        pairs.push(("COURIER_TARGET_ALLOWLIST", "10.0.0.0/8, hooks.internal:8443"));
        let c = Config::from_lookup(lookup(&pairs)).expect("valid");
        assert_eq!(c.target_guard.policy, TargetPolicy::LocalOnly);
        assert_eq!(c.target_guard.allowlist().len(), 2);
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_TARGET_POLICY", "off"));
        let e = Config::from_lookup(lookup(&pairs)).expect_err("unknown policy");
        assert!(e.to_string().contains("COURIER_TARGET_POLICY"), "{e}");
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_TARGET_ALLOWLIST", "10.0.0.0/40"));
        let e = Config::from_lookup(lookup(&pairs)).expect_err("bad block");
        assert!(e.to_string().contains("COURIER_TARGET_ALLOWLIST") && e.to_string().contains("10.0.0.0/40"), "{e}");
    }
}
