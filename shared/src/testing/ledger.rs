//! The fake store's delivery ledger and reconcile index, with the adapter's
//! conditions: a claim takes a due unit that is waiting or whose lease
//! expired, a finish applies only for the attempt that holds the lease, and
//! the index is read in check-time order, page by page.

use super::{FakeStore, Row, shard_of, unit_key};
use crate::domain::{Attempt, EpochMillis, RequestSpec, RetryPolicy, TaskId, TaskKind, TaskState, TaskStatus};
use crate::ports::{
    CandidatePage, Claim, DeliveryLedger, ReconcileIndex, Record, Retried, StoreError, Transition, Unit,
};

/// A unit due within this much is claimable (the adapter's clock-skew slack).
const DUE_SLACK_MS: i64 = 1_000;

fn waiting(s: TaskStatus) -> bool {
    matches!(s, TaskStatus::Pending | TaskStatus::Retrying | TaskStatus::Scheduled)
}

impl DeliveryLedger for FakeStore {
    async fn claim(
        &self,
        unit: &Unit,
        now: EpochMillis,
        lease_margin: EpochMillis,
        max_timeout_ms: Option<u64>,
    ) -> Result<Claim, StoreError> {
        let mut t = self.lock();
        let Some(row) = t.states.get_mut(&unit_key(unit)) else { return Ok(Claim::Missing) };
        let st = &mut row.state;
        let expired = st.status == TaskStatus::Sending && st.lease_until.is_some_and(|l| l < now);
        if st.status == TaskStatus::Sending
            && !expired
            && let Some(lease) = st.lease_until
        {
            // Held by another sender: come back when its lease ends.
            return Ok(Claim::NotDue(lease + 1));
        }
        if !(waiting(st.status) || expired) {
            return Ok(Claim::NotClaimable(st.status));
        }
        if let Some(due) = st.due_at.filter(|due| *due > now + DUE_SLACK_MS) {
            return Ok(if waiting(st.status) { Claim::NotDue(due) } else { Claim::NotClaimable(st.status) });
        }
        if max_timeout_ms.is_some_and(|b| st.timeout_ms > b) {
            return Ok(Claim::NoTime);
        }
        let interrupted_at = expired.then(|| row.claimed_at.unwrap_or(st.updated_at));
        st.status = TaskStatus::Sending;
        st.attempts += 1;
        st.lease_until = Some(now + lease_margin + st.timeout_ms as i64);
        st.updated_at = now;
        row.claimed_at = Some(now);
        // The fake keeps requests apart from states: the sender reads them with `get_spec`.
        Ok(Claim::Claimed { state: Box::new(row.state.clone()), interrupted_at, inline: None, item_bytes: 0 })
    }

    async fn read_state(&self, unit: &Unit) -> Result<Option<TaskState>, StoreError> {
        Ok(self.state(unit))
    }

    async fn get_spec(&self, id: &TaskId) -> Result<Option<(RequestSpec, RetryPolicy)>, StoreError> {
        Ok(self.lock().specs.get(id.as_str()).map(|(spec, retry, _)| (spec.clone(), retry.clone())))
    }

    async fn record_attempt(&self, unit: &Unit, attempt: &Attempt) -> Result<(), StoreError> {
        self.lock().attempts.insert((unit_key(unit), attempt.number), attempt.clone());
        Ok(())
    }

    async fn record_interrupted(&self, unit: &Unit, attempt: &Attempt) -> Result<(), StoreError> {
        self.lock().attempts.entry((unit_key(unit), attempt.number)).or_insert_with(|| attempt.clone());
        Ok(())
    }

    /// Like the adapter: a unit gone meanwhile (purged) has nothing to cancel.
    async fn record_on_scheduler(&self, unit: &Unit, schedule: &str) -> Result<(), StoreError> {
        if let Some(row) = self.lock().states.get_mut(&unit_key(unit)) {
            row.state.scheduler = crate::domain::SchedulerHold::Schedule(schedule.to_owned());
        }
        Ok(())
    }

    /// The attempt is recorded whether the transition applies or not (its request went out).
    async fn finish(
        &self,
        unit: &Unit,
        attempt: u32,
        t: &Transition,
        now: EpochMillis,
        record: Option<Record<'_>>,
    ) -> Result<bool, StoreError> {
        let grace = self.grace_ms;
        let mut tables = self.lock();
        if let Some(r) = record {
            tables.attempts.insert((unit_key(unit), r.attempt.number), r.attempt.clone());
        }
        let Some(row) = tables.states.get_mut(&unit_key(unit)) else { return Ok(false) };
        let st = &mut row.state;
        if st.status != TaskStatus::Sending || st.attempts != attempt {
            return Ok(false);
        }
        st.updated_at = now;
        st.lease_until = None;
        match t {
            Transition::Succeeded { status } => {
                st.status = TaskStatus::Succeeded;
                st.due_at = None;
                if status.is_some() {
                    st.last_status = *status;
                }
            }
            Transition::Retry { due_at, status } => {
                st.status = TaskStatus::Retrying;
                st.due_at = Some(*due_at);
                st.last_status = Some(status.unwrap_or(0));
                row.recon = Some(due_at + grace);
            }
            Transition::Failed { reason, status } => {
                st.status = TaskStatus::Failed;
                st.due_at = None;
                st.failure_reason = Some(reason.clone());
                st.last_status = Some(status.unwrap_or(0));
            }
        }
        Ok(true)
    }

