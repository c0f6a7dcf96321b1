//! The DynamoDB adapter of [`TaskStore`]. The only module that knows
//! `AttributeValue`s.
//!
//! Layout (one table, generic keys): a task's items share `pk = TASK#<id>`.
//! `sk = STATE` is the small mutable item every status change rewrites;
//! `sk = SPEC` holds the request (written once); `sk = ATTEMPT#<n>` one per
//! attempt, zero-padded so they sort.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use crate::domain::{Attempt, EpochMillis, NewTask, RequestSpec, RetryPolicy, TaskId, TaskState, TaskStatus};
use crate::ports::{Claim, StoreError, StoredTask, TaskStore, Transition};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL};

type Item = HashMap<String, AttributeValue>;

const STATE: &str = "STATE";
const SPEC: &str = "SPEC";
const ATTEMPT_PREFIX: &str = "ATTEMPT#";
const DAY_MS: i64 = 86_400_000;

/// Tasks in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention_ms: i64,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention_days: u64) -> Self {
        Self { client, table: table.into(), retention_ms: retention_days as i64 * DAY_MS }
    }

    fn key(id: &TaskId, sk: &str) -> Item {
        HashMap::from([(PK.to_owned(), s(pk(id))), (SK.to_owned(), s(sk))])
    }

    async fn read_state(&self, id: &TaskId) -> Result<Option<TaskState>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id, STATE)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(|i| state_from_item(id, &i)).transpose()
    }
}

fn pk(id: &TaskId) -> String {
    format!("TASK#{id}")
}

fn attempt_sk(n: u32) -> String {
    format!("{ATTEMPT_PREFIX}{n:010}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ttl_secs(at_ms: EpochMillis) -> AttributeValue {
    n(at_ms / 1000)
}

fn unavailable<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

fn get_s<'a>(id: &TaskId, item: &'a Item, k: &str) -> Result<&'a str, StoreError> {
    item.get(k)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt { id: id.to_string(), what: format!("missing string `{k}`") })
}

fn get_n<T: std::str::FromStr>(id: &TaskId, item: &Item, k: &str) -> Result<Option<T>, StoreError> {
    match item.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|x| x.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt { id: id.to_string(), what: format!("`{k}` is not a number") }),
    }
}

fn req_n<T: std::str::FromStr>(id: &TaskId, item: &Item, k: &str) -> Result<T, StoreError> {
    get_n(id, item, k)?.ok_or_else(|| StoreError::Corrupt { id: id.to_string(), what: format!("missing number `{k}`") })
}

fn json<T: serde::de::DeserializeOwned>(id: &TaskId, item: &Item, k: &str) -> Result<T, StoreError> {
    serde_json::from_str(get_s(id, item, k)?)
        .map_err(|e| StoreError::Corrupt { id: id.to_string(), what: format!("`{k}`: {e}") })
}

fn state_from_item(id: &TaskId, i: &Item) -> Result<TaskState, StoreError> {
    let status = get_s(id, i, "status")?;
    Ok(TaskState {
        id: id.clone(),
        tenant: get_s(id, i, "tenant")?.to_owned(),
        status: TaskStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt { id: id.to_string(), what: format!("unknown status `{status}`") })?,
        attempts: req_n(id, i, "attempts")?,
        max_attempts: req_n(id, i, "max_attempts")?,
        created_at: req_n(id, i, "created_at")?,
        updated_at: req_n(id, i, "updated_at")?,
        due_at: get_n(id, i, "due_at")?,
        lease_until: get_n(id, i, "lease_until")?,
        host: get_s(id, i, "host")?.to_owned(),
        failure_reason: i.get("failure_reason").and_then(|v| v.as_s().ok()).cloned(),
    })
}

