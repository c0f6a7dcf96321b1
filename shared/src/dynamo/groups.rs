//! Listing groups: the tasks one batch create stores without a business id
//! share one entry in the `by-tenant` index instead of one each, so a batch
//! create writes a task's state alone (one write unit) plus a small group
//! item per call, not a state and an index entry per task (two).
//!
//! A group is the item `pk = LIST#<group>`, `sk = LIST`: its tenant, its
//! members' ids (16 bytes each, in order) and the group's own index keys. The
//! group key has the shape of a listing sort key (creation time, then 20
//! random hex digits), so the group sorts among single tasks by time; its
//! `i`th member lists at `<group>#<iii>`. Those keys all start with the
//! group's, and no other entry's key does, so a group's members are one run
//! of the listing, after no entry of another group: a listing reads a group
//! entry and puts its members in their places as if each had its own entry.
//!
//! The group is written before its members' states (a state stored is always
//! listed; a member whose state never got stored is skipped, as a purged or
//! expired one is). It expires a week after the last of its members' first
//! expiry; a member that lives longer than that (retried by hand, moved to a
//! later time, a cron task) gets its own index entry then, at the same place,
//! when the stream consumer sees TTL delete the group (`relist_group`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{opt_s, s, ttl_secs};
use super::errors::{is_conditional_failure, store_error};
use super::keys::{STATE, key, list_pk, task_pk};
use super::{DAY_MS, DynamoStore, Item};
use crate::domain::{NewTask, TaskId};
use crate::ports::{ExpiredGroup, StoreError};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, LIST_GROUP_PREFIX, TABLE_HASH_KEY as PK, TABLE_TTL_ATTRIBUTE as TTL,
};

const GROUP_SK: &str = "LIST";
/// A group holds at most this many tasks (a member's place has 3 digits).
const GROUP_MAX: usize = 100;
/// How long a group outlives its members' first expiry.
const GROUP_SLACK_MS: i64 = 7 * DAY_MS;
/// The bytes of one member's id (`tsk_` and 32 hex digits).
const ID_BYTES: usize = 16;

/// A new group's key: created at `created_at`, unique by its random tail.
fn group_key(created_at: i64) -> String {
    format!("tsk_{:012x}{:020x}", created_at.max(0), fastrand::u128(..) >> 48)
}

/// The listing sort key of a group's `i`th member.
pub(super) fn member_sort_key(group: &str, i: usize) -> String {
    format!("{group}#{i:03}")
}

fn group_pk(group: &str) -> String {
    format!("{LIST_GROUP_PREFIX}{group}")
}

/// The group key of an index entry that is a group's.
pub(super) fn group_of(entry: &Item) -> Option<&str> {
    opt_s(entry, PK).and_then(|pk| pk.strip_prefix(LIST_GROUP_PREFIX))
}

