//! The sender's flow-control gate. Before any claim, each batch's delivery
//! messages are grouped by the keys they carry; a group to a key without a
//! policy, pause or open breaker goes at once with no I/O. A limited key
//! costs one conditional write per (batch, key) that reserves rate slots
//! and parallelism leases for the whole group; an open breaker, a pause or
//! a full bucket holds the message back. A held message is re-sent as a new
//! message with a delay and the old one acknowledged: never an attempt, and
//! never a step towards the queue's redrive count.
//!
//! After the batch, one report per key that saw failures or 429/503 adds
//! this sender's tally to the key's window (successes are never written
//! alone), and the breaker, pause and adaptive factor move from what that
//! write returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

mod reserve;
mod settle;

use super::{RECORD_MARGIN_MS, Sender};
use crate::config::FlowConfig;
use crate::domain::{
    Attempt, BreakerPosition, BreakerSettings, Cas, EpochMillis, FlowChange, FlowKey, FlowPolicy, FlowRef, FlowShared,
    FlowSnapshot, Outcome, PolicyScope, Tally,
};
use crate::ports::{FlowLimiter, FlowPolicies};

/// Longest a held message waits before it is looked at again (the SQS delay limit).
pub(super) const MAX_HOLD: Duration = Duration::from_secs(900);

/// A view of a key's leases older than this is checked by the write itself
/// before a group is held for a full cap (another sender may have released).
const STALE_LEASES_MS: i64 = 250;

/// What the gate decided for one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Send it (not before `ticket.not_before`).
    Go(Ticket),
    /// Re-send it after `wait`; `reason` is what held it.
    Hold { wait: Duration, reason: &'static str, key: FlowKey, flow: FlowRef },
}

/// What a delivery the gate let through carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ticket {
    /// Its rate slot: the request does not leave before this.
    pub not_before: Option<EpochMillis>,
    /// Parallelism leases it holds, given back after the batch.
    pub leases: Vec<(FlowKey, (u32, i64))>,
    /// Whether it is a half-open breaker's probe.
    pub probe: bool,
    /// The keys its slot was reserved on (with `not_before`).
    pub flow: Option<FlowRef>,
    /// The task's tenant, when its message says (the sender reads the
    /// tenant's signing secrets before claiming).
    pub tenant: Option<crate::domain::TenantId>,
}

/// A request ready this much after its slot takes a new one instead: sent
/// late, it would bunch with the requests on the slots after it.
const LATE_MS: i64 = 50;

/// A half-open breaker this sender probes.
#[derive(Clone, Debug)]
struct Probe {
    token: String,
    pending: u32,
    failed: bool,
}

/// What a warm sender remembers between batches.
#[derive(Default)]
struct GateState {
    snapshot: Option<(EpochMillis, Arc<FlowSnapshot>)>,
    /// Each key's state as last returned by a write, and when.
    views: HashMap<FlowKey, (EpochMillis, FlowShared)>,
    /// This sender's requests per primary key since its last report, in the window they belong to.
    tallies: HashMap<FlowKey, (EpochMillis, Tally)>,
    /// Retry-After pauses to write, per primary key.
    pauses: HashMap<FlowKey, EpochMillis>,
    probes: HashMap<FlowKey, Probe>,
}

/// The gate: settings and the warm container's cache.
pub struct FlowGate {
    config: FlowConfig,
    lease_margin_ms: i64,
    state: Mutex<GateState>,
    /// Recent time from admission to the moment a request may leave (claim
    /// and spec read), smoothed, in µs.
    prepare_us: std::sync::atomic::AtomicI64,
}

