//! The mapping between items and domain values: attribute helpers, a task's
//! state and a tenant read back, a new task's items written, a flow key's
//! shared state, policies, holds and history read back.

use aws_sdk_dynamodb::types::AttributeValue;

use super::errors::corrupt;
use super::keys::{HOLD_PREFIX, SPEC, STATE, key, list_pk, shard, task_pk, unique_pk};
use super::{DAY_MS, DynamoStore, Item};
use crate::domain::{
    BreakerPosition, EpochMillis, FlowEvent, FlowKey, FlowPolicy, FlowShared, Hold, NewTask, PolicyScope, Quotas,
    RequestSpec, RetryPolicy, Schedule, SchedulerHold, TaskId, TaskKind, TaskState, TaskStatus, Tenant, TenantId,
};
use crate::ports::{StoreError, UniqueKey};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, RECONCILE_HASH_KEY as RPK, RECONCILE_RANGE_KEY as RSK,
    TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL,
};

/// A request whose `spec`, `retry` and `schedule` JSON (with their names)
/// fit in this many bytes rides inline in the task's `STATE` item: one item
/// written on create, read back by the sender's claim, still one write unit.
pub(super) const INLINE_SPEC_MAX: usize = 560;

/// Set on a task whose active-task slot the API took itself (a strict
/// reservation near the quota): the stream counter then does not count its
/// creation again.
pub(crate) const SLOT_TAKEN: &str = "slot_taken";

/// The listing index's sort key of a task: its creation time first (in the
/// shape of a generated id, so for those it *is* the id), then the rest of
/// its id.
pub(super) fn list_sort_key(id: &TaskId, created_at: EpochMillis) -> String {
    format!("tsk_{:012x}{}", created_at.max(0), id.as_str().get(16..).unwrap_or_default())
}

/// Idempotency keys are remembered this long.
const IDEMPOTENCY_TTL_MS: i64 = DAY_MS;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn ttl_secs(at_ms: EpochMillis) -> AttributeValue {
    n(at_ms / 1000)
}

pub(super) fn get_s<'a>(id: &str, item: &'a Item, k: &str) -> Result<&'a str, StoreError> {
    opt_s(item, k).ok_or_else(|| corrupt(id, format!("missing string `{k}`")))
}

/// A stored tenant id, parsed: a malformed one is a corrupt item.
pub(super) fn get_tenant(id: &str, item: &Item, k: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(get_s(id, item, k)?).map_err(|e| corrupt(id, format!("`{k}`: {e}")))
}

pub(super) fn opt_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub(super) fn get_n<T: std::str::FromStr>(id: &str, item: &Item, k: &str) -> Result<Option<T>, StoreError> {
    match item.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|x| x.parse().ok())
            .map(Some)
            .ok_or_else(|| corrupt(id, format!("`{k}` is not a number"))),
    }
}

pub(super) fn req_n<T: std::str::FromStr>(id: &str, item: &Item, k: &str) -> Result<T, StoreError> {
    get_n(id, item, k)?.ok_or_else(|| corrupt(id, format!("missing number `{k}`")))
}

pub(super) fn json<T: serde::de::DeserializeOwned>(id: &str, item: &Item, k: &str) -> Result<T, StoreError> {
    serde_json::from_str(get_s(id, item, k)?).map_err(|e| corrupt(id, format!("`{k}`: {e}")))
}

/// A task's request as stored: `spec`, and `retry` and `schedule` unless
/// they are the defaults (the default retry policy; now), which an absent
/// attribute means. Keeps a small task's item small.
pub(super) fn request_attrs(
    spec: &RequestSpec,
    retry: &RetryPolicy,
    schedule: &Schedule,
) -> Vec<(&'static str, String)> {
    let mut attrs = vec![("spec", to_json(spec))];
    if *retry != RetryPolicy::default() {
        attrs.push(("retry", to_json(retry)));
    }
    if *schedule != Schedule::Now {
        attrs.push(("schedule", to_json(schedule)));
    }
    attrs
}

/// The request of an item holding one (a `SPEC` item, or a `STATE` item
/// with it inline), read back as [`request_attrs`] wrote it.
pub(super) fn request_of(id: &str, item: &Item) -> Result<(RequestSpec, RetryPolicy, Schedule), StoreError> {
    let retry = if item.contains_key("retry") { json(id, item, "retry")? } else { RetryPolicy::default() };
    let schedule = if item.contains_key("schedule") { json(id, item, "schedule")? } else { Schedule::Now };
    Ok((json(id, item, "spec")?, retry, schedule))
}

