//! W3C Trace Context (`traceparent`, `tracestate`): a task keeps the trace
//! its creator was in, and each attempt is a new span of it.
//!
//! A `traceparent` that cannot be parsed is not an error: as the W3C
//! recommendation asks of a receiver, Courier starts a new trace (and drops
//! the `tracestate` that came with it, which belongs to the broken trace).

use serde::{Deserialize, Serialize};

/// The longest `tracestate` kept (the W3C limit a vendor must propagate).
const MAX_TRACESTATE: usize = 512;

/// The trace a task belongs to: its id and the vendors' `tracestate`, sent
/// unchanged with every attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    #[serde(rename = "id")]
    pub trace_id: String,
    #[serde(rename = "st", default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(digits: usize) -> String {
    loop {
        let v = fastrand::u128(..);
        let hex = format!("{v:032x}");
        let hex = &hex[..digits];
        if hex.bytes().any(|b| b != b'0') {
            return hex.to_owned();
        }
    }
}

impl TraceContext {
    /// A new trace (random id, no state).
    pub fn start() -> Self {
        Self { trace_id: random_hex(32), state: None }
    }

    /// The trace of a create request: its `traceparent` and `tracestate`
    /// headers, or a new trace if there is none or it cannot be parsed.
    /// The flag says whether the given one was refused (for the logs).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> (Self, bool) {
        let Some(raw) = traceparent else { return (Self::start(), false) };
        match parse_traceparent(raw.trim()) {
            Some(trace_id) => {
                let state = tracestate.map(str::trim).filter(|s| valid_tracestate(s)).map(str::to_owned);
                (Self { trace_id, state }, false)
            }
            None => (Self::start(), true),
        }
    }

    /// The `traceparent` of one attempt: this trace, a new parent (span) id, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, random_hex(16))
    }
}

/// The trace id of a `traceparent` (`version-traceid-parentid-flags`), as
/// W3C parses it: version `ff` is invalid; version `00` has exactly four
/// fields; a later version may add fields after a `-`.
fn parse_traceparent(s: &str) -> Option<String> {
    if s.len() < 55 {
        return None;
    }
    let (head, rest) = s.split_at(55);
    let mut parts = head.split('-');
    let (version, trace_id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let nonzero = |h: &str| h.bytes().any(|b| b != b'0');
    if !lower_hex(trace_id, 32) || !nonzero(trace_id) || !lower_hex(parent, 16) || !nonzero(parent) {
        return None;
    }
    if !lower_hex(flags, 2) {
        return None;
    }
    Some(trace_id.to_owned())
}

/// A `tracestate` Courier passes on: printable ASCII, at most 512 characters.
fn valid_tracestate(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TRACESTATE && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_state() {
        let (t, refused) = TraceContext::from_headers(Some(PARENT), Some("congo=t61rcWkgMzE"));
        assert!(!refused);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let (later, _) =
            TraceContext::from_headers(Some("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"), None);
        assert_eq!(later.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "a later version may add fields");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace_without_its_state() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            let (t, refused) = TraceContext::from_headers(Some(bad), Some("congo=t61rcWkgMzE"));
            assert!(refused, "{bad}");
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(lower_hex(&t.trace_id, 32));
            assert_eq!(t.state, None, "{bad}");
        }
    }

    #[test]
    fn each_attempt_gets_a_new_parent_id_in_the_same_trace() {
        let t = TraceContext::start();
        let (a, b) = (t.traceparent(), t.traceparent());
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(parse_traceparent(p).as_deref(), Some(t.trace_id.as_str()));
            assert!(p.ends_with("-01"));
        }
    }

    #[test]
    fn a_tracestate_with_control_characters_or_too_long_is_dropped() {
        let (t, _) = TraceContext::from_headers(Some(PARENT), Some("a=b\u{7}"));
        assert_eq!(t.state, None);
        let (t, _) = TraceContext::from_headers(Some(PARENT), Some(&"a".repeat(513)));
        assert_eq!(t.state, None);
    }

    #[test]
    fn stored_form_is_short() {
        let t = TraceContext { trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(), state: None };
        assert_eq!(serde_json::to_string(&t).expect("json"), r#"{"id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#);
    }
}