impl FlowGate {
    pub fn new(config: FlowConfig, lease_margin_ms: u64) -> Self {
        Self {
            config,
            lease_margin_ms: lease_margin_ms as i64,
            state: Mutex::default(),
            prepare_us: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Notes how long one delivery took to get ready to send (claim, spec).
    pub fn prepared_in(&self, ms: i64) {
        use std::sync::atomic::Ordering;
        let sample = ms.clamp(0, 5_000) * 1_000;
        let _ = self.prepare_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { (old * 4 + sample) / 5 })
        });
    }

    /// How far ahead of now a reservation's first slot goes: twice the
    /// recent preparation time, at most half a second.
    fn lead_ms(&self) -> i64 {
        (2 * self.prepare_us.load(std::sync::atomic::Ordering::Relaxed) / 1_000).min(500)
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn view(&self, key: &FlowKey) -> Option<(EpochMillis, FlowShared)> {
        self.lock().views.get(key).cloned()
    }

    fn remember(&self, key: &FlowKey, at: EpochMillis, s: &FlowShared) {
        self.lock().views.insert(key.clone(), (at, s.clone()));
    }

    /// The breaker settings of a primary key: its own policy's, else the host admin's, else the defaults.
    fn breaker_of(&self, snap: &FlowSnapshot, flow: &FlowRef) -> BreakerSettings {
        let own = match flow.named_key() {
            Some(n) => snap.policy(&n, &PolicyScope::Tenant(flow.tenant.clone())),
            None => snap.policy(&flow.host_key(), &PolicyScope::Admin),
        };
        own.and_then(|p| p.breaker.clone()).unwrap_or_else(|| self.config.breaker.clone())
    }

    /// Counts one attempt's result towards its primary key's breaker window
    /// and notes a Retry-After pause; a probe's result is kept for its verdict.
    pub fn observe(
        &self,
        flow: &FlowRef,
        attempt: &Attempt,
        retry_after: Option<Duration>,
        probe: bool,
        now: EpochMillis,
    ) {
        if attempt.outcome == Outcome::Blocked {
            return;
        }
        let key = flow.primary();
        let failed = is_failure(attempt.outcome);
        let throttled = matches!(attempt.status_code, Some(429 | 503));
        let window = self.config.breaker.window_start(now);
        let mut st = self.lock();
        let entry = st.tallies.entry(key.clone()).or_insert((window, Tally::default()));
        if entry.0 != window {
            *entry = (window, Tally::default());
        }
        entry.1.requests += 1;
        entry.1.failures += u32::from(failed);
        entry.1.throttles += u32::from(throttled);
        if let (true, Some(wait)) = (throttled, retry_after) {
            let until = now + wait.as_millis() as i64;
            let p = st.pauses.entry(key.clone()).or_insert(until);
            *p = (*p).max(until);
        }
        if probe && let Some(p) = st.probes.get_mut(&key) {
            p.pending = p.pending.saturating_sub(1);
            p.failed |= failed;
        }
    }
}

/// What opens a breaker: the target failed or could not be reached. A 429
/// is flow, not failure (it slows the key down instead); other 4xx are the
/// caller's problem.
fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::ServerError | Outcome::Timeout | Outcome::Connect | Outcome::Dns | Outcome::Tls)
}

fn jitter(ms: i64, percent: u64) -> i64 {
    ms + (ms.max(0) as u64 * fastrand::u64(0..=percent) / 100) as i64
}

fn hold(wait_ms: i64, reason: &'static str, key: &FlowKey, flow: &FlowRef) -> Admission {
    let wait = Duration::from_millis(wait_ms.max(1_000) as u64).min(MAX_HOLD);
    Admission::Hold { wait, reason, key: key.clone(), flow: flow.clone() }
}

/// The first slot among `0..p` of a bucket of leases that is free (`base`: 0 for the
/// key's own cap, a per-tenant base for a tenant's share).
fn free_leases(s: &FlowShared, base: u32, p: u32, now: EpochMillis) -> Vec<u32> {
    (base..base + p).filter(|i| s.leases.get(i).is_none_or(|v| *v / 1_000 <= now)).collect()
}

/// Where a tenant's share of a host keeps its leases (apart from the key's own 0..32).
fn share_lease_base(flow: &FlowRef) -> u32 {
    let h = flow.tenant.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (h % 100_000 + 1) * 100
}

