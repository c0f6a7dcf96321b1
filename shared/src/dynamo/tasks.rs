//! [`TaskStore`] on DynamoDB: tasks as the API sees them.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    Delete, KeysAndAttributes, Put, PutRequest, ReturnValue, TransactWriteItem, Update, WriteRequest,
};

use super::codec::{INLINE_SPEC_MAX, REQUEST_LINE, n, opt_s, request_attrs, request_of, s, state_from_item, ttl_secs};
use super::errors::{applied, corrupt, is_conditional_failure, is_transaction_cancelled, store_error};
use super::groups::{group_of, member_sort_key};
use super::keys::{
    ATTEMPT_PREFIX, RUN_PREFIX, SPEC, STATE, decode_cursor, encode_cursor, id_bound, id_of, key, list_shard_pk, shard,
    task_pk, unique_pk,
};
use super::{DynamoStore, Item};
use crate::domain::{
    Attempt, EpochMillis, NewTask, RequestSpec, RetryPolicy, Schedule, TaskId, TaskKind, TaskState, TaskStatus,
    TenantId,
};
use crate::ports::{
    Cancelled, Created, DeliveryLedger, ExpiredGroup, ListFilter, Page, Retried, StoreError, StoredTask, TaskStore,
    UniqueKey, Unit,
};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, LIST_SHARDS, RECONCILE_HASH_KEY as RPK, RECONCILE_RANGE_KEY as RSK,
    TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL, TASKS_BY_TENANT_INDEX,
};

/// A listing examines at most this many tasks per call before returning a partial page.
const MAX_EXAMINED: usize = 1_000;

impl DynamoStore {
    /// Reads items by key with `BatchGetItem` (100 keys a call, a key named
    /// once, unprocessed keys asked again); keys still unread after retries
    /// fail the call: a caller must not take an unread item for a gone one.
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<Item> = keys
            .into_iter()
            .filter(|k| seen.insert((opt_s(k, PK).map(str::to_owned), opt_s(k, SK).map(str::to_owned))))
            .collect();
        let mut found = Vec::new();
        for chunk in keys.chunks(100) {
            let mut keys = chunk.to_vec();
            for _ in 0..5 {
                if keys.is_empty() {
                    break;
                }
                let ka = KeysAndAttributes::builder().set_keys(Some(keys.clone())).build().map_err(store_error)?;
                let out =
                    self.client.batch_get_item().request_items(&self.table, ka).send().await.map_err(store_error)?;
                found.extend(out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default());
                keys =
                    out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|ka| ka.keys).unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Unavailable(format!("{} items left unread after retries", keys.len()).into()));
            }
        }
        Ok(found)
    }

    /// The state items of tasks, by their `pk`; a task gone is left out.
    pub(super) async fn batch_get_states(&self, ids: &[TaskId]) -> Result<HashMap<String, Item>, StoreError> {
        let items = self.batch_get(ids.iter().map(|id| key(task_pk(id), STATE)).collect()).await?;
        Ok(items.into_iter().filter_map(|item| Some((opt_s(&item, PK)?.to_owned(), item))).collect())
    }
}