    async fn start_run(&self, parent: &TaskState, run: EpochMillis) -> Result<(), StoreError> {
        let state = TaskState {
            run: Some(run),
            kind: TaskKind::Cron,
            status: TaskStatus::Pending,
            attempts: 0,
            retry_base: 0,
            created_at: run,
            updated_at: run,
            due_at: Some(run),
            lease_until: None,
            failure_reason: None,
            last_status: None,
            ..parent.clone()
        };
        let recon = Some(run + self.grace_ms);
        let key = (parent.id.as_str().to_owned(), Some(run));
        self.lock().states.entry(key).or_insert(Row { state, recon, claimed_at: None });
        Ok(())
    }

    async fn end_run(&self, unit: &Unit, reason: &str, now: EpochMillis) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(row) = t.states.get_mut(&unit_key(unit)) else { return Ok(false) };
        let st = &mut row.state;
        let expired = st.status == TaskStatus::Sending && st.lease_until.is_some_and(|l| l < now);
        if !(waiting(st.status) || expired) {
            return Ok(false);
        }
        st.status = TaskStatus::Cancelled;
        st.updated_at = now;
        st.failure_reason = Some(reason.to_owned());
        st.lease_until = None;
        st.due_at = None;
        Ok(true)
    }

    async fn retry_run(&self, unit: &Unit, more: u32, now: EpochMillis) -> Result<Retried, StoreError> {
        let grace = self.grace_ms;
        let mut t = self.lock();
        let Some(row) = t.states.get_mut(&unit_key(unit)) else { return Ok(Retried::Missing) };
        Ok(retry_row(row, more, now, grace))
    }
}

/// Moves a failed unit back to pending for a new round of `more` attempts.
pub(super) fn retry_row(row: &mut Row, more: u32, now: EpochMillis, grace: i64) -> Retried {
    let st = &mut row.state;
    if st.status != TaskStatus::Failed {
        return Retried::NotFailed(st.status);
    }
    st.status = TaskStatus::Pending;
    st.due_at = Some(now);
    st.updated_at = now;
    st.retry_base = st.attempts;
    st.max_attempts = st.attempts + more;
    st.failure_reason = None;
    row.recon = Some(now + grace);
    Retried::Done
}

impl ReconcileIndex for FakeStore {
    /// The cursor is the number of entries already read in this window.
    async fn reconcile_page(
        &self,
        shard: u32,
        from: EpochMillis,
        to: EpochMillis,
        limit: usize,
        start: Option<&str>,
    ) -> Result<CandidatePage, StoreError> {
        let t = self.lock();
        let mut found: Vec<(EpochMillis, &Row)> = t
            .states
            .values()
            .filter_map(|r| r.recon.filter(|at| (from..=to).contains(at)).map(|at| (at, r)))
            .filter(|(_, r)| shard_of(&r.state.id) == shard)
            .collect();
        found.sort_by_key(|(at, r)| (*at, r.state.id.as_str().to_owned(), r.state.run));
        let skip: usize = start.and_then(|s| s.parse().ok()).unwrap_or(0);
        let page: Vec<_> = found.iter().skip(skip).take(limit.clamp(1, 100)).collect();
        let more = skip + page.len() < found.len();
        let items = page.iter().map(|(_, r)| r.state.clone()).collect();
        let (next, checked_to) = match (more, page.last()) {
            (true, Some((at, _))) => (Some((skip + page.len()).to_string()), *at),
            _ => (None, to),
        };
        Ok(CandidatePage { items, next, checked_to })
    }

    async fn push_reconcile(&self, unit: &Unit, at: EpochMillis) -> Result<(), StoreError> {
        if let Some(row) = self.lock().states.get_mut(&unit_key(unit)).filter(|r| r.recon.is_some()) {
            row.recon = Some(at);
        }
        Ok(())
    }

    async fn watermark(&self, shard: u32) -> Result<Option<EpochMillis>, StoreError> {
        Ok(self.watermark_of(shard))
    }

    async fn set_watermark(&self, shard: u32, at: EpochMillis) -> Result<(), StoreError> {
        self.lock().watermarks.insert(shard, at);
        Ok(())
    }
}
