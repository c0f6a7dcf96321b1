//! Replays advance one page per queue message: select up to `rate` failed
//! tasks from the cursor, move each back to pending (history kept, numbering
//! continues), enqueue them, save the progress, and send the next message one
//! second later. A message names its chain and page; the save that moves the
//! page on is conditional, so a duplicate delivery neither forks the chain nor
//! replays a page twice. Cancelling stops the chain at the next page; resuming
//! starts a new chain from the saved cursor.

use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::domain::{QueueMessage, Replay, ReplayId, ReplayStatus, TaskId, now_millis};
use crate::ports::{DeliveryQueue, ListFilter, QueueError, ReplayStore, Retried, StoreError, TaskStore, TenantStore};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What one page message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The replay does not exist (purged): the message is dropped.
    NoSuchReplay,
    /// Not the replay's current chain and page (a duplicate or an old chain),
    /// or the replay is no longer running: nothing was done.
    Stale,
    /// A page was done. `advanced`: this delivery moved the replay on (and,
    /// unless `done`, sent the next page's message).
    Page { replayed: u64, skipped: u64, errored: u64, advanced: bool, done: bool },
}

/// The listing filter a replay selects with.
pub fn list_filter(r: &Replay) -> ListFilter {
    ListFilter {
        status: Some(r.filter.status),
        host: r.filter.host.clone(),
        created_after: r.filter.created_after,
        created_before: r.filter.created_before,
        code: r.filter.code,
    }
}

/// Starts (or resumes) a replay's chain of page messages.
pub async fn kick<Q: DeliveryQueue>(queue: &Q, r: &Replay) -> Result<(), QueueError> {
    let msg = QueueMessage::ReplayV1 { replay_id: r.id.clone(), chain: r.chain, page: r.page };
    queue.enqueue(&msg, Duration::ZERO).await
}

/// Advances replay `id` by one page, if `chain` is its current chain and
/// `page` its current page (a duplicate delivery of a page message does nothing).
pub async fn step<S: ReplayStore + TaskStore + TenantStore, Q: DeliveryQueue>(
    store: &S,
    queue: &Q,
    id: &ReplayId,
    chain: u64,
    page: u64,
) -> Result<StepOutcome, ReplayError> {
    step_with(store, queue, &SystemClock, id, chain, page).await
}

/// [`step`], reading the time from `clock`.
#[tracing::instrument(skip_all, fields(replay_id = %id, chain, page))]
pub async fn step_with<S: ReplayStore + TaskStore + TenantStore, Q: DeliveryQueue>(
    store: &S,
    queue: &Q,
    clock: &dyn Clock,
    id: &ReplayId,
    chain: u64,
    page: u64,
) -> Result<StepOutcome, ReplayError> {
    let Some(r) = store.get_replay(id).await? else {
        tracing::warn!("no such replay; message dropped");
        return Ok(StepOutcome::NoSuchReplay);
    };
    if r.status != ReplayStatus::Running || r.chain != chain || r.page != page {
        tracing::info!(current_chain = r.chain, current_page = r.page, "stale page message; nothing to do");
        return Ok(StepOutcome::Stale);
    }
    let now = clock.now();
    let listed = store.list(&r.tenant, &list_filter(&r), r.rate.max(1) as usize, r.cursor.as_deref(), now).await?;
    let (mut replayed, mut skipped, mut errored) = (0u64, 0u64, 0u64);
    let mut messages = Vec::new();
    // One quota reservation per page; every slot not used by a replayed task is given back.
    let want = listed.items.len() as u64;
    let reserved = match store.get_tenant(&r.tenant).await? {
        Some(t) if want > 0 => store.reserve_active(&t, want).await?,
        _ => false,
    };
    let mut interrupted: Option<StoreError> = None;
    if reserved {
        for st in &listed.items {
            match store.retry_failed(&st.id, st.round_attempts(), clock.now()).await {
                Ok(Retried::Done) => {
                    replayed += 1;
                    messages.push((QueueMessage::deliver(&st.id, None), Duration::ZERO));
                }
                Ok(Retried::NotFailed(_) | Retried::Missing) => skipped += 1,
                Err(e) => {
                    interrupted = Some(e);
                    break;
                }
            }
        }
        if want > replayed {
            store.release_active(&r.tenant, want - replayed).await?;
        }
    } else {
        // Over the active-task quota (or the tenant is gone): these are not replayed.
        errored = want;
    }
    // A task moved to pending but not enqueued is found by the reconciler.
    let failed = queue.enqueue_many(&messages).await.unwrap_or_else(|_| (0..messages.len()).collect());
    if !failed.is_empty() {
        tracing::warn!(failed = failed.len(), "replayed tasks not enqueued; the reconciler will");
    }
    // Save the progress; if the document changed meanwhile (a cancel, or a
    // duplicate delivery of this page that saved first), add to the fresh one.
    // Only the delivery whose save moves the page on sends the next message.
    let mut doc = r;
    let advanced = loop {
        doc.replayed += replayed;
        doc.skipped += skipped;
        doc.errored += errored;
        let current = doc.status == ReplayStatus::Running && doc.chain == chain && doc.page == page;
        // An interrupted page is done again (its replayed tasks are no longer selected).
        let advance = current && interrupted.is_none();
        if advance {
            doc.cursor = listed.cursor.clone();
            doc.page += 1;
            if doc.cursor.is_none() {
                doc.status = ReplayStatus::Done;
            }
        }
        doc.updated_at = clock.now();
        doc.version += 1;
        if store.save_replay(&doc).await? {
            break advance;
        }
        match store.get_replay(id).await? {
            Some(fresh) => doc = fresh,
            None => return Ok(StepOutcome::NoSuchReplay),
        }
    };
    if let Some(e) = interrupted {
        return Err(e.into());
    }
    tracing::info!(replayed, skipped, errored, status = ?doc.status, "replay page done");
    if advanced && doc.status == ReplayStatus::Running {
        let next = QueueMessage::ReplayV1 { replay_id: id.clone(), chain, page: doc.page };
        queue.enqueue(&next, Duration::from_secs(1)).await?;
    }
    let done = doc.status == ReplayStatus::Done;
    Ok(StepOutcome::Page { replayed, skipped, errored, advanced, done })
}

/// Counts what a replay would select (at most `cap` tasks examined) and
/// returns a sample of their ids.
pub async fn dry_run<S: TaskStore>(store: &S, r: &Replay, cap: usize) -> Result<(u64, Vec<TaskId>, bool), StoreError> {
    let filter = list_filter(r);
    let (mut count, mut sample, mut cursor) = (0u64, Vec::new(), None::<String>);
    loop {
        let page = store.list(&r.tenant, &filter, 100, cursor.as_deref(), now_millis()).await?;
        count += page.items.len() as u64;
        sample.extend(page.items.iter().take(5usize.saturating_sub(sample.len())).map(|s| s.id.clone()));
        cursor = page.cursor;
        if cursor.is_none() {
            return Ok((count, sample, true));
        }
        if count as usize >= cap {
            return Ok((count, sample, false));
        }
    }
}

#[cfg(test)]
mod tests;