impl TaskStore for DynamoStore {
    async fn create(&self, task: &NewTask, unique: Option<&UniqueKey>) -> Result<Created, StoreError> {
        // A business id names its task (`TaskId::derive`): the state's own
        // condition keeps it unique. An idempotency key has its own item.
        if let Some(u @ UniqueKey::IdempotencyKey(_)) = unique
            && let Some(holder) = self.take_unique(task, u).await?
        {
            return Ok(Created::Existing(holder));
        }
        // The state last: it makes the task exist.
        let (spec, state) = self.new_items(task);
        if let Some(spec) = spec {
            self.put(spec).send().await.map_err(store_error)?;
        }
        let res = self
            .put(state)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        match res {
            Ok(_) => Ok(Created::New),
            Err(e) if is_conditional_failure(&e) && matches!(unique, Some(UniqueKey::BusinessId(_))) => {
                Ok(Created::Existing(task.id.clone()))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list_together(&self, tasks: &[&NewTask]) -> Result<bool, StoreError> {
        self.put_group(tasks).await
    }

    async fn create_many(&self, tasks: &[NewTask], listed: bool) -> Result<Vec<bool>, StoreError> {
        // BatchWriteItem takes 25 items: a task is one item (its state) or two
        // (with a SPEC item). A task whose items stay unprocessed after retries,
        // or whose call failed, is reported as not stored (some of its items
        // may be: the caller discards it).
        let mut stored = vec![true; tasks.len()];
        let mut start = 0;
        while start < tasks.len() {
            let mut requests: Vec<WriteRequest> = Vec::with_capacity(25);
            let mut end = start;
            while end < tasks.len() {
                let (spec, mut state) = self.new_items(&tasks[end]);
                if listed {
                    // Their group's entry lists them (`list_together`).
                    state.remove(GPK);
                    state.remove(GSK);
                }
                let items: Vec<Item> = spec.into_iter().chain([state]).collect();
                if requests.len() + items.len() > 25 {
                    break;
                }
                for item in items {
                    let put = PutRequest::builder().set_item(Some(item)).build().map_err(store_error)?;
                    requests.push(WriteRequest::builder().put_request(put).build());
                }
                end += 1;
            }
            for attempt in 0..6 {
                if requests.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                match self.client.batch_write_item().request_items(&self.table, requests.clone()).send().await {
                    Ok(out) => {
                        requests = out.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "batch write failed");
                        break;
                    }
                }
            }
            for left in &requests {
                let pk = left.put_request().and_then(|p| opt_s(&p.item, PK)).unwrap_or_default();
                if let Some(i) = tasks[start..end].iter().position(|t| task_pk(&t.id) == pk) {
                    stored[start + i] = false;
                }
            }
            start = end;
        }
        Ok(stored)
    }

    async fn relist(&self, group: &ExpiredGroup) -> Result<usize, StoreError> {
        self.relist_group(group).await
    }

    async fn discard(&self, task: &NewTask, unique: Option<&UniqueKey>) -> Result<bool, StoreError> {
        let old = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&task.id), STATE)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(store_error)?;
        let existed = old.attributes.is_some_and(|a| !a.is_empty());
        let spec = key(task_pk(&task.id), SPEC);
        self.client.delete_item().table_name(&self.table).set_key(Some(spec)).send().await.map_err(store_error)?;
        if let Some(u) = unique {
            self.delete_unique_if_mine(&task.tenant, u, &task.id).await?;
        }
        Ok(existed)
    }

    async fn get(&self, id: &TaskId) -> Result<Option<StoredTask>, StoreError> {
        // SPEC and STATE sort after every ATTEMPT# and RUN#: one query reads both.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk >= :spec")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(task_pk(id)))
            .expression_attribute_values(":spec", s(SPEC))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        let items = out.items.unwrap_or_default();
        let find = |sk: &str| items.iter().find(|i| opt_s(i, SK) == Some(sk));
        let Some(state) = find(STATE) else { return Ok(None) };
        // A small request rides inline in the state item; a big one has its own.
        let Some(spec) = find(SPEC).or(state.contains_key("spec").then_some(state)) else { return Ok(None) };
        let sid = id.as_str();
        let request = request_of(sid, spec)?;
        Ok(Some(StoredTask {
            state: state_from_item(id, None, state)?,
            spec: request.0,
            retry: request.1,
            schedule: request.2,
        }))
    }