/// The JSON string a domain value is stored as (domain types serialise infallibly).
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A state item's request line: from its inline request, or from the copy
/// (`rl`) a task whose request has its own `SPEC` item keeps for listings.
fn request_line_of(i: &Item) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        method: &'a str,
        url: &'a str,
    }
    match opt_s(i, "spec") {
        Some(spec) => serde_json::from_str::<Line>(spec).ok().map(|l| crate::domain::request_line(l.method, l.url)),
        None => opt_s(i, REQUEST_LINE).map(str::to_owned),
    }
}

/// The request line a state item keeps when its request is not inline.
pub(super) const REQUEST_LINE: &str = "rl";

pub(super) fn state_from_item(id: &TaskId, run: Option<EpochMillis>, i: &Item) -> Result<TaskState, StoreError> {
    let sid = id.as_str();
    let status = get_s(sid, i, "status")?;
    Ok(TaskState {
        id: id.clone(),
        run,
        kind: if opt_s(i, "kind") == Some("cron") { TaskKind::Cron } else { TaskKind::Once },
        tenant: get_tenant(sid, i, "tenant")?,
        business_id: opt_s(i, "business_id").map(str::to_owned),
        status: TaskStatus::parse(status).ok_or_else(|| corrupt(sid, format!("unknown status `{status}`")))?,
        attempts: req_n(sid, i, "attempts")?,
        max_attempts: req_n(sid, i, "max_attempts")?,
        retry_base: get_n(sid, i, "retry_base")?.unwrap_or(0),
        timeout_ms: get_n(sid, i, "timeout_ms")?.unwrap_or(RequestSpec::MAX_TIMEOUT_MS),
        created_at: req_n(sid, i, "created_at")?,
        updated_at: req_n(sid, i, "updated_at")?,
        due_at: get_n(sid, i, "due_at")?,
        lease_until: get_n(sid, i, "lease_until")?,
        host: get_s(sid, i, "host")?.to_owned(),
        request_line: request_line_of(i),
        failure_reason: opt_s(i, "failure_reason").map(str::to_owned),
        last_status: get_n(sid, i, "last_status")?,
        scheduler: match i.get("on_scheduler").and_then(|v| v.as_bool().ok()) {
            None => SchedulerHold::Unrecorded,
            Some(false) => SchedulerHold::Nothing,
            // Handed over by the API under the task's id, or renamed by the sender's retry.
            Some(true) => SchedulerHold::Schedule(opt_s(i, "schedule_name").unwrap_or(sid).to_owned()),
        },
    })
}

pub(super) fn tenant_from_item(i: &Item) -> Result<Tenant, StoreError> {
    let pk = opt_s(i, PK).unwrap_or_default();
    let tenant_id =
        TenantId::parse(pk.strip_prefix("TENANT#").unwrap_or_default()).map_err(|e| corrupt(pk, e.to_string()))?;
    let id = tenant_id.as_str().to_owned();
    Ok(Tenant {
        name: get_s(&id, i, "name")?.to_owned(),
        enabled: i.get("enabled").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
        quotas: Quotas {
            max_active_tasks: req_n(&id, i, "max_active")?,
            create_rate_per_second: req_n(&id, i, "create_rate")?,
        },
        // Never below zero (slots given back for tasks created around the API, say).
        active: get_n::<i64>(&id, i, "active")?.unwrap_or(0).max(0) as u64,
        created_at: req_n(&id, i, "created_at")?,
        id: tenant_id,
    })
}

/// The short attribute names of a flow key's `STATE` item (it is read and
/// written on every batch, so it stays small: under 1 KB).
pub(super) mod flow_attr {
    /// The key's own rate bucket: next free slot, µs.
    pub const NEXT: &str = "nx";
    /// A tenant share's bucket: `nx_<tenant hex>`.
    pub const SHARE_PREFIX: &str = "nx_";
    /// A parallelism lease: `l<slot>`.
    pub const LEASE_PREFIX: &str = "l";
    pub const PAUSED_UNTIL: &str = "pu";
    pub const FACTOR: &str = "f";
    pub const FACTOR_AT: &str = "fa";
    pub const THROTTLES: &str = "tc";
    pub const THROTTLED_AT: &str = "tl";
    pub const BREAKER: &str = "br";
    pub const BREAKER_UNTIL: &str = "bu";
    pub const BREAKER_SINCE: &str = "bs";
    pub const TRIPS: &str = "bt";
    pub const TOKEN: &str = "tok";
    pub const CLOSED_AT: &str = "bcl";
    pub const WINDOW: &str = "w";
    pub const WINDOW_REQUESTS: &str = "wr";
    pub const WINDOW_FAILURES: &str = "wf";

