//! After a batch: Retry-After pauses, half-open probes' verdicts, one
//! breaker report per key that saw failures, and the changes they call for;
//! the log line and EMF counts of each change and of each held message.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::super::Sender;
use super::Probe;
use crate::domain::{
    BreakerPosition, Cas, EpochMillis, FlowChange, FlowKey, FlowRef, FlowShared, HALVE_SPACING_MS, MIN_FACTOR,
    PolicyScope, Tally, halved, now_millis,
};
use crate::metrics;
use crate::ports::{FlowLimiter, FlowPolicies};

impl<S: FlowPolicies + FlowLimiter, Q, C> Sender<S, Q, C> {
    /// After a batch: pauses, probe verdicts, then one report per key that
    /// saw failures or 429/503, and the breaker or rate changes it calls for.
    pub(in crate::sender) async fn settle(&self, snap_flows: &HashMap<FlowKey, FlowRef>) {
        let now = self.clock.now();
        let (pauses, verdicts, reports) = {
            let mut st = self.flow.lock();
            let pauses: Vec<(FlowKey, EpochMillis)> = st.pauses.drain().collect();
            let done: Vec<FlowKey> = st.probes.iter().filter(|(_, p)| p.pending == 0).map(|(k, _)| k.clone()).collect();
            let verdicts: Vec<(FlowKey, Probe)> =
                done.into_iter().filter_map(|k| st.probes.remove(&k).map(|p| (k, p))).collect();
            for (k, _) in &verdicts {
                // A probe's results judge the probe, not the next window.
                st.tallies.remove(k);
            }
            let due: Vec<FlowKey> = st
                .tallies
                .iter()
                .filter(|(_, (_, t))| t.failures > 0 || t.throttles > 0)
                .map(|(k, _)| k.clone())
                .collect();
            let reports: Vec<(FlowKey, EpochMillis, Tally)> =
                due.into_iter().filter_map(|k| st.tallies.remove(&k).map(|(w, t)| (k, w, t))).collect();
            (pauses, verdicts, reports)
        };
        if pauses.is_empty() && verdicts.is_empty() && reports.is_empty() {
            return;
        }
        let snap = self.snapshot(now).await;
        for (key, until) in pauses {
            let change = FlowChange::Pause { until, why: "Retry-After on a 429/503".to_owned() };
            self.apply(&key, &change, now).await;
        }
        for (key, probe) in verdicts {
            let Some(flow) = snap_flows.get(&key) else { continue };
            let settings = self.flow.breaker_of(&snap, flow);
            let trips = self.flow.view(&key).map_or(0, |(_, s)| s.trips);
            let change = if probe.failed {
                FlowChange::Reopen {
                    token: probe.token,
                    trips: trips + 1,
                    until: now + settings.open_for(trips),
                    why: "a probe failed".to_owned(),
                }
            } else {
                FlowChange::Close { token: probe.token }
            };
            self.apply(&key, &change, now).await;
        }
        for (key, window, tally) in reports {
            let s = match self.store.report(&key, &tally, window, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(flow_key = %key, error = %e, "could not report to the breaker window");
                    continue;
                }
            };
            self.flow.remember(&key, now, &s);
            let Some(flow) = snap_flows.get(&key) else { continue };
            let settings = self.flow.breaker_of(&snap, flow);
            if s.breaker == BreakerPosition::Closed && settings.trips(s.window_requests, s.window_failures) {
                let before =
                    if s.closed_at.is_some_and(|c| now - c >= settings.open_max_ms as i64) { 0 } else { s.trips };
                let change = FlowChange::Open {
                    trips: before + 1,
                    until: now + settings.open_for(before),
                    why: format!("{} of {} requests failed in the window", s.window_failures, s.window_requests),
                };
                self.apply(&key, &change, now).await;
            }
            let policy = match flow.named_key() {
                Some(n) => snap.policy(&n, &PolicyScope::Tenant(flow.tenant.clone())),
                None => snap.policy(&key, &PolicyScope::Admin),
            };
            let adaptive = policy.is_some_and(|p| p.adaptive && p.rate.is_some());
            if adaptive
                && s.throttles >= 2
                && s.factor > MIN_FACTOR
                && now - s.factor_at.unwrap_or(0) >= HALVE_SPACING_MS
            {
                let change = FlowChange::Factor {
                    from: s.factor,
                    to: halved(s.factor),
                    why: format!("{} answers 429/503", s.throttles),
                };
                self.apply(&key, &change, now).await;
            }
        }
    }

    /// Writes the Retry-After pauses this sender has seen, at once: every
    /// other sender must stop before its next batch, not this one's end.
    pub(in crate::sender) async fn write_pauses(&self) {
        let pauses: Vec<(FlowKey, EpochMillis)> = self.flow.lock().pauses.drain().collect();
        let now = self.clock.now();
        for (key, until) in pauses {
            let change = FlowChange::Pause { until, why: "Retry-After on a 429/503".to_owned() };
            self.apply(&key, &change, now).await;
        }
    }

    pub(in crate::sender) async fn apply(&self, key: &FlowKey, change: &FlowChange, now: EpochMillis) {
        match self.store.change(key, change, now).await {
            Ok(Cas::Written(s)) => {
                self.flow.remember(key, now, &s);
                log_change(key, change, &s);
            }
            Ok(Cas::Refused(s)) => self.flow.remember(key, now, &s),
            Err(e) => {
                tracing::warn!(flow_key = %key, error = %e, change = change.name(), "could not change the key's state")
            }
        }
    }
}

