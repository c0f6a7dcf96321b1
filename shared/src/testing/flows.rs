//! The fake store's flow control: policies and holds (the `FLOWS`
//! partition), each key's shared state under the same conditions the
//! DynamoDB adapter writes with, its history, and a count of writes per key
//! (what the cost rule "≤ 1 write per (batch, key)" is checked against).

use std::collections::BTreeMap;

use super::FakeStore;
use crate::domain::{
    BreakerPosition, BucketForm, Cas, EpochMillis, FlowChange, FlowEvent, FlowKey, FlowPolicy, FlowShared,
    FlowSnapshot, Hold, PolicyScope, Reservation, Tally,
};
use crate::ports::{FlowLimiter, FlowPolicies, StoreError};

#[derive(Default)]
pub(super) struct FlowTables {
    policies: BTreeMap<(FlowKey, PolicyScope), FlowPolicy>,
    holds: BTreeMap<FlowKey, Hold>,
    states: BTreeMap<FlowKey, FlowShared>,
    history: BTreeMap<FlowKey, Vec<FlowEvent>>,
    writes: BTreeMap<FlowKey, u32>,
}

/// Writes to each key's state and hold items so far.
pub type FlowWrites = BTreeMap<FlowKey, u32>;

impl FakeStore {
    /// Every write to a key's flow items so far (state, hold, history: one each).
    pub fn flow_writes(&self) -> FlowWrites {
        self.lock().flows.writes.clone()
    }

    /// A key's shared state as stored.
    pub fn flow_shared(&self, key: &FlowKey) -> Option<FlowShared> {
        self.lock().flows.states.get(key).cloned()
    }
}

impl FlowTables {
    fn count(&mut self, key: &FlowKey) {
        *self.writes.entry(key.clone()).or_default() += 1;
    }

    fn state(&self, key: &FlowKey) -> FlowShared {
        self.states.get(key).cloned().unwrap_or_else(FlowShared::new)
    }

    fn hold(&mut self, key: &FlowKey, kind: &str, until: EpochMillis) {
        self.holds.insert(key.clone(), Hold { kind: kind.to_owned(), until });
    }

    fn event(&mut self, key: &FlowKey, now: EpochMillis, change: &FlowChange, until: Option<EpochMillis>) {
        let why = match change {
            FlowChange::Open { why, .. }
            | FlowChange::Reopen { why, .. }
            | FlowChange::Pause { why, .. }
            | FlowChange::Factor { why, .. } => why.clone(),
            FlowChange::HalfOpen { .. } => "open span over: probing".to_owned(),
            FlowChange::Close { .. } => "probes succeeded".to_owned(),
        };
        self.history.entry(key.clone()).or_default().push(FlowEvent {
            at: now,
            to: change.name().to_owned(),
            why,
            until,
        });
    }
}

/// Whether the reservation's conditions hold on `s` at `now`.
fn reservable(s: &FlowShared, r: &Reservation) -> bool {
    let now = r.now;
    if s.paused_until.is_some_and(|p| p > now) || s.breaker != BreakerPosition::Closed {
        return false;
    }
    let buckets_ok = r.buckets.iter().all(|b| {
        let next = s.next_of(&b.bucket);
        match b.form {
            BucketForm::Idle { base_us } => next.is_none_or(|n| n <= base_us),
            BucketForm::Busy { base_us, ceiling_us } => next.is_some_and(|n| n > base_us && n <= ceiling_us),
        }
    });
    buckets_ok && r.leases.iter().all(|(slot, _)| s.leases.get(slot).is_none_or(|v| *v < now * 1_000))
}

impl FlowPolicies for FakeStore {
    async fn flow_snapshot(&self) -> Result<FlowSnapshot, StoreError> {
        let t = self.lock();
        Ok(FlowSnapshot {
            policies: t.flows.policies.iter().map(|(k, p)| (k.clone(), p.clone())).collect(),
            holds: t.flows.holds.iter().map(|(k, h)| (k.clone(), h.clone())).collect(),
        })
    }

    async fn get_policy(&self, key: &FlowKey, scope: &PolicyScope) -> Result<Option<FlowPolicy>, StoreError> {
        Ok(self.lock().flows.policies.get(&(key.clone(), scope.clone())).cloned())
    }

    async fn put_policy(&self, key: &FlowKey, scope: &PolicyScope, policy: &FlowPolicy) -> Result<bool, StoreError> {
        Ok(self.lock().flows.policies.insert((key.clone(), scope.clone()), policy.clone()).is_none())
    }

    async fn delete_policy(&self, key: &FlowKey, scope: &PolicyScope) -> Result<bool, StoreError> {
        Ok(self.lock().flows.policies.remove(&(key.clone(), scope.clone())).is_some())
    }

    async fn flow_state(
        &self,
        key: &FlowKey,
        history: usize,
    ) -> Result<(Option<FlowShared>, Vec<FlowEvent>), StoreError> {
        let t = self.lock();
        let events =
            t.flows.history.get(key).map_or_else(Vec::new, |h| h.iter().rev().take(history).cloned().collect());
        Ok((t.flows.states.get(key).cloned(), events))
    }
}

