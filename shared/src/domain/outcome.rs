//! What an attempt's result means: success, a reason to retry, or a reason to
//! stop.

use serde::{Deserialize, Serialize};

/// The class of one attempt's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    ClientError,
    ServerError,
    Timeout,
    Connect,
    Dns,
    Tls,
    RateLimited,
    StoppedByReceiver,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::RateLimited => "rate_limited",
            Self::StoppedByReceiver => "stopped_by_receiver",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// Whether another attempt may succeed where this one did not.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::ServerError | Self::Timeout | Self::Connect | Self::Dns | Self::Tls | Self::RateLimited)
    }
}

/// Classifies an HTTP status: 2xx succeed; 5xx, 408 and 425 are server-side
/// trouble worth retrying; 429 is rate limiting (retried); other 4xx stop.
pub fn classify_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        429 => Outcome::RateLimited,
        408 | 425 | 500..=599 => Outcome::ServerError,
        _ => Outcome::ClientError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses_by_the_documented_rules() {
        assert_eq!(classify_status(200), Outcome::Success);
        assert_eq!(classify_status(204), Outcome::Success);
        assert_eq!(classify_status(500), Outcome::ServerError);
        assert_eq!(classify_status(503), Outcome::ServerError);
        assert_eq!(classify_status(408), Outcome::ServerError);
        assert_eq!(classify_status(425), Outcome::ServerError);
        assert_eq!(classify_status(429), Outcome::RateLimited);
        assert_eq!(classify_status(404), Outcome::ClientError);
        assert_eq!(classify_status(410), Outcome::ClientError);
        assert_eq!(classify_status(301), Outcome::ClientError);
    }

    #[test]
    fn only_transient_outcomes_retry() {
        assert!(Outcome::ServerError.is_retryable());
        assert!(Outcome::Timeout.is_retryable());
        assert!(Outcome::Connect.is_retryable());
        assert!(!Outcome::ClientError.is_retryable());
        assert!(!Outcome::StoppedByReceiver.is_retryable());
        assert!(!Outcome::Success.is_retryable());
        assert_eq!(Outcome::parse("rate_limited"), Some(Outcome::RateLimited));
        assert_eq!(Outcome::parse(Outcome::Dns.as_str()), Some(Outcome::Dns));
    }
}
