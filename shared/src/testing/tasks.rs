//! The fake store's tasks as the API sees them. A listing's cursor names
//! the last task returned, like the adapter's key cursor, so a task that
//! leaves the filter between pages does not shift the next page; the conditions follow the adapter: a cancel or an update
//! only before the end, a manual retry only of a failed one-off task, a purge
//! only once final.

use super::ledger::retry_row;
use super::{FakeStore, Row, Tables};
use crate::domain::{
    Attempt, EpochMillis, NewTask, RequestSpec, RetryPolicy, Schedule, TaskId, TaskKind, TaskState, TaskStatus,
    TenantId,
};
use crate::ports::{
    Cancelled, Created, ExpiredGroup, ListFilter, Page, Retried, StoreError, StoredTask, TaskStore, UniqueKey,
};

fn unique(tenant: &TenantId, key: &UniqueKey) -> (TenantId, String) {
    match key {
        UniqueKey::BusinessId(b) => (tenant.clone(), format!("BID#{b}")),
        UniqueKey::IdempotencyKey(k) => (tenant.clone(), format!("IDEM#{k}")),
    }
}

fn page_of<T: Clone>(all: &[T], limit: usize, cursor: Option<&str>) -> Page<T> {
    let skip: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
    let items: Vec<T> = all.iter().skip(skip).take(limit.max(1)).cloned().collect();
    let end = skip + items.len();
    Page { items, cursor: (end < all.len()).then(|| end.to_string()) }
}

fn parent_mut<'a>(t: &'a mut Tables, id: &TaskId) -> Option<&'a mut Row> {
    t.states.get_mut(&(id.as_str().to_owned(), None))
}

impl TaskStore for FakeStore {
    async fn create(&self, task: &NewTask, key: Option<&UniqueKey>) -> Result<Created, StoreError> {
        if let Some(k) = key {
            let mut t = self.lock();
            let u = unique(&task.tenant, k);
            if let Some(existing) = t.unique.get(&u) {
                return Ok(Created::Existing(existing.clone()));
            }
            t.unique.insert(u, task.id.clone());
        }
        self.insert(task);
        Ok(Created::New)
    }

    async fn list_together(&self, _tasks: &[&NewTask]) -> Result<bool, StoreError> {
        // The fake lists every task it holds.
        Ok(true)
    }

    async fn create_many(&self, tasks: &[NewTask], _listed: bool) -> Result<Vec<bool>, StoreError> {
        Ok(tasks.iter().map(|task| self.insert(task)).map(|()| true).collect())
    }

    async fn discard(&self, task: &NewTask, key: Option<&UniqueKey>) -> Result<bool, StoreError> {
        let mut t = self.lock();
        if let Some(k) = key {
            let u = unique(&task.tenant, k);
            if t.unique.get(&u) == Some(&task.id) {
                t.unique.remove(&u);
            }
        }
        t.specs.remove(task.id.as_str());
        Ok(t.states.remove(&(task.id.as_str().to_owned(), None)).is_some())
    }

    async fn relist(&self, _group: &ExpiredGroup) -> Result<usize, StoreError> {
        // The fake lists every task it holds: there are no groups to expire.
        Ok(0)
    }

    async fn may_exist(&self, id: &TaskId) -> Result<bool, StoreError> {
        Ok(self.lock().states.contains_key(&(id.as_str().to_owned(), None)))
    }

    async fn get(&self, id: &TaskId) -> Result<Option<StoredTask>, StoreError> {
        let t = self.lock();
        let state = t.states.get(&(id.as_str().to_owned(), None)).map(|r| r.state.clone());
        Ok(state.zip(t.specs.get(id.as_str()).cloned()).map(|(state, (spec, retry, schedule))| StoredTask {
            state,
            spec,
            retry,
            schedule,
        }))
    }

