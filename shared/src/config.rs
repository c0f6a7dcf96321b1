//! Typed configuration, read once at cold start from the environment that
//! `template.yaml` (or the local stack) sets. Every field is documented and
//! validated; adapters never read the environment themselves.

use std::env;

/// Configuration shared by Courier's functions.
#[derive(Clone, Debug)]
pub struct Config {
    /// `COURIER_TABLE`: the DynamoDB table holding tasks and attempts.
    pub table: String,
    /// `COURIER_QUEUE_URL`: the delivery queue.
    pub queue_url: String,
    /// `COURIER_DLQ_URL`: the dead-letter queue for tasks that finally fail and poison messages.
    pub dlq_url: String,
    /// `COURIER_SENDER_CONCURRENCY` (default 16): messages of one SQS batch sent at once.
    pub sender_concurrency: usize,
    /// `COURIER_RESPONSE_BODY_LIMIT` (default 4096, at most 65536): bytes of a response body kept per attempt.
    pub response_body_limit: usize,
    /// `COURIER_LEASE_MARGIN_MS` (default 30000): how long past the request timeout a claim stays live.
    pub lease_margin_ms: u64,
    /// `COURIER_RETENTION_DAYS` (default 90): days finished tasks and attempts are kept before TTL deletes them.
    pub retention_days: u64,
    /// `COURIER_DEFAULT_TENANT` (default `default`): the tenant of unauthenticated local calls.
    pub default_tenant: String,
}

/// A configuration variable is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {rule}")]
    Invalid { name: &'static str, rule: &'static str },
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
            default_tenant: get("COURIER_DEFAULT_TENANT").unwrap_or_else(|| "default".to_owned()),
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

    const BASE: [(&str, &str); 3] =
        [("COURIER_TABLE", "t"), ("COURIER_QUEUE_URL", "http://q"), ("COURIER_DLQ_URL", "http://d")];

    #[test]
    fn reads_required_values_and_defaults() {
        let c = Config::from_lookup(lookup(&BASE)).expect("valid");
        assert_eq!(c.table, "t");
        assert_eq!(c.sender_concurrency, 16);
        assert_eq!(c.response_body_limit, 4096);
    }

    #[test]
    fn names_the_missing_or_invalid_variable() {
        let e = Config::from_lookup(lookup(&BASE[1..])).expect_err("missing table");
        assert!(e.to_string().contains("COURIER_TABLE"));
        let mut pairs = BASE.to_vec();
        pairs.push(("COURIER_RESPONSE_BODY_LIMIT", "100000"));
        let e = Config::from_lookup(lookup(&pairs)).expect_err("too large");
        assert!(e.to_string().contains("COURIER_RESPONSE_BODY_LIMIT"));
    }
}