/// One JSON log line per state change, and the breaker's EMF counts.
pub(super) fn log_change(key: &FlowKey, change: &FlowChange, s: &FlowShared) {
    let event = match change {
        FlowChange::Open { .. } => "flow.breaker_opened",
        FlowChange::HalfOpen { .. } => "flow.breaker_half_open",
        FlowChange::Close { .. } => "flow.breaker_closed",
        FlowChange::Reopen { .. } => "flow.breaker_reopened",
        FlowChange::Pause { .. } => "flow.paused",
        FlowChange::Factor { from, to, .. } if to < from => "flow.rate_halved",
        FlowChange::Factor { .. } => "flow.rate_restored",
    };
    let why = match change {
        FlowChange::Open { why, .. }
        | FlowChange::Reopen { why, .. }
        | FlowChange::Pause { why, .. }
        | FlowChange::Factor { why, .. } => why.as_str(),
        FlowChange::HalfOpen { .. } => "open span over: probing",
        FlowChange::Close { .. } => "probes succeeded",
    };
    tracing::info!(
        event,
        flow_key = %key,
        breaker = s.breaker.as_str(),
        until = s.breaker_until.or(s.paused_until),
        trips = s.trips,
        window_requests = s.window_requests,
        window_failures = s.window_failures,
        factor = s.factor,
        why,
        "flow state changed"
    );
    let metric = match change {
        FlowChange::Open { .. } | FlowChange::Reopen { .. } => Some(metrics::BREAKER_OPENED),
        FlowChange::Close { .. } => Some(metrics::BREAKER_CLOSED),
        _ => None,
    };
    if let Some(m) = metric {
        let mut props = Map::new();
        props.insert("flow_key".into(), Value::String(key.to_string()));
        props.insert("event".into(), Value::String(event.to_owned()));
        println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), None, &[(m, 1.0)], props));
    }
}

/// The EMF line of one held message.
pub(in crate::sender) fn emit_throttled(key: &FlowKey, reason: &str, task: Option<&str>, held: u32) {
    let mut props = Map::new();
    props.insert("flow_key".into(), Value::String(key.to_string()));
    props.insert("reason".into(), Value::String(reason.to_owned()));
    props.insert("held".into(), json!(held));
    if let Some(t) = task {
        props.insert("task_id".into(), Value::String(t.to_owned()));
    }
    println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), None, &[(metrics::THROTTLED, 1.0)], props));
}