impl FlowLimiter for FakeStore {
    async fn reserve(&self, key: &FlowKey, r: &Reservation) -> Result<Cas, StoreError> {
        let mut t = self.lock();
        t.flows.count(key);
        let mut s = t.flows.state(key);
        if !reservable(&s, r) {
            return Ok(Cas::Refused(s));
        }
        for b in &r.buckets {
            let after = match b.form {
                BucketForm::Idle { base_us } => base_us + b.add_us,
                BucketForm::Busy { .. } => s.next_of(&b.bucket).unwrap_or_default() + b.add_us,
            };
            match &b.bucket {
                crate::domain::BucketId::Key => s.next_us = Some(after),
                crate::domain::BucketId::Share(id) => {
                    s.shares.insert(id.clone(), after);
                }
            }
        }
        for (slot, value) in &r.leases {
            s.leases.insert(*slot, *value);
        }
        t.flows.states.insert(key.clone(), s.clone());
        Ok(Cas::Written(s))
    }

    async fn release(&self, key: &FlowKey, leases: &[(u32, i64)]) -> Result<(), StoreError> {
        let mut t = self.lock();
        t.flows.count(key);
        if let Some(s) = t.flows.states.get_mut(key) {
            for (slot, value) in leases {
                if s.leases.get(slot) == Some(value) {
                    s.leases.remove(slot);
                }
            }
        }
        Ok(())
    }

    async fn report(
        &self,
        key: &FlowKey,
        tally: &Tally,
        window_start: EpochMillis,
        now: EpochMillis,
    ) -> Result<FlowShared, StoreError> {
        let mut t = self.lock();
        t.flows.count(key);
        let mut s = t.flows.state(key);
        if s.window_start.is_none_or(|w| w < window_start) {
            s.window_start = Some(window_start);
            s.window_requests = 0;
            s.window_failures = 0;
        }
        s.window_requests += tally.requests;
        s.window_failures += tally.failures;
        if tally.throttles > 0 {
            s.throttles += tally.throttles;
            s.throttled_at = Some(now);
        }
        t.flows.states.insert(key.clone(), s.clone());
        Ok(s)
    }

    async fn change(&self, key: &FlowKey, change: &FlowChange, now: EpochMillis) -> Result<Cas, StoreError> {
        let mut t = self.lock();
        t.flows.count(key);
        let mut s = t.flows.state(key);
        let owns = |s: &FlowShared, token: &str| {
            s.breaker == BreakerPosition::HalfOpen && s.probe_token.as_deref() == Some(token)
        };
        let (ok, hold) = match change {
            FlowChange::Open { trips, until, .. } => {
                let ok = s.breaker == BreakerPosition::Closed;
                if ok {
                    s.breaker = BreakerPosition::Open;
                    s.breaker_until = Some(*until);
                    s.breaker_since = Some(now);
                    s.trips = *trips;
                }
                (ok, Some(("open", *until)))
            }
            FlowChange::HalfOpen { token, until } => {
                let ok = (s.breaker == BreakerPosition::Open && s.breaker_until.is_some_and(|u| u <= now))
                    || (s.breaker == BreakerPosition::HalfOpen && s.breaker_until.is_some_and(|u| u < now));
                if ok {
                    s.breaker = BreakerPosition::HalfOpen;
                    s.breaker_until = Some(*until);
                    s.breaker_since = Some(now);
                    s.probe_token = Some(token.clone());
                }
                (ok, None)
            }
            FlowChange::Close { token } => {
                let ok = owns(&s, token);
                if ok {
                    s.breaker = BreakerPosition::Closed;
                    s.breaker_until = None;
                    s.breaker_since = Some(now);
                    s.probe_token = None;
                    s.closed_at = Some(now);
                    s.window_start = None;
                    s.window_requests = 0;
                    s.window_failures = 0;
                }
                (ok, Some(("closed", now)))
            }
            FlowChange::Reopen { token, trips, until, .. } => {
                let ok = owns(&s, token);
                if ok {
                    s.breaker = BreakerPosition::Open;
                    s.breaker_until = Some(*until);
                    s.breaker_since = Some(now);
                    s.probe_token = None;
                    s.trips = *trips;
                }
                (ok, Some(("open", *until)))
            }
            FlowChange::Pause { until, .. } => {
                let ok = s.paused_until.is_none_or(|p| p < *until);
                if ok {
                    s.paused_until = Some(*until);
                }
                (ok, Some(("paused", *until)))
            }
            FlowChange::Factor { from, to, .. } => {
                let ok = (s.factor - from).abs() < 1e-9;
                if ok {
                    s.factor = *to;
                    s.factor_at = Some(now);
                    s.throttles = 0;
                }
                (ok, None)
            }
        };
        if !ok {
            return Ok(Cas::Refused(s));
        }
        t.flows.states.insert(key.clone(), s.clone());
        if let Some((kind, until)) = hold {
            t.flows.count(key);
            t.flows.hold(key, kind, until);
        }
        let until = match change {
            FlowChange::Open { until, .. } | FlowChange::Reopen { until, .. } | FlowChange::Pause { until, .. } => {
                Some(*until)
            }
            _ => None,
        };
        t.flows.event(key, now, change, until);
        Ok(Cas::Written(s))
    }
}