fn id_bytes(id: &TaskId) -> Option<[u8; ID_BYTES]> {
    let hex = id.as_str().strip_prefix("tsk_")?;
    let mut out = [0u8; ID_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A group item's `ids` bytes: each id's 16, in order (`None`: an id of
/// another shape).
pub fn encode_ids(ids: &[TaskId]) -> Option<Vec<u8>> {
    ids.iter().map(id_bytes).collect::<Option<Vec<_>>>().map(|b| b.concat())
}

/// The member ids a group item's `ids` bytes hold, in order.
pub fn decode_ids(bytes: &[u8]) -> Vec<TaskId> {
    bytes
        .chunks_exact(ID_BYTES)
        .filter_map(|c| {
            TaskId::parse(&format!("tsk_{}", c.iter().map(|b| format!("{b:02x}")).collect::<String>())).ok()
        })
        .collect()
}

impl DynamoStore {
    /// Writes the group that lists `tasks` (one tenant's, at most
    /// [`GROUP_MAX`], none with a business id: a business id's task may be
    /// made again, under the same id, after this one is gone); `None` if they
    /// cannot be listed together (they then take their own entries).
    pub(super) async fn put_group(&self, tasks: &[&NewTask]) -> Result<bool, StoreError> {
        let Some(first) = tasks.first() else { return Ok(false) };
        let ids = encode_ids(&tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
        let alike = tasks.iter().all(|t| t.tenant == first.tenant && t.business_id.is_none());
        let (Some(ids), true) = (ids, tasks.len() <= GROUP_MAX && alike) else {
            return Ok(false);
        };
        let created = tasks.iter().map(|t| t.created_at).min().unwrap_or(first.created_at);
        let last_due = tasks.iter().map(|t| t.due_at.max(t.created_at)).max().unwrap_or(created);
        let group = group_key(created);
        let mut item = key(group_pk(&group), GROUP_SK);
        item.extend([
            ("tenant".into(), s(&first.tenant)),
            ("ids".into(), AttributeValue::B(ids.into())),
            (GPK.into(), s(list_pk(&first.tenant, &group))),
            (GSK.into(), s(&group)),
            (TTL.into(), ttl_secs(last_due + self.retention_ms + GROUP_SLACK_MS)),
        ]);
        self.put(item).send().await.map_err(store_error)?;
        Ok(true)
    }

    /// The members of the groups named (group key → ids); a group gone is left out.
    pub(super) async fn group_members(&self, groups: &[&str]) -> Result<HashMap<String, Vec<TaskId>>, StoreError> {
        let items = self.batch_get(groups.iter().map(|g| key(group_pk(g), GROUP_SK)).collect()).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let group = opt_s(item, PK)?.strip_prefix(LIST_GROUP_PREFIX)?;
                let Some(AttributeValue::B(ids)) = item.get("ids") else { return None };
                Some((group.to_owned(), decode_ids(ids.as_ref())))
            })
            .collect())
    }

    /// Gives the members of an expired group that still exist their own
    /// index entries, at the places the group gave them; returns how many.
    pub(super) async fn relist_group(&self, group: &ExpiredGroup) -> Result<usize, StoreError> {
        let live = self.batch_get_states(&group.ids).await?;
        let mut relisted = 0;
        for (i, id) in group.ids.iter().enumerate() {
            if !live.contains_key(&task_pk(id)) {
                continue;
            }
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(task_pk(id), STATE)))
                .update_expression("SET #g = :g, #gs = :gs")
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#g", GPK)
                .expression_attribute_names("#gs", GSK)
                .expression_attribute_values(":g", s(list_pk(&group.tenant, &group.group)))
                .expression_attribute_values(":gs", s(member_sort_key(&group.group, i)))
                .send()
                .await;
            match res {
                Ok(_) => relisted += 1,
                // Gone since it was read (expired or purged): nothing to list.
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        Ok(relisted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_bytes() {
        let ids = [TaskId::generate(), TaskId::derive(&crate::domain::TenantId::generate(), "order-1")];
        let bytes = encode_ids(&ids).expect("the generated shape");
        assert_eq!(bytes.len(), 32);
        assert_eq!(decode_ids(&bytes), ids);
    }

    #[test]
    fn a_groups_members_sort_together_between_the_entries_around_it() {
        let g = "tsk_019000000000800000000000000000a5";
        assert_eq!(group_key(0x0190_0000_0000).len(), g.len(), "the shape of a listing sort key");
        assert!(group_key(0x0190_0000_0000).starts_with("tsk_019000000000"));
        let members: Vec<String> = (0..100).map(|i| member_sort_key(g, i)).collect();
        // Entries of the same millisecond just below and just above the group's key.
        let (below, above) = ("tsk_019000000000800000000000000000a4", "tsk_019000000000800000000000000000a6");
        for m in &members {
            assert!(m.as_str() > g && m.as_str() > below, "{m} sorts after its group's entry and what is below it");
            assert!(m.as_str() < above, "{m} sorts before the next entry up");
        }
        assert!(members.windows(2).all(|w| w[0] < w[1]), "members sort by their place");
    }
}