    /// The attribute of a lease slot.
    pub fn lease(slot: u32) -> String {
        format!("{LEASE_PREFIX}{slot}")
    }

    /// The lease slot an attribute names, if it names one.
    pub fn slot_of(attr: &str) -> Option<u32> {
        let digits = attr.strip_prefix(LEASE_PREFIX)?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
    }
}

/// A flow key's `STATE` item read back; absent attributes are the defaults.
pub(super) fn flow_shared_from_item(id: &str, i: &Item) -> Result<FlowShared, StoreError> {
    use flow_attr as a;
    let mut s = FlowShared::new();
    for (k, v) in i {
        let number = || v.as_n().ok().and_then(|x| x.parse::<i64>().ok());
        if let Some(hex) = k.strip_prefix(a::SHARE_PREFIX) {
            s.shares.insert(hex.to_owned(), number().ok_or_else(|| corrupt(id, format!("`{k}` is not a number")))?);
        } else if let Some(slot) = a::slot_of(k) {
            s.leases.insert(slot, number().ok_or_else(|| corrupt(id, format!("`{k}` is not a number")))?);
        }
    }
    s.next_us = get_n(id, i, a::NEXT)?;
    s.paused_until = get_n(id, i, a::PAUSED_UNTIL)?;
    s.factor = get_n(id, i, a::FACTOR)?.unwrap_or(1.0);
    s.factor_at = get_n(id, i, a::FACTOR_AT)?;
    s.throttles = get_n(id, i, a::THROTTLES)?.unwrap_or(0);
    s.throttled_at = get_n(id, i, a::THROTTLED_AT)?;
    s.breaker = opt_s(i, a::BREAKER).map_or(BreakerPosition::Closed, BreakerPosition::from_code);
    s.breaker_until = get_n(id, i, a::BREAKER_UNTIL)?;
    s.breaker_since = get_n(id, i, a::BREAKER_SINCE)?;
    s.trips = get_n(id, i, a::TRIPS)?.unwrap_or(0);
    s.probe_token = opt_s(i, a::TOKEN).map(str::to_owned);
    s.closed_at = get_n(id, i, a::CLOSED_AT)?;
    s.window_start = get_n(id, i, a::WINDOW)?;
    s.window_requests = get_n(id, i, a::WINDOW_REQUESTS)?.unwrap_or(0);
    s.window_failures = get_n(id, i, a::WINDOW_FAILURES)?.unwrap_or(0);
    Ok(s)
}

/// A `POL#` item of the policy partition read back.
pub(super) fn policy_from_item(i: &Item) -> Result<(FlowKey, PolicyScope, FlowPolicy), StoreError> {
    let id = opt_s(i, SK).unwrap_or_default();
    let key = FlowKey::parse(get_s(id, i, "key")?).ok_or_else(|| corrupt(id, "`key` is not a flow key"))?;
    let scope = PolicyScope::parse(get_s(id, i, "scope")?).ok_or_else(|| corrupt(id, "`scope` is not a scope"))?;
    Ok((key, scope, json(id, i, "policy")?))
}

/// A `HOLD#` item of the policy partition read back.
pub(super) fn hold_from_item(i: &Item) -> Result<(FlowKey, Hold), StoreError> {
    let id = opt_s(i, SK).unwrap_or_default();
    let key = id
        .strip_prefix(HOLD_PREFIX)
        .and_then(FlowKey::parse)
        .ok_or_else(|| corrupt(id, "the sort key names no flow key"))?;
    Ok((key, Hold { kind: get_s(id, i, "kind")?.to_owned(), until: req_n(id, i, "until")? }))
}

