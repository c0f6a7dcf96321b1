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
    /// The target guard refused the address: nothing was sent, and nothing will be.
    Blocked,
    /// The sender stopped (crashed, killed, timed out) during the attempt:
    /// whether the request arrived is unknown. Recorded by the claim that took over.
    Interrupted,
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
            Self::Blocked => "blocked",
            Self::Interrupted => "interrupted",
        }
    }

    /// Whether another attempt may succeed where this one did not.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::ServerError
                | Self::Timeout
                | Self::Connect
                | Self::Dns
                | Self::Tls
                | Self::RateLimited
                | Self::Interrupted
        )
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
        assert!(!Outcome::Blocked.is_retryable());
        assert_eq!(serde_json::to_string(&Outcome::Blocked).expect("serializes"), "\"blocked\"");
        assert_eq!(Outcome::RateLimited.as_str(), "rate_limited");
    }
}

/// A task's own outcome rules (empty lists: the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRules {
    /// Statuses that count as success instead of 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success_codes: Vec<u16>,
    /// Statuses retried even though their class would stop (e.g. 404 while a resource appears).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_codes: Vec<u16>,
}

impl ResponseRules {
    pub fn is_empty(&self) -> bool {
        self.success_codes.is_empty() && self.retry_codes.is_empty()
    }

    /// The class of a response status under these rules.
    pub fn classify(&self, status: u16) -> Outcome {
        if self.success_codes.is_empty() {
            classify_status(status)
        } else if self.success_codes.contains(&status) {
            Outcome::Success
        } else if (200..300).contains(&status) {
            Outcome::ClientError
        } else {
            classify_status(status)
        }
    }

    /// Whether a failed response may be retried: its class is transient, or
    /// the task lists its status. 410 Gone always stops.
    pub fn retryable(&self, outcome: Outcome, status: Option<u16>) -> bool {
        match status {
            Some(410) => false,
            Some(s) if self.retry_codes.contains(&s) => outcome != Outcome::Success,
            _ => outcome.is_retryable(),
        }
    }
}

/// The longest wait a receiver can ask for with `Retry-After` or
/// `Courier-Retry-After`; longer values are clamped to it.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the receiver asked for in its response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverHints {
    /// `Courier-Retry: stop`: do not retry.
    pub stop: bool,
    /// `Courier-Retry-After: <seconds>` (any failure), or `Retry-After` (429 and 503), clamped.
    pub retry_after: Option<std::time::Duration>,
}

impl ReceiverHints {
    /// Reads the hints from a response; `header` looks up a header value by lowercase name.
    pub fn from_response<'a>(status: u16, now: super::EpochMillis, header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let stop = header("courier-retry").is_some_and(|v| v.trim().eq_ignore_ascii_case("stop"));
        let courier = header("courier-retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let standard = if matches!(status, 429 | 503) {
            header("retry-after").and_then(|v| parse_retry_after(v, now))
        } else {
            None
        };
        Self { stop, retry_after: courier.or(standard).map(|d| d.min(MAX_RETRY_AFTER)) }
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (IMF-fixdate).
pub fn parse_retry_after(v: &str, now: super::EpochMillis) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &f).ok()?.assume_utc();
    let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    Some(std::time::Duration::from_millis((at_ms - now).max(0) as u64))
}

#[cfg(test)]
mod rule_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn success_codes_replace_2xx_and_retry_codes_extend_retries_but_410_stops() {
        let r = ResponseRules { success_codes: vec![202, 409], retry_codes: vec![404, 410] };
        assert_eq!(r.classify(202), Outcome::Success);
        assert_eq!(r.classify(409), Outcome::Success);
        assert_eq!(r.classify(200), Outcome::ClientError);
        assert_eq!(r.classify(500), Outcome::ServerError);
        assert!(r.retryable(Outcome::ClientError, Some(404)));
        assert!(!r.retryable(Outcome::ClientError, Some(410)));
        assert!(!ResponseRules::default().retryable(Outcome::ClientError, Some(400)));
        assert!(ResponseRules::default().retryable(Outcome::Timeout, None));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_clamped() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        let h = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        assert_eq!(
            ReceiverHints::from_response(429, now, h(&[("retry-after", "7")])).retry_after,
            Some(Duration::from_secs(7))
        );
        assert_eq!(ReceiverHints::from_response(500, now, h(&[("retry-after", "7")])).retry_after, None);
        assert_eq!(
            ReceiverHints::from_response(503, now, h(&[("retry-after", "999999")])).retry_after,
            Some(MAX_RETRY_AFTER)
        );
        let hints =
            ReceiverHints::from_response(500, now, h(&[("courier-retry-after", "30"), ("courier-retry", "STOP")]));
        assert_eq!(hints, ReceiverHints { stop: true, retry_after: Some(Duration::from_secs(30)) });
    }
}