/// One key's limits for a group: its own policy and the tenant's share of it.
struct Limits<'a> {
    own: Option<&'a FlowPolicy>,
    share: Option<&'a FlowPolicy>,
}

impl<S: FlowPolicies + FlowLimiter, Q, C> Sender<S, Q, C> {
    /// The policies and holds, from the cache while fresh.
    async fn snapshot(&self, now: EpochMillis) -> Arc<FlowSnapshot> {
        let cached = self.flow.lock().snapshot.clone();
        if let Some((at, snap)) = &cached
            && now - at < self.flow.config.cache_ms as i64
        {
            return snap.clone();
        }
        match self.store.flow_snapshot().await {
            Ok(snap) => {
                let snap = Arc::new(snap);
                self.flow.lock().snapshot = Some((now, snap.clone()));
                snap
            }
            Err(e) => {
                // Better stale limits than none, and no limits than a stalled queue.
                tracing::warn!(error = %e, "flow policies unavailable; using the last ones read");
                cached.map(|(_, s)| s).unwrap_or_default()
            }
        }
    }

    /// Decides for each group of messages (indexes into the batch, all with
    /// the same keys) whether they go and when, or wait.
    pub(super) async fn admit(
        &self,
        flow: &FlowRef,
        members: &[usize],
        deadline: Option<EpochMillis>,
    ) -> Vec<(usize, Admission)> {
        let now = self.clock.now();
        let snap = self.snapshot(now).await;
        let primary = flow.primary();
        let mut go: Vec<usize> = members.to_vec();
        let mut out: Vec<(usize, Admission)> = Vec::new();
        let mut probe = false;
        // 1. The primary key's pause and breaker.
        match self.primary_gate(&snap, flow, &primary, now).await {
            PrimaryGate::Open => {}
            PrimaryGate::Hold { wait_ms, reason } => {
                return members.iter().map(|i| (*i, hold(wait_ms, reason, &primary, flow))).collect();
            }
            PrimaryGate::Probe { probes, until } => {
                probe = true;
                let rest = go.split_off((probes as usize).min(go.len()));
                out.extend(rest.into_iter().map(|i| (i, hold(until - now, "half_open", &primary, flow))));
                let token = self.probe_token(&primary);
                let probe = Probe { token, pending: go.len() as u32, failed: false };
                self.flow.lock().probes.insert(primary.clone(), probe);
            }
        }
        // 2. Rate and parallelism of the host key, then of the named key, then
        //    of the tenant's key (its delivery limits across all its targets).
        let mut tickets: HashMap<usize, Ticket> =
            go.iter().map(|i| (*i, Ticket { probe, ..Ticket::default() })).collect();
        let keys = [Some(flow.host_key()), flow.named_key(), Some(flow.tenant_key())];
        for key in keys.into_iter().flatten() {
            let limits = if key.is_host() {
                Limits {
                    own: snap.policy(&key, &PolicyScope::Admin),
                    share: snap.policy(&key, &PolicyScope::Tenant(flow.tenant.clone())),
                }
            } else if key.is_tenant() {
                Limits { own: snap.policy(&key, &PolicyScope::Admin), share: None }
            } else {
                Limits { own: snap.policy(&key, &PolicyScope::Tenant(flow.tenant.clone())), share: None }
            };
            if !limits.own.is_some_and(FlowPolicy::limits) && !limits.share.is_some_and(FlowPolicy::limits) {
                continue;
            }
            if go.is_empty() {
                break;
            }
            let (granted, held) = self.reserve_for(&key, flow, &limits, &go, deadline).await;
            out.extend(held.into_iter().map(|(i, wait, reason)| (i, hold(wait, reason, &key, flow))));
            go = granted.iter().map(|(i, _, _)| *i).collect();
            for (i, at, lease) in granted {
                let t = tickets.entry(i).or_default();
                t.not_before = Some(t.not_before.map_or(at, |n| n.max(at)));
                t.flow = Some(flow.clone());
                t.leases.extend(lease.map(|l| (key.clone(), l)));
            }
        }
        for i in go {
            out.push((i, Admission::Go(tickets.remove(&i).unwrap_or_default())));
        }
        // Leases of messages held by a later key are given back with the batch's.
        let orphaned: Vec<(FlowKey, (u32, i64))> = tickets.into_values().flat_map(|t| t.leases).collect();
        self.release_all(orphaned).await;
        out
    }

