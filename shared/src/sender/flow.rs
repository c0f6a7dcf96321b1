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

use serde_json::{Map, Value, json};

use super::{RECORD_MARGIN_MS, Sender};
use crate::config::FlowConfig;
use crate::domain::{
    Attempt, BreakerPosition, BreakerSettings, BucketId, BucketWrite, Cas, EpochMillis, FlowChange, FlowKey,
    FlowPolicy, FlowRef, FlowShared, FlowSnapshot, HALVE_SPACING_MS, MIN_FACTOR, Outcome, PolicyScope,
    RESTORE_AFTER_MS, Reservation, Tally, halved, now_millis, plan_bucket, restored, slot_at,
};
use crate::metrics;
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
        // 2. Rate and parallelism of the host key, then of the named key.
        let mut tickets: HashMap<usize, Ticket> =
            go.iter().map(|i| (*i, Ticket { probe, ..Ticket::default() })).collect();
        let keys = [Some(flow.host_key()), flow.named_key()];
        for key in keys.into_iter().flatten() {
            let limits = if key.is_host() {
                Limits {
                    own: snap.policy(&key, &PolicyScope::Admin),
                    share: snap.policy(&key, &PolicyScope::Tenant(flow.tenant.clone())),
                }
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

    /// One key's reservation for `members`: those granted (index, send
    /// time, lease) and those held (index, wait ms, reason). One write, or
    /// two when the sender's view of the key was stale.
    async fn reserve_for(
        &self,
        key: &FlowKey,
        flow: &FlowRef,
        limits: &Limits<'_>,
        members: &[usize],
        deadline: Option<EpochMillis>,
    ) -> (Vec<(usize, EpochMillis, Option<(u32, i64)>)>, Vec<(usize, i64, &'static str)>) {
        let (mut view_at, mut view) = self.flow.view(key).unwrap_or((0, FlowShared::new()));
        let n = members.len() as u32;
        let horizon_us = self.flow.config.horizon_ms as i64 * 1_000;
        let timeout = if flow.timeout_ms > 0 { flow.timeout_ms } else { crate::domain::RequestSpec::MAX_TIMEOUT_MS };
        let hold_all = |wait: i64, reason: &'static str| -> (Vec<_>, Vec<_>) {
            (Vec::new(), members.iter().enumerate().map(|(j, i)| (*i, wait + j as i64 * 50, reason)).collect())
        };
        self.restore_factor(key, limits, &view).await;
        for round in 0..2 {
            let now = self.clock.now();
            // Slots start once a claim has likely finished: a request whose claim
            // ends after its slot leaves late and bunches with the next ones.
            let now_us = (now + self.flow.lead_ms()) * 1_000;
            if view.paused_until.is_some_and(|p| p > now) {
                return hold_all(view.paused_until.unwrap_or(now) - now, "paused");
            }
            if view.breaker != BreakerPosition::Closed {
                return hold_all(view.breaker_until.unwrap_or(now + 1_000) - now, "open");
            }
            let mut k = n;
            let mut buckets: Vec<(BucketId, i64, u32, Option<i64>)> = Vec::new(); // id, interval, burst, cached next
            for (policy, bucket) in [(limits.own, BucketId::Key), (limits.share, BucketId::share(&flow.tenant))] {
                if let Some(rate) = policy.and_then(|p| p.rate) {
                    let burst = policy.map_or(1, FlowPolicy::burst);
                    buckets.push((bucket.clone(), rate.interval_us(view.factor), burst, view.next_of(&bucket)));
                }
            }
            let mut forms = Vec::new();
            for (id, interval, burst, cached) in &buckets {
                match plan_bucket(*cached, now_us, *interval, *burst, horizon_us, n) {
                    Some((form, kb)) => {
                        k = k.min(kb);
                        forms.push((id.clone(), form, *interval));
                    }
                    None => {
                        let next = cached.unwrap_or(now_us);
                        return hold_all((next - horizon_us) / 1_000 - now + jitter(500, 100), "rate");
                    }
                }
            }
            let mut lease_slots: Vec<u32> = Vec::new();
            for (policy, base) in [(limits.own, 0), (limits.share, share_lease_base(flow))] {
                if let Some(p) = policy.and_then(|p| p.parallelism) {
                    let mut free = free_leases(&view, base, p, now);
                    if free.is_empty() && round == 0 && now - view_at >= STALE_LEASES_MS {
                        // Another sender may have given its leases back since this view: the
                        // write's condition is the authority (refused, it brings the fresh state).
                        let mut soonest: Vec<(i64, u32)> =
                            (base..base + p).map(|i| (view.leases.get(&i).copied().unwrap_or(0), i)).collect();
                        soonest.sort_unstable();
                        free = soonest.into_iter().map(|(_, i)| i).collect();
                    }
                    if free.is_empty() {
                        return hold_all(jitter(1_000, 100), "parallelism");
                    }
                    k = k.min(free.len() as u32);
                    lease_slots.extend(free);
                }
            }
            let expiry = now + 2 * self.flow.config.horizon_ms as i64 + timeout as i64 + self.flow.lease_margin_ms;
            let nonce = fastrand::i64(0..1_000);
            let mut leases: Vec<(u32, i64)> = Vec::new();
            let mut per_member: Vec<Vec<(u32, i64)>> = vec![Vec::new(); k as usize];
            for (policy, base) in [(limits.own, 0u32), (limits.share, share_lease_base(flow))] {
                if policy.and_then(|p| p.parallelism).is_some() {
                    let mine: Vec<u32> = lease_slots
                        .iter()
                        .copied()
                        .filter(|s| *s >= base && *s < base + 100)
                        .take(k as usize)
                        .collect();
                    for (j, slot) in mine.into_iter().enumerate() {
                        let l = (slot, expiry * 1_000 + nonce);
                        leases.push(l);
                        per_member[j].push(l);
                    }
                }
            }
            let writes: Vec<BucketWrite> = forms
                .iter()
                .map(|(id, form, interval)| BucketWrite {
                    bucket: id.clone(),
                    form: form.clone(),
                    add_us: i64::from(k) * interval,
                })
                .collect();
            let r = Reservation { buckets: writes, leases, now };
            let res = self.store.reserve(key, &r).await;
            match res {
                Ok(Cas::Written(s)) => {
                    self.flow.remember(key, now, &s);
                    tracing::debug!(flow_key = %key, granted = k, asked = n, writes = round + 1, "flow.reserve");
                    let mut granted = Vec::new();
                    for (j, i) in members.iter().take(k as usize).enumerate() {
                        let at_us = forms
                            .iter()
                            .map(|(id, _, interval)| slot_at(s.next_of(id).unwrap_or(now_us), k, j as u32, *interval))
                            .max()
                            .unwrap_or(now_us);
                        let at = (at_us / 1_000).max(now);
                        if deadline.is_some_and(|d| at + timeout as i64 + RECORD_MARGIN_MS >= d) {
                            continue;
                        }
                        granted.push((*i, at, per_member[j].first().copied()));
                    }
                    // A member past the deadline or beyond the grant waits for the key's next slot.
                    let next_ms = forms.iter().map(|(id, _, _)| s.next_of(id).unwrap_or(now_us) / 1_000).max();
                    let interval_ms = forms.iter().map(|(_, _, t)| t / 1_000).max().unwrap_or(0);
                    let granted_ids: Vec<usize> = granted.iter().map(|g| g.0).collect();
                    let held = members
                        .iter()
                        .filter(|i| !granted_ids.contains(i))
                        .enumerate()
                        .map(|(j, i)| match next_ms {
                            Some(next) => (*i, next - now + j as i64 * interval_ms, "rate"),
                            None => (*i, jitter(1_000, 100), "parallelism"),
                        })
                        .collect();
                    // Leases taken for members past the deadline go back with the batch's.
                    let unused: Vec<(FlowKey, (u32, i64))> = per_member
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !granted_ids.contains(&members[*j]))
                        .flat_map(|(_, ls)| ls.iter().map(|l| (key.clone(), *l)))
                        .collect();
                    self.release_all(unused).await;
                    return (granted, held);
                }
                Ok(Cas::Refused(s)) => {
                    self.flow.remember(key, now, &s);
                    tracing::debug!(flow_key = %key, round, "flow.reserve refused");
                    view = s;
                    view_at = now;
                }
                Err(e) => {
                    tracing::warn!(flow_key = %key, error = %e, "flow reservation failed; holding the group");
                    return hold_all(jitter(1_000, 100), "rate");
                }
            }
        }
        // Refused twice: the key is busy past the horizon or its leases are taken.
        let now = self.clock.now();
        if view.paused_until.is_some_and(|p| p > now) || view.breaker != BreakerPosition::Closed {
            return hold_all(1_000, "paused");
        }
        let next = view.next_us.map_or(now, |n| n / 1_000);
        if limits.own.and_then(|p| p.rate).is_some() || limits.share.and_then(|p| p.rate).is_some() {
            hold_all((next - self.flow.config.horizon_ms as i64 - now).max(0) + jitter(500, 100), "rate")
        } else {
            hold_all(jitter(1_000, 100), "parallelism")
        }
    }

    /// When a request whose claim ended after its slot may leave: a fresh
    /// slot on each rate-limited key (one write per key; parallelism leases
    /// are already held), waiting for it while the invocation has time.
    /// `None`: no slot came before the deadline; the request leaves now.
    pub(super) async fn reslot(&self, ticket: &Ticket, deadline: Option<EpochMillis>) -> Option<EpochMillis> {
        let (flow, slot) = (ticket.flow.as_ref()?, ticket.not_before?);
        let now = self.clock.now();
        if now <= slot + LATE_MS {
            return Some(slot);
        }
        let snap = self.snapshot(now).await;
        let rate_only = |p: Option<&FlowPolicy>| {
            p.filter(|p| p.rate.is_some()).map(|p| FlowPolicy { parallelism: None, ..p.clone() })
        };
        let mut at = now;
        for key in [Some(flow.host_key()), flow.named_key()].into_iter().flatten() {
            let (own, share) = if key.is_host() {
                (
                    rate_only(snap.policy(&key, &PolicyScope::Admin)),
                    rate_only(snap.policy(&key, &PolicyScope::Tenant(flow.tenant.clone()))),
                )
            } else {
                (rate_only(snap.policy(&key, &PolicyScope::Tenant(flow.tenant.clone()))), None)
            };
            if own.is_none() && share.is_none() {
                continue;
            }
            let limits = Limits { own: own.as_ref(), share: share.as_ref() };
            for tries in 1.. {
                let (granted, held) = self.reserve_for(&key, flow, &limits, &[0], deadline).await;
                if let Some((_, t, _)) = granted.first() {
                    at = at.max(*t);
                    break;
                }
                let wait = held.first().map_or(1_000, |(_, w, _)| *w).max(LATE_MS);
                let until = self.clock.now() + wait;
                if tries >= 5 || deadline.is_some_and(|d| until + flow.timeout_ms as i64 + RECORD_MARGIN_MS >= d) {
                    tracing::warn!(flow_key = %key, tries, "flow.late_send: no new slot in time; the claimed request leaves now");
                    return None;
                }
                self.clock.sleep_until(until).await;
            }
        }
        tracing::debug!(late_ms = now - slot, "flow.reslot");
        Some(at)
    }

    /// One clean minute after the last 429/503, a halved rate steps back up.
    async fn restore_factor(&self, key: &FlowKey, limits: &Limits<'_>, view: &FlowShared) {
        let now = self.clock.now();
        let adaptive = limits.own.is_some_and(|p| p.adaptive && p.rate.is_some());
        let last = view.factor_at.max(view.throttled_at).unwrap_or(0);
        if !adaptive || view.factor >= 1.0 || now - last < RESTORE_AFTER_MS {
            return;
        }
        let change = FlowChange::Factor {
            from: view.factor,
            to: restored(view.factor),
            why: format!("no 429/503 for {} s", (now - last) / 1_000),
        };
        if let Ok(Cas::Written(s)) = self.store.change(key, &change, now).await {
            log_change(key, &change, &s);
            self.flow.remember(key, now, &s);
        }
    }

    /// Gives leases back, one write per key.
    pub(super) async fn release_all(&self, leases: Vec<(FlowKey, (u32, i64))>) {
        let mut by_key: HashMap<FlowKey, Vec<(u32, i64)>> = HashMap::new();
        for (k, l) in leases {
            by_key.entry(k).or_default().push(l);
        }
        for (key, ls) in by_key {
            match self.store.release(&key, &ls).await {
                Ok(()) => {
                    // This sender's own view must not keep a lease it gave back.
                    let mut st = self.flow.lock();
                    if let Some((_, view)) = st.views.get_mut(&key) {
                        for (slot, value) in &ls {
                            if view.leases.get(slot) == Some(value) {
                                view.leases.remove(slot);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(flow_key = %key, error = %e, "could not release leases; they expire"),
            }
        }
    }

    /// After a batch: pauses, probe verdicts, then one report per key that
    /// saw failures or 429/503, and the breaker or rate changes it calls for.
    pub(super) async fn settle(&self, snap_flows: &HashMap<FlowKey, FlowRef>) {
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
    pub(super) async fn write_pauses(&self) {
        let pauses: Vec<(FlowKey, EpochMillis)> = self.flow.lock().pauses.drain().collect();
        let now = self.clock.now();
        for (key, until) in pauses {
            let change = FlowChange::Pause { until, why: "Retry-After on a 429/503".to_owned() };
            self.apply(&key, &change, now).await;
        }
    }

    async fn apply(&self, key: &FlowKey, change: &FlowChange, now: EpochMillis) {
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

/// One JSON log line per state change, and the breaker's EMF counts.
fn log_change(key: &FlowKey, change: &FlowChange, s: &FlowShared) {
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
        println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), &[(m, 1.0)], props));
    }
}

/// The EMF line of one held message.
pub(super) fn emit_throttled(key: &FlowKey, reason: &str, task: Option<&str>, held: u32) {
    let mut props = Map::new();
    props.insert("flow_key".into(), Value::String(key.to_string()));
    props.insert("reason".into(), Value::String(reason.to_owned()));
    props.insert("held".into(), json!(held));
    if let Some(t) = task {
        props.insert("task_id".into(), Value::String(t.to_owned()));
    }
    println!("{}", metrics::emf_line(metrics::SENDER_SERVICE, now_millis(), &[(metrics::THROTTLED, 1.0)], props));
}
