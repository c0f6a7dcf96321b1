//! [`TaskStore`] on DynamoDB: tasks as the API sees them.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    KeysAndAttributes, Put, PutRequest, ReturnValue, TransactWriteItem, Update, WriteRequest,
};

use super::codec::{json, n, opt_s, s, state_from_item, to_json, ttl_secs};
use super::errors::{applied, corrupt, is_conditional_failure, is_transaction_cancelled, store_error};
use super::keys::{
    ATTEMPT_PREFIX, RUN_PREFIX, SPEC, STATE, decode_cursor, encode_cursor, id_bound, id_of, key, task_pk, unique_pk,
};
use super::{DynamoStore, Item};
use crate::domain::{
    Attempt, EpochMillis, NewTask, RequestSpec, RetryPolicy, Schedule, TaskId, TaskKind, TaskState, TaskStatus,
    TenantId,
};
use crate::ports::{
    Cancelled, Created, DeliveryLedger, ListFilter, Page, Retried, StoreError, StoredTask, TaskStore, UniqueKey, Unit,
};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, RECONCILE_RANGE_KEY as RSK, TABLE_HASH_KEY as PK,
    TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL, TASKS_BY_TENANT_INDEX,
};

/// A listing examines at most this many tasks per call before returning a partial page.
const MAX_EXAMINED: usize = 1_000;

impl DynamoStore {
    pub(super) async fn batch_get_states(&self, ids: &[TaskId]) -> Result<HashMap<String, Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk.iter().map(|id| key(task_pk(id), STATE)).collect();
            for _ in 0..5 {
                if keys.is_empty() {
                    break;
                }
                let ka = KeysAndAttributes::builder().set_keys(Some(keys.clone())).build().map_err(store_error)?;
                let out =
                    self.client.batch_get_item().request_items(&self.table, ka).send().await.map_err(store_error)?;
                for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                    if let Some(pk) = opt_s(&item, PK) {
                        found.insert(pk.to_owned(), item);
                    }
                }
                keys =
                    out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|ka| ka.keys).unwrap_or_default();
            }
        }
        Ok(found)
    }
}

impl TaskStore for DynamoStore {
    async fn create(&self, task: &NewTask, unique: Option<&UniqueKey>) -> Result<Created, StoreError> {
        if let Some(u) = unique
            && let Some(holder) = self.take_unique(task, u).await?
        {
            return Ok(Created::Existing(holder));
        }
        // The state last: it makes the task exist.
        let (spec, state) = self.new_items(task);
        self.put(spec).send().await.map_err(store_error)?;
        self.put(state)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(store_error)?;
        Ok(Created::New)
    }

    async fn create_many(&self, tasks: &[NewTask]) -> Result<Vec<bool>, StoreError> {
        // BatchWriteItem takes 25 items: 12 tasks (spec + state) per call. A task
        // whose items stay unprocessed after retries, or whose call failed, is
        // reported as not stored (some of its items may be: the caller discards it).
        let mut stored = vec![true; tasks.len()];
        for (chunk_no, chunk) in tasks.chunks(12).enumerate() {
            let mut requests: Vec<WriteRequest> = Vec::with_capacity(chunk.len() * 2);
            for task in chunk {
                let (spec, state) = self.new_items(task);
                for item in [spec, state] {
                    let put = PutRequest::builder().set_item(Some(item)).build().map_err(store_error)?;
                    requests.push(WriteRequest::builder().put_request(put).build());
                }
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
                if let Some(i) = chunk.iter().position(|t| task_pk(&t.id) == pk) {
                    stored[chunk_no * 12 + i] = false;
                }
            }
        }
        Ok(stored)
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
        let (Some(state), Some(spec)) = (find(STATE), find(SPEC)) else { return Ok(None) };
        let sid = id.as_str();
        Ok(Some(StoredTask {
            state: state_from_item(id, None, state)?,
            spec: json(sid, spec, "spec")?,
            retry: json(sid, spec, "retry")?,
            schedule: json(sid, spec, "schedule")?,
        }))
    }

