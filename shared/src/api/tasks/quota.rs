//! A tenant's create quotas without a write per create on one tenant item
//! (one DynamoDB item takes at most 1,000 writes a second, which would cap a
//! tenant's create rate whatever the scale).
//!
//! - Active tasks: the stream counter counts every task created (and gives
//!   the slot back when it ends), and the API reads that count with the
//!   tenant (it reads the tenant anyway, to authenticate, and a warm
//!   instance reuses that read for up to `COURIER_AUTH_CACHE_MS`, 5 s). Far
//!   below the quota, a create writes nothing more. Within [`headroom`] of
//!   it — where the counter's lag of a second or so and the cached read's
//!   age could let a burst through — the API
//!   takes the slots itself, by a conditional write on the tenant's count,
//!   and marks the tasks (`slot_taken`) so the counter does not count them
//!   again. So the quota holds exactly near its limit, and costs nothing away
//!   from it.
//! - Create rate: a quota of at most [`STRICT_RATE_MAX`] per second is taken
//!   from a per-second item (exact across API instances, and that item sees
//!   at most that many writes a second). A higher one is kept by each API
//!   instance in memory: a tenant then gets that rate from each warm
//!   instance; API Gateway's stage throttling bounds the sum (see
//!   `docs/capacity.md`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::api::{ApiError, AppState};
use crate::domain::{EpochMillis, Tenant, TenantId, now_millis};
use crate::ports::TenantStore;

/// How long a client should wait after hitting the active-task quota.
const ACTIVE_QUOTA_RETRY_S: u64 = 30;

/// Create-rate quotas up to this many per second are exact (one write per create).
pub const STRICT_RATE_MAX: u64 = 50;

/// How close to its active-task quota a tenant's counted tasks may come
/// before creates take their slots strictly: a tenth of the quota, and at
/// least ten seconds of creates at its create rate (the counter lags by
/// about a second, the tenant read an instance reuses is at most 5 s old).
pub fn headroom(t: &Tenant) -> u64 {
    (t.quotas.max_active_tasks / 10).max(t.quotas.create_rate_per_second.saturating_mul(10))
}

/// Each API instance's own create-rate windows, by tenant (whole seconds).
#[derive(Debug, Default)]
pub struct CreateLimits {
    windows: Mutex<HashMap<TenantId, (EpochMillis, u64)>>,
}

impl CreateLimits {
    /// Takes `n` creates of the tenant's per-second rate in this instance.
    pub fn take(&self, t: &Tenant, n: u64, now: EpochMillis) -> bool {
        let second = now / 1000;
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > 10_000 {
            windows.retain(|_, (s, _)| *s == second);
        }
        let w = windows.entry(t.id.clone()).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 + n > t.quotas.create_rate_per_second {
            return false;
        }
        w.1 += n;
        true
    }
}

fn rate_limited(t: &Tenant) -> ApiError {
    ApiError::TooMany {
        code: "rate_limited",
        message: format!("create rate quota of {} tasks per second exceeded", t.quotas.create_rate_per_second),
        retry_after_s: 1,
    }
}

fn over_quota(t: &Tenant) -> ApiError {
    ApiError::TooMany {
        code: "quota_exceeded",
        message: format!("active task quota of {} exceeded", t.quotas.max_active_tasks),
        retry_after_s: ACTIVE_QUOTA_RETRY_S,
    }
}

/// Takes `n` creates of the tenant's rate and active-task quotas, or answers
/// 429. `Ok(true)`: the slots were taken here (mark the tasks `slot_taken`;
/// give back any not used); `Ok(false)`: the counter counts them.
pub(super) async fn admit<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, t: &Tenant, n: u64) -> Result<bool, ApiError> {
    let now = now_millis();
    let rate_ok = if t.quotas.create_rate_per_second <= STRICT_RATE_MAX {
        app.store.take_rate(t, n, now).await?
    } else {
        app.limits.take(t, n, now)
    };
    if !rate_ok {
        return Err(rate_limited(t));
    }
    if t.active.saturating_add(n).saturating_add(headroom(t)) <= t.quotas.max_active_tasks {
        return Ok(false);
    }
    reserve(app, t, n).await.map(|()| true)
}

/// Takes `n` of the tenant's active-task slots by a conditional write, or answers 429.
pub(crate) async fn reserve<S: TenantStore, Q, C>(app: &AppState<S, Q, C>, t: &Tenant, n: u64) -> Result<(), ApiError> {
    if app.store.reserve_active(t, n).await? { Ok(()) } else { Err(over_quota(t)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Quotas;

    fn tenant(max: u64, rate: u64, active: u64) -> Tenant {
        Tenant {
            id: TenantId::generate(),
            name: "t".into(),
            enabled: true,
            quotas: Quotas { max_active_tasks: max, create_rate_per_second: rate },
            active,
            created_at: 0,
        }
    }

    #[test]
    fn headroom_covers_ten_seconds_of_creates_and_a_tenth_of_the_quota() {
        assert_eq!(headroom(&tenant(10_000, 100, 0)), 1_000);
        assert_eq!(headroom(&tenant(1_000_000, 100, 0)), 100_000);
        assert_eq!(headroom(&tenant(10_000, 5_000, 0)), 50_000, "a fast tenant is strict all along");
        assert_eq!(headroom(&tenant(2, 1000, 0)), 10_000);
    }

    #[test]
    fn an_instance_keeps_the_rate_per_whole_second_and_tenant() {
        let limits = CreateLimits::default();
        let (a, b) = (tenant(100, 100, 0), tenant(100, 100, 0));
        assert!(limits.take(&a, 60, 5_000));
        assert!(limits.take(&a, 40, 5_999));
        assert!(!limits.take(&a, 1, 5_999), "101 in one second");
        assert!(limits.take(&b, 100, 5_999), "another tenant has its own window");
        assert!(limits.take(&a, 100, 6_000), "the next second starts afresh");
    }
}