/// A `HIST#` item read back.
pub(super) fn event_from_item(i: &Item) -> Result<FlowEvent, StoreError> {
    let id = opt_s(i, SK).unwrap_or_default();
    Ok(FlowEvent {
        at: req_n(id, i, "at")?,
        to: get_s(id, i, "to")?.to_owned(),
        why: opt_s(i, "why").unwrap_or_default().to_owned(),
        until: get_n(id, i, "until")?,
    })
}

impl DynamoStore {
    /// A new task's items: its `STATE` item and, when its request is too big
    /// to ride inline ([`INLINE_SPEC_MAX`]), a `SPEC` item. The state item
    /// carries the listing index's keys (sorted by creation time, see
    /// [`list_sort_key`]). A one-off task bound for the queue gets no
    /// reconcile-index entry: its message is sent before it is written, so no
    /// crash between the two can lose it (a retry puts it in that index). One
    /// handed to Scheduler is written first and watched by the reconciler.
    pub(super) fn new_items(&self, task: &NewTask) -> (Option<Item>, Item) {
        let request = request_attrs(&task.spec, &task.retry, &task.schedule);
        let inline = request.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= INLINE_SPEC_MAX;
        let mut state = key(task_pk(&task.id), STATE);
        let spec = if inline {
            state.extend(request.into_iter().map(|(k, v)| (k.to_owned(), s(v))));
            None
        } else {
            state.insert(REQUEST_LINE.into(), s(task.spec.request_line()));
            let mut spec = key(task_pk(&task.id), SPEC);
            spec.extend(request.into_iter().map(|(k, v)| (k.to_owned(), s(v))));
            if task.kind() == TaskKind::Once {
                // The spec outlives any retry schedule; finished state items get their own TTL.
                spec.insert(TTL.into(), ttl_secs(task.due_at + self.retention_ms));
            }
            Some(spec)
        };
        state.extend([
            ("tenant".into(), s(&task.tenant)),
            ("kind".into(), s(task.kind().as_str())),
            ("status".into(), s(task.initial_status().as_str())),
            ("attempts".into(), n(0)),
            ("max_attempts".into(), n(task.retry.max_attempts())),
            ("timeout_ms".into(), n(task.spec.timeout_ms)),
            ("created_at".into(), n(task.created_at)),
            ("updated_at".into(), n(task.created_at)),
            ("due_at".into(), n(task.due_at)),
            ("host".into(), s(task.spec.url.host())),
            ("on_scheduler".into(), AttributeValue::Bool(task.on_scheduler)),
            (GPK.into(), s(list_pk(&task.tenant, task.id.as_str()))),
            (GSK.into(), s(list_sort_key(&task.id, task.created_at))),
        ]);
        // The stream consumer reads the callbacks off the state item's image.
        for (name, url) in
            [("on_success", &task.spec.callbacks.on_success), ("on_failure", &task.spec.callbacks.on_failure)]
        {
            if let Some(u) = url {
                state.insert(name.into(), s(u.as_str()));
            }
        }
        if task.kind() == TaskKind::Once && task.on_scheduler {
            // Handed to Scheduler after it is written: the reconciler watches it.
            state.insert(RPK.into(), s(format!("RECON#{}", shard(&task.id))));
            state.insert(RSK.into(), n(task.due_at + self.reconcile_grace_ms));
        }
        if task.kind() == TaskKind::Once {
            // Until it finishes (then the state's own TTL is set): a task whose
            // item expires unfinished frees its business id with it.
            state.insert(TTL.into(), ttl_secs(task.due_at + self.retention_ms));
        }
        if task.slot_taken {
            state.insert(SLOT_TAKEN.into(), AttributeValue::Bool(true));
        }
        if let Some(b) = &task.business_id {
            state.insert("business_id".into(), s(b));
        }
        (spec, state)
    }

    pub(super) fn unique_item(&self, task: &NewTask, k: &UniqueKey) -> Item {
        let mut item = key(unique_pk(&task.tenant, k), "UNIQUE");
        item.insert("task_id".into(), s(task.id.as_str()));
        let expires = match k {
            UniqueKey::IdempotencyKey(_) => task.created_at + IDEMPOTENCY_TTL_MS,
            UniqueKey::BusinessId(_) if task.kind() == TaskKind::Cron => i64::MAX / 2,
            UniqueKey::BusinessId(_) => task.due_at + self.retention_ms,
        };
        if expires < i64::MAX / 2 {
            item.insert(TTL.into(), ttl_secs(expires));
        }
        item
    }
}