impl TaskStore for DynamoStore {
    async fn create(&self, task: &NewTask) -> Result<(), StoreError> {
        let mut spec = Self::key(&task.id, SPEC);
        spec.insert("spec".into(), s(to_json(&task.spec)));
        spec.insert("retry".into(), s(to_json(&task.retry)));
        // The spec outlives any retry schedule; finished state items get their own TTL.
        spec.insert(TTL.into(), ttl_secs(task.due_at + self.retention_ms));
        self.client.put_item().table_name(&self.table).set_item(Some(spec)).send().await.map_err(unavailable)?;

        let mut state = Self::key(&task.id, STATE);
        state.extend([
            ("tenant".into(), s(&task.tenant)),
            ("status".into(), s(TaskStatus::Pending.as_str())),
            ("attempts".into(), n(0)),
            ("max_attempts".into(), n(task.retry.max_attempts)),
            ("created_at".into(), n(task.created_at)),
            ("updated_at".into(), n(task.created_at)),
            ("due_at".into(), n(task.due_at)),
            ("host".into(), s(task.spec.url.host())),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(state))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn discard(&self, id: &TaskId) -> Result<(), StoreError> {
        for sk in [STATE, SPEC] {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(id, sk)))
                .send()
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn get(&self, id: &TaskId) -> Result<Option<StoredTask>, StoreError> {
        // SPEC and STATE sort after every ATTEMPT#: one query reads both.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk >= :spec")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(pk(id)))
            .expression_attribute_values(":spec", s(SPEC))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let items = out.items.unwrap_or_default();
        let find = |sk: &str| items.iter().find(|i| i.get(SK).and_then(|v| v.as_s().ok()).is_some_and(|v| v == sk));
        let (Some(state), Some(spec)) = (find(STATE), find(SPEC)) else {
            return Ok(None);
        };
        Ok(Some(StoredTask {
            state: state_from_item(id, state)?,
            spec: json(id, spec, "spec")?,
            retry: json(id, spec, "retry")?,
        }))
    }

    async fn last_attempt(&self, id: &TaskId) -> Result<Option<Attempt>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :a)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(pk(id)))
            .expression_attribute_values(":a", s(ATTEMPT_PREFIX))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.items.unwrap_or_default().first().map(|i| json(id, i, "attempt")).transpose()
    }

    async fn claim(&self, id: &TaskId, now: EpochMillis, lease_until: EpochMillis) -> Result<Claim, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id, STATE)))
            .update_expression("SET #s = :sending, attempts = attempts + :one, lease_until = :lease, updated_at = :now")
            .condition_expression(
                "attribute_exists(#pk) AND (#s IN (:pending, :retrying, :scheduled) OR (#s = :sending AND lease_until < :now))",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .expression_attribute_values(":pending", s(TaskStatus::Pending.as_str()))
            .expression_attribute_values(":retrying", s(TaskStatus::Retrying.as_str()))
            .expression_attribute_values(":scheduled", s(TaskStatus::Scheduled.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":lease", n(lease_until))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                Ok(Claim::Claimed(state_from_item(id, &item)?))
            }
            // Rare path (duplicate delivery, finished task): read why.
            Err(e) if is_conditional_failure(&e) => Ok(match self.read_state(id).await? {
                Some(st) => Claim::NotClaimable(st.status),
                None => Claim::Missing,
            }),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn get_spec(&self, id: &TaskId) -> Result<Option<(RequestSpec, RetryPolicy)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id, SPEC)))
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(|i| Ok((json(id, &i, "spec")?, json(id, &i, "retry")?))).transpose()
    }

    async fn record_attempt(&self, id: &TaskId, attempt: &Attempt) -> Result<(), StoreError> {
        let mut item = Self::key(id, &attempt_sk(attempt.number));
        item.insert("attempt".into(), s(to_json(attempt)));
        item.insert(TTL.into(), ttl_secs(attempt.started_at + self.retention_ms));
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(unavailable)?;
        Ok(())
    }

    async fn finish(&self, id: &TaskId, attempt: u32, t: &Transition, now: EpochMillis) -> Result<bool, StoreError> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id, STATE)))
            .condition_expression("#s = :sending AND attempts = :n")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .expression_attribute_values(":n", n(attempt))
            .expression_attribute_values(":now", n(now));
        let req = match t {
            Transition::Succeeded => req
                .update_expression("SET #s = :to, updated_at = :now, #ttl = :ttl REMOVE lease_until, due_at")
                .expression_attribute_values(":to", s(TaskStatus::Succeeded.as_str()))
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
            Transition::Retry { due_at } => req
                .update_expression("SET #s = :to, updated_at = :now, due_at = :due REMOVE lease_until")
                .expression_attribute_values(":to", s(TaskStatus::Retrying.as_str()))
                .expression_attribute_values(":due", n(due_at)),
            Transition::Failed { reason } => req
                .update_expression(
                    "SET #s = :to, updated_at = :now, failure_reason = :why, #ttl = :ttl REMOVE lease_until, due_at",
                )
                .expression_attribute_values(":to", s(TaskStatus::Failed.as_str()))
                .expression_attribute_values(":why", s(reason))
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// The JSON string a domain value is stored as (domain types serialise infallibly).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
