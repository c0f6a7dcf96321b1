//! Task endpoints, one module per kind of request: `create` (one task, and
//! where a new task goes), `batch` (up to 100 tasks in one request), `read`
//! (get, list, stats, attempts and their query parameters) and `actions`
//! (change, cancel, retry, pause, resume). This module holds what they share:
//! finding a tenant's own task, its full view and the active-task quota.

mod actions;
mod batch;
mod create;
pub mod quota;
mod read;

pub use actions::{cancel, cancel_by_business_id, pause, resume, retry, update};
pub use batch::create_batch;
pub use create::create;
pub use read::{attempts, get_by_business_id, get_one, list, stats};
pub(super) use read::{host_filter, is_task_id, time_window, valid_cursor};

use serde_json::Value;

use crate::api::{ApiError, AppState, views};
use crate::domain::{TaskId, TaskKind, Tenant, now_millis, parse_business_id};
use crate::ports::{StoredTask, TaskStore, UniqueKey};

pub(super) use quota::reserve;

/// A task's full view: its state, request, last attempt and (cron) latest runs.
pub(super) async fn full_view<S: TaskStore, Q, C>(app: &AppState<S, Q, C>, t: &StoredTask) -> Result<Value, ApiError> {
    let last = if t.state.attempts > 0 || t.state.kind == TaskKind::Cron {
        app.store.last_attempt(&t.state.id).await?
    } else {
        None
    };
    let runs = if t.state.kind == TaskKind::Cron { app.store.runs(&t.state.id, 10).await? } else { Vec::new() };
    Ok(views::task(t, last.as_ref(), &runs, now_millis()))
}

/// The task, if it exists and belongs to `tenant` (404 otherwise, either way).
async fn owned<S: TaskStore, Q, C>(app: &AppState<S, Q, C>, tenant: &Tenant, id: &str) -> Result<StoredTask, ApiError> {
    let missing = || ApiError::NotFound(format!("no task {id}"));
    let task_id = TaskId::parse(id).map_err(|_| missing())?;
    app.store.get(&task_id).await?.filter(|t| t.state.tenant == tenant.id).ok_or_else(missing)
}

async fn owned_by_business_id<S: TaskStore, Q, C>(
    app: &AppState<S, Q, C>,
    tenant: &Tenant,
    business_id: &str,
) -> Result<StoredTask, ApiError> {
    let missing = || ApiError::NotFound(format!("no task with business id {business_id}"));
    let bid = parse_business_id(business_id).map_err(|_| missing())?;
    let id = app.store.find_by_key(&tenant.id, &UniqueKey::BusinessId(bid)).await?.ok_or_else(missing)?;
    owned(app, tenant, id.as_str()).await
}
