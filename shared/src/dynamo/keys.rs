//! Keys and cursors: how tasks, runs, attempts, unique keys, tenants and
//! flow keys are named in the table, and the opaque cursors handed to callers.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::Item;
use super::codec::{opt_s, s};
use crate::domain::{EpochMillis, FlowKey, PolicyScope, TaskId, TenantId};
use crate::ports::UniqueKey;
use crate::resources::{LIST_SHARDS, RECONCILE_SHARDS, TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK};

pub(super) const STATE: &str = "STATE";
pub(super) const SPEC: &str = "SPEC";
pub(super) const ATTEMPT_PREFIX: &str = "ATTEMPT#";
pub(super) const RUN_PREFIX: &str = "RUN#";
pub(super) const POLICY_PREFIX: &str = "POL#";
pub(super) const HOLD_PREFIX: &str = "HOLD#";
pub(super) const HIST_PREFIX: &str = "HIST#";

/// The reconcile shard of a task: spreads the index's writes.
pub(super) fn shard(id: &TaskId) -> u32 {
    id.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % RECONCILE_SHARDS
}

/// The partition key in the `by-tenant` index of an entry named `by` (a
/// task id, or a listing group's key): one of the tenant's [`LIST_SHARDS`]
/// keys, by that name.
pub(super) fn list_pk(tenant: &TenantId, by: &str) -> String {
    let n = by.bytes().fold(7u32, |h, b| h.wrapping_mul(131).wrapping_add(u32::from(b))) % LIST_SHARDS;
    list_shard_pk(tenant, n)
}

pub(super) fn list_shard_pk(tenant: &TenantId, n: u32) -> String {
    format!("TENANT#{tenant}#{n}")
}

pub(super) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

pub(super) fn task_pk(id: &TaskId) -> String {
    format!("TASK#{id}")
}

pub(super) fn state_sk(run: Option<EpochMillis>) -> String {
    match run {
        None => STATE.to_owned(),
        Some(ms) => format!("{RUN_PREFIX}{ms:015}"),
    }
}

pub(super) fn attempt_sk(run: Option<EpochMillis>, n: u32) -> String {
    match run {
        None => format!("{ATTEMPT_PREFIX}{n:010}"),
        Some(ms) => format!("{ATTEMPT_PREFIX}R{ms:015}#{n:010}"),
    }
}

pub(super) fn unique_pk(tenant: &TenantId, k: &UniqueKey) -> String {
    match k {
        UniqueKey::BusinessId(b) => format!("UNIQUE#{tenant}#B#{b}"),
        UniqueKey::IdempotencyKey(i) => format!("UNIQUE#{tenant}#I#{i}"),
    }
}

/// A tenant's partition key; takes text because the counter's deltas name
/// tenants as read from stream images.
pub(super) fn tenant_pk(id: &str) -> String {
    format!("TENANT#{id}")
}

/// The partition every sender reads whole: all policies and holds.
pub(super) fn flows_pk() -> &'static str {
    "FLOWS"
}

pub(super) fn policy_sk(key: &FlowKey, scope: &PolicyScope) -> String {
    format!("{POLICY_PREFIX}{key}#{}", scope.as_str())
}

pub(super) fn hold_sk(key: &FlowKey) -> String {
    format!("{HOLD_PREFIX}{key}")
}

/// The partition of one key's shared state and its history.
pub(super) fn flow_pk(key: &FlowKey) -> String {
    format!("FLOW#{key}")
}

/// A history entry: sorted by time; the random tail keeps two entries of
/// the same millisecond apart.
pub(super) fn hist_sk(at: EpochMillis) -> String {
    format!("{HIST_PREFIX}{:015}#{:04x}", at.max(0), fastrand::u16(..))
}

/// Reads the task id back from a `pk`.
pub(super) fn id_of(item: &Item) -> Option<TaskId> {
    opt_s(item, PK).and_then(|pk| pk.strip_prefix("TASK#")).and_then(|id| TaskId::parse(id).ok())
}

pub(super) fn encode_cursor(v: &str) -> String {
    B64.encode(v)
}

pub(super) fn decode_cursor(c: &str) -> Option<String> {
    B64.decode(c).ok().and_then(|b| String::from_utf8(b).ok())
}

/// The smallest and largest task id created in the millisecond `ms` (UUIDv7
/// ids start with the creation time), for time-bounded listings.
pub(super) fn id_bound(ms: EpochMillis, upper: bool) -> String {
    let fill = if upper { "f" } else { "0" };
    format!("tsk_{:012x}{}", ms.max(0), fill.repeat(20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bounds_bracket_every_id_created_in_that_millisecond() {
        let id = TaskId::generate();
        let ms = i64::from_str_radix(&id.as_str()[4..16], 16).expect("hex time");
        assert!(id_bound(ms, false).as_str() <= id.as_str());
        assert!(id.as_str() <= id_bound(ms, true).as_str());
        assert!(id_bound(ms + 1, false).as_str() > id.as_str());
    }

    #[test]
    fn attempts_and_runs_sort_by_number_and_time() {
        assert!(attempt_sk(None, 2) < attempt_sk(None, 10));
        assert!(attempt_sk(Some(5), 1) < attempt_sk(Some(10), 1));
        assert!(state_sk(Some(999)) < state_sk(Some(1000)));
        assert!(attempt_sk(None, 1).as_str() < SPEC && state_sk(Some(1)).as_str() < SPEC);
    }

    #[test]
    fn history_entries_sort_by_time_and_policies_name_key_and_scope() {
        assert!(hist_sk(999) < hist_sk(1_000));
        assert!(hist_sk(1_000).starts_with(HIST_PREFIX));
        let key = FlowKey::host("api.example.invalid:443");
        assert_eq!(policy_sk(&key, &PolicyScope::Admin), "POL#h:api.example.invalid:443#admin");
        assert_eq!(hold_sk(&key), "HOLD#h:api.example.invalid:443");
        assert_eq!(flow_pk(&key), "FLOW#h:api.example.invalid:443");
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor("tsk_abc")), Some("tsk_abc".into()));
        assert_eq!(decode_cursor("%%%"), None);
    }
}
