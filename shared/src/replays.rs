//! Replays advance one page per queue message: select up to `rate` failed
//! tasks from the cursor, move each back to pending (history kept, numbering
//! continues), enqueue them, save the progress, and send the next message one
//! second later. Cancelling stops the chain at the next page; resuming starts
//! it again from the saved cursor.

use std::time::Duration;

use crate::domain::{QueueMessage, Replay, ReplayStatus, TaskId, now_millis};
use crate::ports::{DeliveryQueue, ListFilter, QueueError, Retried, StoreError, TaskStore, TenantStore};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
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
    queue.enqueue(&QueueMessage::ReplayV1 { replay_id: r.id.clone(), chain: r.chain }, Duration::ZERO).await
}

/// Advances replay `id` by one page, if `chain` is its current chain.
#[tracing::instrument(skip_all, fields(replay_id = id))]
pub async fn step<S: TaskStore + TenantStore, Q: DeliveryQueue>(
    store: &S,
    queue: &Q,
    id: &str,
    chain: u64,
) -> Result<(), ReplayError> {
    let Some(r) = store.get_replay(id).await? else {
        tracing::warn!("no such replay; message dropped");
        return Ok(());
    };
    if r.status != ReplayStatus::Running || r.chain != chain {
        return Ok(());
    }
    let now = now_millis();
    let page = store.list(&r.tenant, &list_filter(&r), r.rate.max(1) as usize, r.cursor.as_deref(), now).await?;
    let (mut replayed, mut skipped, mut errored) = (0u64, 0u64, 0u64);
    let mut messages = Vec::new();
    // One quota reservation per page; unused slots are given back.
    let want = page.items.len() as u64;
    let reserved = match store.get_tenant(&r.tenant).await? {
        Some(t) if want > 0 => store.reserve_active(&t, want).await?,
        _ => false,
    };
    if reserved {
        for st in &page.items {
            // The policy's attempt count is what the state holds beyond its round's base.
            let more = st.max_attempts.saturating_sub(st.retry_base).max(1);
            match store.retry_failed(&st.id, more, now_millis()).await? {
                Retried::Done => {
                    replayed += 1;
                    messages.push((QueueMessage::deliver(&st.id), Duration::ZERO));
                }
                Retried::NotFailed(_) | Retried::Missing => skipped += 1,
            }
        }
        if skipped > 0 {
            store.release_active(&r.tenant, skipped).await?;
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
    // Save the progress; if the document changed meanwhile (a cancel), add to the fresh one.
    let mut doc = r;
    loop {
        doc.replayed += replayed;
        doc.skipped += skipped;
        doc.errored += errored;
        // The cursor moves only for the current chain (a resumed replay's new chain owns it).
        if doc.status == ReplayStatus::Running && doc.chain == chain {
            doc.cursor = page.cursor.clone();
            if doc.cursor.is_none() {
                doc.status = ReplayStatus::Done;
            }
        }
        doc.updated_at = now_millis();
        doc.version += 1;
        if store.save_replay(&doc).await? {
            break;
        }
        match store.get_replay(id).await? {
            Some(fresh) => doc = fresh,
            None => return Ok(()),
        }
    }
    tracing::info!(replayed, skipped, errored, status = ?doc.status, "replay page done");
    if doc.status == ReplayStatus::Running && doc.chain == chain {
        let next = QueueMessage::ReplayV1 { replay_id: id.to_owned(), chain: doc.chain };
        queue.enqueue(&next, Duration::from_secs(1)).await?;
    }
    Ok(())
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
