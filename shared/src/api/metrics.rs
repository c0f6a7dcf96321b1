//! `GET /v1/metrics`: Prometheus text exposition (format 0.0.4) of what an
//! operator watches: tasks by status, active-task quota use, queue and DLQ
//! depths, flow policies and the holds (breaker open, paused) on flow keys.
//!
//! The admin key sees every tenant and the service-wide queue depths; a
//! tenant key sees its own counts, quota and flow policies (queue depths are
//! shared by all tenants and say nothing about one, so they are the admin's).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::auth::{self, Caller};
use super::{ApiError, AppState};
use crate::domain::{PolicyScope, TaskStatus, Tenant, now_millis};
use crate::ports::{CountStore, FlowPolicies, QueueDepths, TenantStore};

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped as the format requires (`\`, `"`, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Builds one exposition document, a family at a time.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }

    pub fn finish(self) -> String {
        self.0
    }
}

pub async fn metrics<S: TenantStore + CountStore + FlowPolicies, Q: QueueDepths, C>(
    State(app): State<Arc<AppState<S, Q, C>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = auth::caller(&app, &headers).await?;
    let tenants: Vec<Tenant> = match &caller {
        Caller::Admin => app.store.list_tenants().await?,
        Caller::Tenant(t) => vec![t.clone()],
    };
    let mut counts = Vec::with_capacity(tenants.len());
    for t in &tenants {
        counts.push(app.store.counts(&t.id).await?);
    }
    let mut out = Exposition::default();
    out.family(
        "courier_tasks",
        "gauge",
        "Tasks by tenant and status (kept by the stream counter: lags about a second).",
    );
    for (t, c) in tenants.iter().zip(&counts) {
        for status in TaskStatus::ALL {
            let n = c.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            out.sample("courier_tasks", &[("tenant", t.id.as_str()), ("status", status.as_str())], n as f64);
        }
    }
    out.family("courier_active_tasks", "gauge", "Active-task slots in use (tasks not yet finished).");
    for t in &tenants {
        out.sample("courier_active_tasks", &[("tenant", t.id.as_str())], t.active as f64);
    }
    out.family("courier_active_tasks_limit", "gauge", "The tenant's active-task quota.");
    for t in &tenants {
        out.sample("courier_active_tasks_limit", &[("tenant", t.id.as_str())], t.quotas.max_active_tasks as f64);
    }
    out.family("courier_tenant_enabled", "gauge", "1 if the tenant is enabled, 0 if disabled.");
    for t in &tenants {
        out.sample("courier_tenant_enabled", &[("tenant", t.id.as_str())], if t.enabled { 1.0 } else { 0.0 });
    }
    if matches!(caller, Caller::Admin) {
        let q = app.queue.queue_stats().await?;
        out.family(
            "courier_queue_messages",
            "gauge",
            "Messages in the delivery queue and its DLQ by state (SQS approximate counts).",
        );
        for (queue, d) in [("delivery", q.delivery), ("dlq", q.dlq)] {
            for (state, n) in [("visible", d.visible), ("in_flight", d.in_flight), ("delayed", d.delayed)] {
                out.sample("courier_queue_messages", &[("queue", queue), ("state", state)], n as f64);
            }
        }
        out.family("courier_dlq_depth", "gauge", "Messages waiting on the dead-letter queue (visible).");
        out.sample("courier_dlq_depth", &[], q.dlq.visible as f64);
    }
    let snapshot = app.store.flow_snapshot().await?;
    let own = |scope: &PolicyScope| match &caller {
        Caller::Admin => true,
        Caller::Tenant(t) => *scope == PolicyScope::Tenant(t.id.clone()),
    };
    let mut keys = BTreeSet::new();
    let (mut admin_policies, mut tenant_policies) = (0u64, 0u64);
    for (key, scope) in snapshot.policies.keys().filter(|(_, s)| own(s)) {
        keys.insert(key.clone());
        match scope {
            PolicyScope::Admin => admin_policies += 1,
            PolicyScope::Tenant(_) => tenant_policies += 1,
        }
    }
    out.family("courier_flow_policies", "gauge", "Flow policies by scope.");
    if matches!(caller, Caller::Admin) {
        out.sample("courier_flow_policies", &[("scope", "admin")], admin_policies as f64);
    }
    out.sample("courier_flow_policies", &[("scope", "tenant")], tenant_policies as f64);
    if matches!(caller, Caller::Admin) {
        keys.extend(snapshot.holds.keys().cloned());
    }
    let now = now_millis();
    out.family(
        "courier_flow_hold",
        "gauge",
        "1 while a flow key is held: hold=\"breaker_open\" (circuit breaker open) or hold=\"paused\"; 0 otherwise.",
    );
    let mut remaining = Vec::new();
    for key in &keys {
        let hold = snapshot.holds.get(key).filter(|h| h.until > now && h.kind != "closed");
        for (label, kind) in [("breaker_open", "open"), ("paused", "paused")] {
            let on = hold.is_some_and(|h| h.kind == kind);
            out.sample("courier_flow_hold", &[("key", key.display()), ("hold", label)], if on { 1.0 } else { 0.0 });
        }
        if let Some(h) = hold {
            remaining.push((key.display().to_owned(), (h.until - now) as f64 / 1000.0));
        }
    }
    out.family("courier_flow_hold_remaining_seconds", "gauge", "Seconds until a flow key's hold ends.");
    for (key, s) in remaining {
        out.sample("courier_flow_hold_remaining_seconds", &[("key", &key)], s);
    }
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], out.finish()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_families_have_help_and_type() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Things.");
        e.sample("x_total", &[("k", "a\"b\\c\nd")], 2.0);
        e.sample("x_total", &[], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{k=\"a\\\"b\\\\c\\nd\"} 2\nx_total 0.5\n"
        );
    }
}