    fn probe_token(&self, key: &FlowKey) -> String {
        self.flow.view(key).and_then(|(_, s)| s.probe_token).unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)))
    }

    /// Whether the primary key's pause or breaker holds the group, or makes it a probe.
    async fn primary_gate(&self, snap: &FlowSnapshot, flow: &FlowRef, key: &FlowKey, now: EpochMillis) -> PrimaryGate {
        let view = self.flow.view(key);
        let snap_at = self.flow.lock().snapshot.as_ref().map_or(0, |(at, _)| *at);
        let hold = snap.holds.get(key);
        let paused = view
            .as_ref()
            .and_then(|(_, s)| s.paused_until)
            .into_iter()
            .chain(hold.filter(|h| h.kind == "paused").map(|h| h.until));
        if let Some(until) = paused.max().filter(|u| *u > now) {
            return PrimaryGate::Hold { wait_ms: until - now, reason: "paused" };
        }
        // The newer of the two sources says where the breaker is.
        let (position, until) = match (&view, hold) {
            (Some((at, s)), h) if h.is_none() || *at >= snap_at => (s.breaker, s.breaker_until.unwrap_or(0)),
            (_, Some(h)) if h.kind == "open" => (BreakerPosition::Open, h.until),
            _ => (BreakerPosition::Closed, 0),
        };
        match position {
            BreakerPosition::Closed => PrimaryGate::Open,
            BreakerPosition::Open | BreakerPosition::HalfOpen if until > now => PrimaryGate::Hold {
                wait_ms: if position == BreakerPosition::Open { jitter(until - now, 10) } else { until - now },
                reason: if position == BreakerPosition::Open { "open" } else { "half_open" },
            },
            _ => {
                let settings = self.flow.breaker_of(snap, flow);
                let timeout =
                    if flow.timeout_ms > 0 { flow.timeout_ms } else { crate::domain::RequestSpec::MAX_TIMEOUT_MS };
                let probe_until = now + timeout as i64 + RECORD_MARGIN_MS + self.flow.config.horizon_ms as i64;
                let token = format!("{:016x}", fastrand::u64(..));
                let change = FlowChange::HalfOpen { token: token.clone(), until: probe_until };
                match self.store.change(key, &change, now).await {
                    Ok(Cas::Written(s)) => {
                        self.flow.remember(key, now, &s);
                        log_change(key, &change, &s);
                        PrimaryGate::Probe { probes: settings.probes, until: probe_until }
                    }
                    Ok(Cas::Refused(s)) => {
                        self.flow.remember(key, now, &s);
                        match s.breaker {
                            BreakerPosition::Closed if s.paused_until.is_none_or(|p| p <= now) => PrimaryGate::Open,
                            BreakerPosition::Closed => {
                                PrimaryGate::Hold { wait_ms: s.paused_until.unwrap_or(now) - now, reason: "paused" }
                            }
                            other => PrimaryGate::Hold {
                                wait_ms: s.breaker_until.unwrap_or(now + 1_000) - now,
                                reason: if other == BreakerPosition::Open { "open" } else { "half_open" },
                            },
                        }
                    }
                    Err(e) => {
                        tracing::warn!(flow_key = %key, error = %e, "could not claim the breaker's probe; holding");
                        PrimaryGate::Hold { wait_ms: 1_000, reason: "open" }
                    }
                }
            }
        }
    }
}

/// What the primary key says about a group.
enum PrimaryGate {
    Open,
    Hold {
        wait_ms: i64,
        reason: &'static str,
    },
    /// This sender won the half-open claim: send up to `probes`, hold the rest until `until`.
    Probe {
        probes: u32,
        until: EpochMillis,
    },
}

pub(super) use settle::emit_throttled;
use settle::log_change;