    async fn find_by_key(&self, tenant: &TenantId, key: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
        Ok(self.lock().unique.get(&unique(tenant, key)).cloned())
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<&str>,
        now: EpochMillis,
    ) -> Result<Page<TaskState>, StoreError> {
        let t = self.lock();
        let mut all: Vec<TaskState> = t
            .states
            .values()
            .map(|r| &r.state)
            .filter(|s| s.run.is_none() && s.tenant == *tenant)
            .filter(|s| filter.status.is_none_or(|want| s.effective_status(now) == want))
            .filter(|s| filter.host.as_ref().is_none_or(|h| *h == s.host))
            .filter(|s| filter.created_after.is_none_or(|a| s.created_at > a))
            .filter(|s| filter.created_before.is_none_or(|b| s.created_at < b))
            .filter(|s| filter.code.is_none_or(|c| c.matches(s.last_status)))
            .cloned()
            .collect();
        // Newest first; the cursor is the last returned task's (created_at, id).
        let order = |s: &TaskState| std::cmp::Reverse((s.created_at, s.id.as_str().to_owned()));
        all.sort_by_key(order);
        let after = cursor.and_then(|c| c.split_once(':')).and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())));
        all.retain(|s| after.as_ref().is_none_or(|a| order(s) > std::cmp::Reverse(a.clone())));
        let more = all.len() > limit.max(1);
        all.truncate(limit.max(1));
        let cursor = all.last().filter(|_| more).map(|s| format!("{}:{}", s.created_at, s.id));
        Ok(Page { items: all, cursor })
    }

    async fn attempts(&self, id: &TaskId, limit: usize, cursor: Option<&str>) -> Result<Page<Attempt>, StoreError> {
        let t = self.lock();
        let all: Vec<Attempt> =
            t.attempts.iter().filter(|(((task, _), _), _)| task == id.as_str()).map(|(_, a)| a.clone()).collect();
        Ok(page_of(&all, limit, cursor))
    }

    async fn last_attempt(&self, id: &TaskId) -> Result<Option<Attempt>, StoreError> {
        let t = self.lock();
        Ok(t.attempts
            .iter()
            .filter(|(((task, run), _), _)| task == id.as_str() && run.is_none())
            .map(|(_, a)| a)
            .next_back()
            .cloned())
    }

    async fn runs(&self, id: &TaskId, limit: usize) -> Result<Vec<TaskState>, StoreError> {
        let t = self.lock();
        let mut runs: Vec<TaskState> = t
            .states
            .iter()
            .filter(|((task, run), _)| task == id.as_str() && run.is_some())
            .map(|(_, r)| r.state.clone())
            .collect();
        runs.reverse();
        runs.truncate(limit);
        Ok(runs)
    }

    async fn cancel(&self, id: &TaskId, now: EpochMillis) -> Result<Cancelled, StoreError> {
        let mut t = self.lock();
        let Some(row) = parent_mut(&mut t, id) else { return Ok(Cancelled::Missing) };
        let before = row.state.clone();
        if before.status.is_final() {
            return Ok(Cancelled::AlreadyFinal(before.status));
        }
        let st = &mut row.state;
        st.status = TaskStatus::Cancelled;
        st.updated_at = now;
        st.lease_until = None;
        st.due_at = None;
        Ok(Cancelled::Done(Box::new(before)))
    }

    async fn update_spec(
        &self,
        id: &TaskId,
        spec: &RequestSpec,
        retry: &RetryPolicy,
        schedule: &Schedule,
        now: EpochMillis,
    ) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(row) = parent_mut(&mut t, id).filter(|r| !r.state.status.is_final()) else { return Ok(false) };
        let st = &mut row.state;
        st.max_attempts = st.retry_base + retry.max_attempts();
        st.host = spec.url.host().to_owned();
        st.request_line = Some(spec.request_line());
        st.timeout_ms = spec.timeout_ms;
        st.updated_at = now;
        t.specs.insert(id.as_str().to_owned(), (spec.clone(), retry.clone(), schedule.clone()));
        Ok(true)
    }

    async fn retry_failed(&self, id: &TaskId, more: u32, now: EpochMillis) -> Result<Retried, StoreError> {
        let grace = self.grace_ms;
        let mut t = self.lock();
        let Some(row) = parent_mut(&mut t, id) else { return Ok(Retried::Missing) };
        if row.state.kind != TaskKind::Once {
            return Ok(Retried::NotFailed(row.state.status));
        }
        Ok(retry_row(row, more, now, grace))
    }

    async fn purge(&self, id: &TaskId) -> Result<bool, StoreError> {
        let mut t = self.lock();
        if !parent_mut(&mut t, id).is_some_and(|r| r.state.status.is_final()) {
            return Ok(false);
        }
        t.states.retain(|(task, _), _| task != id.as_str());
        t.attempts.retain(|((task, _), _), _| task != id.as_str());
        t.specs.remove(id.as_str());
        t.unique.retain(|_, task| task != id);
        Ok(true)
    }

    async fn set_cron_status(&self, id: &TaskId, to: TaskStatus, now: EpochMillis) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(row) = parent_mut(&mut t, id) else { return Ok(false) };
        let st = &mut row.state;
        if st.kind != TaskKind::Cron || !matches!(st.status, TaskStatus::Active | TaskStatus::Paused) {
            return Ok(false);
        }
        st.status = to;
        st.updated_at = now;
        Ok(true)
    }
}