    async fn may_exist(&self, id: &TaskId) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item.is_some())
    }

    async fn find_by_key(&self, tenant: &TenantId, k: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
        if let UniqueKey::BusinessId(b) = k {
            let id = TaskId::derive(tenant, b);
            let found = self.get_item(key(task_pk(&id), STATE)).await?;
            return Ok(found.filter(|i| opt_s(i, "tenant") == Some(tenant.as_str())).map(|_| id));
        }
        let out = self.get_item(key(unique_pk(tenant, k), "UNIQUE")).await?;
        Ok(out.as_ref().and_then(|i| opt_s(i, "task_id")).and_then(|id| TaskId::parse(id).ok()))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        limit: usize,
        cursor: Option<&str>,
        now: EpochMillis,
    ) -> Result<Page<TaskState>, StoreError> {
        let lo = id_bound(filter.created_after.unwrap_or(0), false);
        let hi = id_bound(filter.created_before.unwrap_or(0xffff_ffff_ffff), true);
        // The cursor names the last task examined by its listing sort key
        // (unique, and ordered the same in every shard): the next page starts
        // below it in each of the tenant's index keys.
        let mut pos: Option<String> = cursor.and_then(decode_cursor).map(|c| match c.split_once(' ') {
            Some((gsk, _id)) => gsk.to_owned(),
            None => c,
        });
        let mut items = Vec::new();
        let mut examined = 0;
        loop {
            let upper = pos.as_deref().map_or(hi.as_str(), |p| p.min(hi.as_str())).to_owned();
            let shards = (0..LIST_SHARDS).map(|n| {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(TASKS_BY_TENANT_INDEX)
                    .key_condition_expression("#g = :g AND #gs BETWEEN :lo AND :hi")
                    .expression_attribute_names("#g", GPK)
                    .expression_attribute_names("#gs", GSK)
                    .expression_attribute_values(":g", s(list_shard_pk(tenant, n)))
                    .expression_attribute_values(":lo", s(&lo))
                    .expression_attribute_values(":hi", s(&upper))
                    .scan_index_forward(false)
                    .limit(100)
                    .send()
            });
            let pages = futures_util::future::try_join_all(shards).await.map_err(store_error)?;
            // Entries of a shard that has more may only be taken down to its
            // last one: below it, that shard's unread entries interleave.
            let floor = pages
                .iter()
                .filter(|p| p.last_evaluated_key.is_some())
                .filter_map(|p| p.items().last().and_then(|i| opt_s(i, GSK)).map(str::to_owned))
                .max();
            // A group's entry stands for its members, each in its own place
            // (`dynamo::groups`): places above the cursor were listed already.
            let groups: Vec<&str> = pages.iter().flat_map(|p| p.items()).filter_map(group_of).collect();
            let members = if groups.is_empty() { HashMap::new() } else { self.group_members(&groups).await? };
            let mut found: Vec<(String, TaskId)> = pages
                .iter()
                .flat_map(|p| p.items())
                .flat_map(|i| -> Vec<(String, TaskId)> {
                    match group_of(i) {
                        Some(g) => members
                            .get(g)
                            .into_iter()
                            .flatten()
                            .enumerate()
                            .map(|(n, id)| (member_sort_key(g, n), id.clone()))
                            .collect(),
                        None => opt_s(i, GSK).zip(id_of(i)).map(|(gsk, id)| (gsk.to_owned(), id)).into_iter().collect(),
                    }
                })
                .filter(|(gsk, _)| pos.as_deref().is_none_or(|p| gsk.as_str() < p))
                .filter(|(gsk, _)| floor.as_deref().is_none_or(|f| gsk.as_str() >= f))
                .collect();
            found.sort_by(|a, b| b.0.cmp(&a.0));
            // A member relisted on its own while its group is still there is one task.
            found.dedup_by(|a, b| a.0 == b.0);
            // States are read as the page fills, not all at once.
            for chunk in found.chunks((limit - items.len()).clamp(10, 100)) {
                let ids: Vec<TaskId> = chunk.iter().map(|(_, id)| id.clone()).collect();
                let states = self.batch_get_states(&ids).await?;
                for (gsk, id) in chunk {
                    examined += 1;
                    pos = Some(gsk.clone());
                    let Some(item) = states.get(&task_pk(id)) else { continue };
                    let st = state_from_item(id, None, item)?;
                    let status_ok = filter.status.is_none_or(|want| st.effective_status(now) == want);
                    let host_ok = filter.host.as_deref().is_none_or(|h| st.host.eq_ignore_ascii_case(h));
                    let code_ok = filter.code.is_none_or(|c| c.matches(st.last_status));
                    if status_ok && host_ok && code_ok {
                        items.push(st);
                        if items.len() == limit {
                            return Ok(Page { items, cursor: Some(encode_cursor(&format!("{gsk} {id}"))) });
                        }
                    }
                }
            }
            if floor.is_none() {
                return Ok(Page { items, cursor: None });
            }
            if examined >= MAX_EXAMINED {
                // A partial page: the cursor resumes where this call stopped.
                return Ok(Page { items, cursor: pos.map(|p| encode_cursor(&format!("{p} {p}"))) });
            }
        }
    }

    async fn attempts(&self, id: &TaskId, limit: usize, cursor: Option<&str>) -> Result<Page<Attempt>, StoreError> {
        let after = cursor.and_then(decode_cursor).filter(|sk| sk.starts_with(ATTEMPT_PREFIX));
        self.attempt_page(id, limit, after).await
    }

    async fn last_attempt(&self, id: &TaskId) -> Result<Option<Attempt>, StoreError> {
        self.latest_attempt(id).await
    }

    async fn runs(&self, id: &TaskId, limit: usize) -> Result<Vec<TaskState>, StoreError> {
        let out = self
            .task_items(id, RUN_PREFIX)
            .scan_index_forward(false)
            .limit(limit as i32)
            .send()
            .await
            .map_err(store_error)?;
        out.items
            .unwrap_or_default()
            .iter()
            .map(|i| {
                let run = opt_s(i, SK).and_then(|sk| sk.strip_prefix(RUN_PREFIX)).and_then(|ms| ms.parse().ok());
                state_from_item(id, run, i)
            })
            .collect()
    }

    async fn cancel(&self, id: &TaskId, now: EpochMillis) -> Result<Cancelled, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .update_expression("SET #s = :c, updated_at = :now, #ttl = :ttl REMOVE lease_until, due_at")
            .condition_expression("attribute_exists(#pk) AND NOT #s IN (:succ, :fail, :c)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":c", s(TaskStatus::Cancelled.as_str()))
            .expression_attribute_values(":succ", s(TaskStatus::Succeeded.as_str()))
            .expression_attribute_values(":fail", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Cancelled::Done(Box::new(state_from_item(id, None, &out.attributes.unwrap_or_default())?))),
            Err(e) if is_conditional_failure(&e) => {
                Ok(match self.read_state(&Unit { task: id.clone(), run: None }).await? {
                    Some(st) => Cancelled::AlreadyFinal(st.status),
                    None => Cancelled::Missing,
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn update_spec(
        &self,
        id: &TaskId,
        spec: &RequestSpec,
        retry: &RetryPolicy,
        schedule: &Schedule,
        now: EpochMillis,
    ) -> Result<bool, StoreError> {
        let request = request_attrs(spec, retry, schedule);
        let inline = request.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= INLINE_SPEC_MAX;
        let ttl = match schedule {
            Schedule::At { at } => Some(ttl_secs((*at).max(now) + self.retention_ms)),
            Schedule::Now => Some(ttl_secs(now + self.retention_ms)),
            Schedule::Cron(_) => None,
        };
        // A task created with no retry base (none retried by hand) counts from zero.
        let mut sets = vec![
            "max_attempts = if_not_exists(retry_base, :zero) + :m",
            "host = :h",
            "timeout_ms = :t",
            "updated_at = :now",
        ];
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .condition_expression("attribute_exists(#pk) AND NOT #s IN (:succ, :fail, :canc)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":m", n(retry.max_attempts()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":h", s(spec.url.host()))
            .expression_attribute_values(":t", n(spec.timeout_ms))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":succ", s(TaskStatus::Succeeded.as_str()))
            .expression_attribute_values(":fail", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":canc", s(TaskStatus::Cancelled.as_str()));
        let mut inline_removes = String::new();
        // The request goes inline (and any SPEC item away) or to its SPEC item
        // (and any inline copy away), in one transaction with the state.
        let other = if inline {
            // The defaults an absent attribute means are left out.
            let mut removes = vec![];
            for k in ["spec", "retry", "schedule"] {
                match request.iter().find(|(name, _)| *name == k) {
                    Some((_, v)) => {
                        sets.push(match k {
                            "spec" => "#spec = :spec",
                            "retry" => "#retry = :retry",
                            _ => "#schedule = :schedule",
                        });
                        update = update.expression_attribute_values(format!(":{k}"), s(v));
                    }
                    None => removes.push(match k {
                        "spec" => "#spec",
                        "retry" => "#retry",
                        _ => "#schedule",
                    }),
                }
            }
            inline_removes = removes.join(", ");
            if let Some(ttl) = &ttl {
                sets.push("#ttl = :ttl");
                update =
                    update.expression_attribute_names("#ttl", TTL).expression_attribute_values(":ttl", ttl.clone());
            }
            let delete = Delete::builder().table_name(&self.table).set_key(Some(key(task_pk(id), SPEC)));
            TransactWriteItem::builder().delete(delete.build().map_err(store_error)?).build()
        } else {
            let mut spec_item = key(task_pk(id), SPEC);
            spec_item.extend(request.into_iter().map(|(k, v)| (k.to_owned(), s(v))));
            if let Some(ttl) = ttl {
                spec_item.insert(TTL.into(), ttl);
            }
            let put = Put::builder().table_name(&self.table).set_item(Some(spec_item)).build().map_err(store_error)?;
            TransactWriteItem::builder().put(put).build()
        };
        if !inline {
            sets.push("#rl = :rl");
            update = update.expression_attribute_values(":rl", s(spec.request_line()));
        }
        let remove = match (inline, inline_removes.is_empty()) {
            (false, _) => " REMOVE #spec, #retry, #schedule".to_owned(),
            (true, true) => " REMOVE #rl".to_owned(),
            (true, false) => format!(" REMOVE #rl, {inline_removes}"),
        };
        update = update.expression_attribute_names("#rl", REQUEST_LINE);
        let expression = format!("SET {}{remove}", sets.join(", "));
        for name in ["spec", "retry", "schedule"] {
            if expression.contains(&format!("#{name}")) {
                update = update.expression_attribute_names(format!("#{name}"), name);
            }
        }
        let update = update.update_expression(expression).build().map_err(store_error)?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(other)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_transaction_cancelled(&e) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn retry_failed(&self, id: &TaskId, more: u32, now: EpochMillis) -> Result<Retried, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .update_expression(
                "SET #s = :pending, due_at = :now, updated_at = :now, retry_base = attempts, \
                 max_attempts = attempts + :more, #rpk = :shard, #rsk = :recon REMOVE failure_reason, #ttl",
            )
            .condition_expression("#s = :failed AND kind = :once")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#rpk", RPK)
            .expression_attribute_values(":shard", s(format!("RECON#{}", shard(id))))
            .expression_attribute_names("#rsk", RSK)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":failed", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":once", s(TaskKind::Once.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":more", n(more))
            .expression_attribute_values(":recon", n(now + self.reconcile_grace_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Retried::Done),
            Err(e) if is_conditional_failure(&e) => {
                Ok(match self.read_state(&Unit { task: id.clone(), run: None }).await? {
                    Some(st) => Retried::NotFailed(st.status),
                    None => Retried::Missing,
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn purge(&self, id: &TaskId) -> Result<bool, StoreError> {
        let Some(state) = self.read_state(&Unit { task: id.clone(), run: None }).await? else { return Ok(false) };
        if !state.status.is_final() {
            return Ok(false);
        }
        let mut keys: Vec<Item> = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", s(task_pk(id)))
            .projection_expression("#pk, sk")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for i in page.map_err(store_error)?.items.unwrap_or_default() {
                if let Some(sk) = opt_s(&i, SK) {
                    keys.push(key(task_pk(id), sk));
                }
            }
        }
        if let Some(b) = &state.business_id {
            // Only if it still names this task: once its own key expired, another task may hold it.
            self.delete_unique_if_mine(&state.tenant, &UniqueKey::BusinessId(b.clone()), id).await?;
        }
        // The state goes last: a purge cut short leaves a task that can be purged again.
        keys.sort_by_key(|k| opt_s(k, SK) == Some(STATE));
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    let d = aws_sdk_dynamodb::types::DeleteRequest::builder().set_key(Some(k.clone())).build();
                    d.map(|d| WriteRequest::builder().delete_request(d).build()).map_err(store_error)
                })
                .collect::<Result<_, _>>()?;
            for _ in 0..6 {
                if requests.is_empty() {
                    break;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests.clone())
                    .send()
                    .await
                    .map_err(store_error)?;
                requests = out.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default();
            }
            if !requests.is_empty() {
                return Err(corrupt(id.as_str(), "purge left items behind; run it again"));
            }
        }
        Ok(true)
    }

    async fn set_cron_status(&self, id: &TaskId, to: TaskStatus, now: EpochMillis) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .update_expression("SET #s = :to, updated_at = :now")
            .condition_expression("kind = :cron AND #s IN (:active, :paused)")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":cron", s(TaskKind::Cron.as_str()))
            .expression_attribute_values(":active", s(TaskStatus::Active.as_str()))
            .expression_attribute_values(":paused", s(TaskStatus::Paused.as_str()))
            .send()
            .await;
        applied(res)
    }
}
