//! [`DeliveryLedger`] on DynamoDB: claims under a lease, attempts, transitions, cron runs.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::DynamoStore;
use super::attempts::{compact, fits_inline, inline_name, item_size};
use super::codec::{get_n, n, opt_s, request_of, s, state_from_item, to_json, ttl_secs};
use super::errors::{applied, is_conditional_failure, store_error};
use super::keys::{SPEC, STATE, attempt_sk, key, shard, state_sk, task_pk};
use crate::domain::{Attempt, EpochMillis, RequestSpec, RetryPolicy, TaskId, TaskKind, TaskState, TaskStatus};
use crate::ports::{Claim, DeliveryLedger, Record, Retried, StoreError, Transition, Unit};
use crate::resources::{
    RECONCILE_HASH_KEY as RPK, RECONCILE_RANGE_KEY as RSK, TABLE_HASH_KEY as PK, TABLE_TTL_ATTRIBUTE as TTL,
};

/// A unit due within this much is claimable (clock skew between functions).
const DUE_SLACK_MS: i64 = 1_000;

impl DeliveryLedger for DynamoStore {
    async fn claim(
        &self,
        unit: &Unit,
        now: EpochMillis,
        lease_margin: EpochMillis,
        max_timeout_ms: Option<u64>,
    ) -> Result<Claim, StoreError> {
        // A token of this claim: a retried request whose first try was applied
        // finds its own claim instead of a live lease of someone else.
        let token = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let fits = if max_timeout_ms.is_some() { " AND timeout_ms <= :budget" } else { "" };
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            // The lease covers the request's own timeout plus the margin;
            // `claimed_at` is when the attempt starts, shown if it is interrupted.
            .update_expression(
                "SET #s = :sending, attempts = attempts + :one, lease_until = timeout_ms + :lease, \
                 updated_at = :now, claimed_at = :now, claim_token = :token",
            )
            .condition_expression(format!(
                "attribute_exists(#pk) AND (attribute_not_exists(due_at) OR due_at <= :due) \
                 AND (#s IN (:pending, :retrying, :scheduled) OR (#s = :sending AND lease_until < :now)){fits}"
            ))
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":retrying", s(TaskStatus::Retrying.as_str()))
            .expression_attribute_values(":scheduled", s(TaskStatus::Scheduled.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":lease", n(now + lease_margin))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":due", n(now + DUE_SLACK_MS))
            .return_values(ReturnValue::AllOld);
        let req = match max_timeout_ms {
            Some(budget) => req.expression_attribute_values(":budget", n(budget)),
            None => req,
        };
        // A failed claim reads why. A task that is claimable on that read was
        // written (or changed) just after the try (the API sends a queue-bound
        // task's message before it writes the task): the claim is tried again.
        let mut tries = 0;
        loop {
            tries += 1;
            match req.clone().send().await {
                Ok(out) => {
                    let old = out.attributes.unwrap_or_default();
                    let mut state = state_from_item(&unit.task, unit.run, &old)?;
                    let interrupted_at = (state.status == TaskStatus::Sending).then(|| {
                        get_n(unit.task.as_str(), &old, "claimed_at").ok().flatten().unwrap_or(state.updated_at)
                    });
                    state.status = TaskStatus::Sending;
                    state.attempts += 1;
                    state.lease_until = Some(now + lease_margin + state.timeout_ms as i64);
                    state.updated_at = now;
                    let inline = inline_spec(&unit.task, &old)?;
                    return Ok(Claim::Claimed {
                        state: Box::new(state),
                        interrupted_at,
                        inline,
                        item_bytes: item_size(&old),
                    });
                }
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error(e)),
            }
            // Rare path (early or duplicate delivery, finished task, no time left): read why.
            let Some(item) = self.get_item(key(task_pk(&unit.task), state_sk(unit.run))).await? else {
                return Ok(Claim::Missing);
            };
            let st = state_from_item(&unit.task, unit.run, &item)?;
            if st.status == TaskStatus::Sending && opt_s(&item, "claim_token") == Some(token.as_str()) {
                // Our own claim, applied on a try whose answer was lost.
                let inline = inline_spec(&unit.task, &item)?;
                let item_bytes = item_size(&item);
                return Ok(Claim::Claimed { state: Box::new(st), interrupted_at: None, inline, item_bytes });
            }
            let claimable = match st.status {
                TaskStatus::Pending | TaskStatus::Retrying | TaskStatus::Scheduled => true,
                TaskStatus::Sending => st.lease_until.is_some_and(|l| l < now),
                _ => false,
            };
            return Ok(match (st.status, st.due_at) {
                (TaskStatus::Pending | TaskStatus::Retrying | TaskStatus::Scheduled, Some(due))
                    if due > now + DUE_SLACK_MS =>
                {
                    Claim::NotDue(due)
                }
                _ if claimable && max_timeout_ms.is_some_and(|b| st.timeout_ms > b) => Claim::NoTime,
                _ if claimable && tries < 3 => continue,
                // Still refused though claimable on every read: never drop the message.
                _ if claimable => Claim::NotDue(now + 1_000),
                // Another sender holds it: its message may be the only one
                // left (a queue-bound task has no reconcile entry), so come
                // back when the lease ends rather than drop this one.
                (TaskStatus::Sending, _) if st.lease_until.is_some() => {
                    Claim::NotDue(st.lease_until.unwrap_or(now).max(now) + 1)
                }
                (status, _) => Claim::NotClaimable(status),
            });
        }
    }

    async fn read_state(&self, unit: &Unit) -> Result<Option<TaskState>, StoreError> {
        let out = self.get_item(key(task_pk(&unit.task), state_sk(unit.run))).await?;
        out.map(|i| state_from_item(&unit.task, unit.run, &i)).transpose()
    }

    async fn get_spec(&self, id: &TaskId) -> Result<Option<(RequestSpec, RetryPolicy)>, StoreError> {
        // A small request rides inline in the task's state item, a big one has its
        // own item: both are read at once (a cron run's request is its task's).
        let read = |sk: &'static str| {
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key(task_pk(id), sk)))
                .projection_expression("#spec, #retry")
                .expression_attribute_names("#spec", "spec")
                .expression_attribute_names("#retry", "retry")
                .send()
        };
        let (own, state) = tokio::join!(read(SPEC), read(STATE));
        for out in [own, state] {
            if let Some(item) = out.map_err(store_error)?.item.filter(|i| i.contains_key("spec")) {
                return request_of(id.as_str(), &item).map(|(spec, retry, _)| Some((spec, retry)));
            }
        }
        Ok(None)
    }

    async fn record_attempt(&self, unit: &Unit, attempt: &Attempt) -> Result<(), StoreError> {
        let mut item = key(task_pk(&unit.task), attempt_sk(unit.run, attempt.number));
        item.insert("attempt".into(), s(to_json(attempt)));
        item.insert(TTL.into(), ttl_secs(attempt.started_at + self.retention_ms));
        self.put(item).send().await.map_err(store_error)?;
        Ok(())
    }

    async fn record_interrupted(&self, unit: &Unit, attempt: &Attempt) -> Result<(), StoreError> {
        let mut item = key(task_pk(&unit.task), attempt_sk(unit.run, attempt.number));
        item.insert("attempt".into(), s(to_json(attempt)));
        item.insert(TTL.into(), ttl_secs(attempt.started_at + self.retention_ms));
        // A real record (the sender died after writing it) is worth more than this note.
        let res = self
            .put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        applied(res).map(|_| ())
    }

    async fn finish(
        &self,
        unit: &Unit,
        attempt: u32,
        t: &Transition,
        now: EpochMillis,
        record: Option<Record<'_>>,
    ) -> Result<bool, StoreError> {
        // A final attempt rides on the transition's write when the item still fits one
        // write unit; otherwise (and before a retry) it is its own item, written first.
        let inline = match (record, t) {
            // Only a task's own state item: a cron run's attempts stay items of their own.
            (Some(r), Transition::Succeeded { .. } | Transition::Failed { .. }) if unit.run.is_none() => {
                let doc = compact(r.attempt, &unit.task);
                let reason = match t {
                    Transition::Failed { reason, .. } => Some(reason.as_str()),
                    _ => None,
                };
                fits_inline(r.item_bytes, r.attempt.number, &doc, reason).then_some((r.attempt.number, doc))
            }
            _ => None,
        };
        if let (Some(r), None) = (record, &inline) {
            self.record_attempt(unit, r.attempt).await?;
        }
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .condition_expression("#s = :sending AND attempts = :n")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .expression_attribute_values(":n", n(attempt))
            .expression_attribute_values(":now", n(now));
        let (req, set, remove) = match t {
            // The status code is kept as a failure's is (events, the `code` filter);
            // its bytes are within the transition's share of the one write unit.
            Transition::Succeeded { status: Some(code) } => (
                req.expression_attribute_values(":ls", n(*code))
                    .expression_attribute_values(":to", s(TaskStatus::Succeeded.as_str()))
                    .expression_attribute_names("#ttl", TTL)
                    .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
                "#s = :to, updated_at = :now, #ttl = :ttl, last_status = :ls",
                "lease_until, due_at, claimed_at, claim_token",
            ),
            Transition::Succeeded { status: None } => (
                req.expression_attribute_values(":to", s(TaskStatus::Succeeded.as_str()))
                    .expression_attribute_names("#ttl", TTL)
                    .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
                "#s = :to, updated_at = :now, #ttl = :ttl",
                "lease_until, due_at, claimed_at, claim_token",
            ),
            // One-off tasks and cron runs alike: a retrying unit is watched by the reconciler
            // (new one-off tasks are written without index keys, so both are set here).
            Transition::Retry { due_at, status } => (
                req.expression_attribute_values(":ls", n(status.unwrap_or(0)))
                    .expression_attribute_values(":to", s(TaskStatus::Retrying.as_str()))
                    .expression_attribute_values(":due", n(due_at))
                    .expression_attribute_names("#rpk", RPK)
                    .expression_attribute_names("#rsk", RSK)
                    .expression_attribute_values(":shard", s(format!("RECON#{}", shard(&unit.task))))
                    .expression_attribute_values(":recon", n(due_at + self.reconcile_grace_ms)),
                "#s = :to, updated_at = :now, due_at = :due, #rpk = :shard, #rsk = :recon, last_status = :ls",
                "lease_until",
            ),
            Transition::Failed { reason, status } => (
                req.expression_attribute_values(":ls", n(status.unwrap_or(0)))
                    .expression_attribute_values(":to", s(TaskStatus::Failed.as_str()))
                    .expression_attribute_values(":why", s(reason))
                    .expression_attribute_names("#ttl", TTL)
                    .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
                "#s = :to, updated_at = :now, failure_reason = :why, #ttl = :ttl, last_status = :ls",
                "lease_until, due_at, claimed_at, claim_token",
            ),
        };
        let req = match &inline {
            Some((number, doc)) => req
                .update_expression(format!("SET {set}, #att = :att REMOVE {remove}"))
                .expression_attribute_names("#att", inline_name(*number))
                .expression_attribute_values(":att", s(doc.as_str())),
            None => req.update_expression(format!("SET {set} REMOVE {remove}")),
        };
        let done = applied(req.send().await)?;
        if let (false, Some(r), Some(_)) = (done, record, &inline) {
            // The lease was lost, but the request went out: its attempt is recorded all the same.
            self.record_attempt(unit, r.attempt).await?;
        }
        Ok(done)
    }

    async fn record_on_scheduler(&self, unit: &Unit, schedule: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .update_expression("SET on_scheduler = :t, schedule_name = :n")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":n", s(schedule))
            .send()
            .await;
        // A unit gone meanwhile (purged) has nothing to cancel.
        applied(res).map(|_| ())
    }

    async fn start_run(&self, parent: &TaskState, run: EpochMillis) -> Result<(), StoreError> {
        let mut item = key(task_pk(&parent.id), state_sk(Some(run)));
        item.extend([
            ("tenant".into(), s(&parent.tenant)),
            ("kind".into(), s(TaskKind::Cron.as_str())),
            ("status".into(), s(TaskStatus::Pending.as_str())),
            ("attempts".into(), n(0)),
            ("max_attempts".into(), n(parent.max_attempts)),
            ("retry_base".into(), n(0)),
            ("timeout_ms".into(), n(parent.timeout_ms)),
            ("created_at".into(), n(run)),
            ("updated_at".into(), n(run)),
            ("due_at".into(), n(run)),
            ("host".into(), s(&parent.host)),
            // A run is fired by its task's schedule; none is made for it.
            ("on_scheduler".into(), AttributeValue::Bool(false)),
            (TTL.into(), ttl_secs(run + self.retention_ms)),
            // Runs are reconciled like one-off tasks: a lost message is found again.
            (RPK.into(), s(format!("RECON#{}", shard(&parent.id)))),
            (RSK.into(), n(run + self.reconcile_grace_ms)),
        ]);
        if let Some(b) = &parent.business_id {
            item.insert("business_id".into(), s(b));
        }
        match self
            .put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn end_run(&self, unit: &Unit, reason: &str, now: EpochMillis) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .update_expression("SET #s = :c, updated_at = :now, failure_reason = :why REMOVE lease_until, due_at")
            .condition_expression(
                "attribute_exists(#pk) AND (#s IN (:pending, :retrying, :scheduled) \
                 OR (#s = :sending AND lease_until < :now))",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":c", s(TaskStatus::Cancelled.as_str()))
            .expression_attribute_values(":why", s(reason))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":retrying", s(TaskStatus::Retrying.as_str()))
            .expression_attribute_values(":scheduled", s(TaskStatus::Scheduled.as_str()))
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .send()
            .await;
        applied(res)
    }

    async fn retry_run(&self, unit: &Unit, more: u32, now: EpochMillis) -> Result<Retried, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .update_expression(
                "SET #s = :pending, due_at = :now, updated_at = :now, retry_base = attempts, \
                 max_attempts = attempts + :more, #rpk = :shard, #rsk = :recon REMOVE failure_reason",
            )
            .condition_expression("#s = :failed")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#rpk", RPK)
            .expression_attribute_names("#rsk", RSK)
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":failed", s(TaskStatus::Failed.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":more", n(more))
            .expression_attribute_values(":shard", s(format!("RECON#{}", shard(&unit.task))))
            .expression_attribute_values(":recon", n(now + self.reconcile_grace_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Retried::Done),
            Err(e) if is_conditional_failure(&e) => Ok(match self.read_state(unit).await? {
                Some(st) => Retried::NotFailed(st.status),
                None => Retried::Missing,
            }),
            Err(e) => Err(store_error(e)),
        }
    }
}

/// The request a state item carries itself (the API inlines small ones).
fn inline_spec(id: &TaskId, item: &super::Item) -> Result<Option<Box<(RequestSpec, RetryPolicy)>>, StoreError> {
    if !item.contains_key("spec") {
        return Ok(None);
    }
    let (spec, retry, _) = request_of(id.as_str(), item)?;
    Ok(Some(Box::new((spec, retry))))
}
