//! A key's reservation for a group (rate slots and leases in one
//! conditional write), a fresh slot for a request whose claim ran late,
//! the adaptive rate's way back up, and leases given back.

use std::collections::HashMap;

use super::super::{RECORD_MARGIN_MS, Sender};
use super::{LATE_MS, Limits, STALE_LEASES_MS, Ticket, free_leases, jitter, log_change, share_lease_base};
use crate::domain::{
    BreakerPosition, BucketId, BucketWrite, Cas, EpochMillis, FlowChange, FlowKey, FlowPolicy, FlowRef, FlowShared,
    PolicyScope, RESTORE_AFTER_MS, Reservation, plan_bucket, restored, slot_at,
};
use crate::ports::{FlowLimiter, FlowPolicies};

impl<S: FlowPolicies + FlowLimiter, Q, C> Sender<S, Q, C> {
    /// One key's reservation for `members`: those granted (index, send
    /// time, lease) and those held (index, wait ms, reason). One write, or
    /// two when the sender's view of the key was stale.
    pub(super) async fn reserve_for(
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
    pub(in crate::sender) async fn reslot(
        &self,
        ticket: &Ticket,
        deadline: Option<EpochMillis>,
    ) -> Option<EpochMillis> {
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
    pub(super) async fn restore_factor(&self, key: &FlowKey, limits: &Limits<'_>, view: &FlowShared) {
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
    pub(in crate::sender) async fn release_all(&self, leases: Vec<(FlowKey, (u32, i64))>) {
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
}