    async fn find_by_key(&self, tenant: &TenantId, k: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
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
        let mut start = cursor.and_then(decode_cursor).and_then(|id| TaskId::parse(&id).ok());
        let mut items = Vec::new();
        let mut examined = 0;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(TASKS_BY_TENANT_INDEX)
                .key_condition_expression("#g = :g AND #gs BETWEEN :lo AND :hi")
                .expression_attribute_names("#g", GPK)
                .expression_attribute_names("#gs", GSK)
                .expression_attribute_values(":g", s(format!("TENANT#{tenant}")))
                .expression_attribute_values(":lo", s(&lo))
                .expression_attribute_values(":hi", s(&hi))
                .scan_index_forward(false)
                .limit(100);
            if let Some(after) = &start {
                let mut k = key(task_pk(after), STATE);
                k.insert(GPK.into(), s(format!("TENANT#{tenant}")));
                k.insert(GSK.into(), s(after.as_str()));
                q = q.set_exclusive_start_key(Some(k));
            }
            let out = q.send().await.map_err(store_error)?;
            let ids: Vec<TaskId> = out.items.unwrap_or_default().iter().filter_map(id_of).collect();
            let states = self.batch_get_states(&ids).await?;
            for id in &ids {
                examined += 1;
                start = Some(id.clone());
                let Some(item) = states.get(&task_pk(id)) else { continue };
                let st = state_from_item(id, None, item)?;
                let status_ok = filter.status.is_none_or(|want| st.effective_status(now) == want);
                let host_ok = filter.host.as_deref().is_none_or(|h| st.host.eq_ignore_ascii_case(h));
                let code_ok = filter.code.is_none_or(|c| c.matches(st.last_status));
                if status_ok && host_ok && code_ok {
                    items.push(st);
                    if items.len() == limit {
                        return Ok(Page { items, cursor: Some(encode_cursor(id.as_str())) });
                    }
                }
            }
            if out.last_evaluated_key.is_none() {
                return Ok(Page { items, cursor: None });
            }
            if examined >= MAX_EXAMINED {
                // A partial page: the cursor resumes where this call stopped.
                return Ok(Page { items, cursor: start.map(|id| encode_cursor(id.as_str())) });
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
        let mut spec_item = key(task_pk(id), SPEC);
        spec_item.insert("spec".into(), s(to_json(spec)));
        spec_item.insert("retry".into(), s(to_json(retry)));
        spec_item.insert("schedule".into(), s(to_json(schedule)));
        if let Some(due) = match schedule {
            Schedule::At { at } => Some(*at),
            Schedule::Now => Some(now),
            Schedule::Cron(_) => None,
        } {
            spec_item.insert(TTL.into(), ttl_secs(due.max(now) + self.retention_ms));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), STATE)))
            .update_expression("SET max_attempts = retry_base + :m, host = :h, timeout_ms = :t, updated_at = :now")
            .condition_expression("attribute_exists(#pk) AND NOT #s IN (:succ, :fail, :canc)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":m", n(retry.max_attempts()))
            .expression_attribute_values(":h", s(spec.url.host()))
            .expression_attribute_values(":t", n(spec.timeout_ms))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":succ", s(TaskStatus::Succeeded.as_str()))
            .expression_attribute_values(":fail", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":canc", s(TaskStatus::Cancelled.as_str()))
            .build()
            .map_err(store_error)?;
        let put = Put::builder().table_name(&self.table).set_item(Some(spec_item)).build().map_err(store_error)?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(TransactWriteItem::builder().put(put).build())
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
                 max_attempts = attempts + :more, #rsk = :recon REMOVE failure_reason, #ttl",
            )
            .condition_expression("#s = :failed AND kind = :once")
            .expression_attribute_names("#s", "status")
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
