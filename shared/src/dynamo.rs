//! The DynamoDB adapter of [`TaskStore`] and [`TenantStore`]. The only module
//! that knows `AttributeValue`s.
//!
//! Layout (one table, generic keys `pk`/`sk`):
//!
//! | pk | sk | what |
//! | --- | --- | --- |
//! | `TASK#<id>` | `STATE` | the small mutable state every status change rewrites; indexed by tenant |
//! | `TASK#<id>` | `SPEC` | request, retry policy and schedule (rewritten only by PATCH) |
//! | `TASK#<id>` | `RUN#<ms>` | the state of one cron run, named by its scheduled time |
//! | `TASK#<id>` | `ATTEMPT#[R<ms>#]<n>` | one per attempt |
//! | `UNIQUE#<tenant>#B#<business id>` / `…#I#<key>` | `UNIQUE` | which task holds a business id or idempotency key |
//! | `TENANT#<id>` | `TENANT` / `KEY#<key id>` | a tenant (quotas, active count) and its keys |
//! | `APIKEY#<sha256>` | `APIKEY` | key lookup by hash |
//! | `RATE#<tenant>#<second>` | `RATE` | creations in one second |

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, PutRequest, ReturnValue, TransactWriteItem, Update, WriteRequest,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::domain::{
    Attempt, EpochMillis, NewTask, Quotas, RequestSpec, RetryPolicy, Schedule, TaskId, TaskKind, TaskState, TaskStatus,
    Tenant,
};
use crate::ports::{
    Cancelled, CandidatePage, Claim, Created, ListFilter, Page, Retried, StoreError, StoredTask, TaskStore,
    TenantStore, Transition, UniqueKey, Unit,
};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, RECONCILE_HASH_KEY as RPK, RECONCILE_INDEX,
    RECONCILE_RANGE_KEY as RSK, RECONCILE_SHARDS, TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK,
    TABLE_TTL_ATTRIBUTE as TTL, TASKS_BY_TENANT_INDEX,
};

type Item = HashMap<String, AttributeValue>;

const STATE: &str = "STATE";
const SPEC: &str = "SPEC";
const ATTEMPT_PREFIX: &str = "ATTEMPT#";
const RUN_PREFIX: &str = "RUN#";
const DAY_MS: i64 = 86_400_000;
/// Idempotency keys are remembered this long.
const IDEMPOTENCY_TTL_MS: i64 = DAY_MS;
/// A unit due within this much is claimable (clock skew between functions).
const DUE_SLACK_MS: i64 = 1_000;
/// A listing examines at most this many tasks per call before returning a partial page.
const MAX_EXAMINED: usize = 1_000;
/// How many times a create tries to take a contended unique key before giving up.
const UNIQUE_ROUNDS: u32 = 6;
/// DynamoDB's limit of items per transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// The store kept refusing part of a request (a unique key changing hands
/// under a create, throttled batch items): try again.
#[derive(Debug, thiserror::Error)]
#[error("{0}; try again")]
struct Busy(String);

/// Tasks and tenants in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention_ms: i64,
    reconcile_grace_ms: i64,
}

/// The reconcile shard of a task: spreads the index's writes.
fn shard(id: &TaskId) -> u32 {
    id.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % RECONCILE_SHARDS
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

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

fn task_pk(id: &TaskId) -> String {
    format!("TASK#{id}")
}

fn state_sk(run: Option<EpochMillis>) -> String {
    match run {
        None => STATE.to_owned(),
        Some(ms) => format!("{RUN_PREFIX}{ms:015}"),
    }
}

fn attempt_sk(run: Option<EpochMillis>, n: u32) -> String {
    match run {
        None => format!("{ATTEMPT_PREFIX}{n:010}"),
        Some(ms) => format!("{ATTEMPT_PREFIX}R{ms:015}#{n:010}"),
    }
}

fn unique_pk(tenant: &str, k: &UniqueKey) -> String {
    match k {
        UniqueKey::BusinessId(b) => format!("UNIQUE#{tenant}#B#{b}"),
        UniqueKey::IdempotencyKey(i) => format!("UNIQUE#{tenant}#I#{i}"),
    }
}

/// A failed DynamoDB call as a store error: input DynamoDB refuses
/// (`ValidationException`: an item over 400 KB, a key too long, a bad start
/// key) is [`StoreError::Invalid`], since retrying it cannot help; anything
/// else (throttling, 5xx, network) is [`StoreError::Unavailable`].
fn unavailable<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    if refused_input(&e) { StoreError::Invalid(Box::new(e)) } else { StoreError::Unavailable(Box::new(e)) }
}

/// Error codes DynamoDB answers for a request it will never accept as sent.
const INPUT_ERROR_CODES: [&str; 2] = ["ValidationException", "SerializationException"];

/// Whether `e` (an `SdkError` of any operation, or anything wrapping one)
/// carries a service error code of refused input. The SDK's error is generic
/// per operation, so its service error is found by type along the source chain.
fn refused_input(e: &(dyn std::error::Error + 'static)) -> bool {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    use aws_sdk_dynamodb::operation as op;
    macro_rules! code_of {
        ($err:expr, $($t:ty),+) => {{
            let err = $err;
            None$(.or_else(|| err.downcast_ref::<$t>().and_then(|x| x.code())))+
        }};
    }
    let mut next = Some(e);
    while let Some(err) = next {
        let code = code_of!(
            err,
            op::get_item::GetItemError,
            op::put_item::PutItemError,
            op::update_item::UpdateItemError,
            op::delete_item::DeleteItemError,
            op::query::QueryError,
            op::scan::ScanError,
            op::batch_get_item::BatchGetItemError,
            op::batch_write_item::BatchWriteItemError,
            op::transact_write_items::TransactWriteItemsError,
            op::transact_get_items::TransactGetItemsError
        );
        if code.is_some_and(|c| INPUT_ERROR_CODES.contains(&c)) {
            return true;
        }
        next = err.source();
    }
    false
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

fn is_transaction_cancelled<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("TransactionCanceledException")
}

fn corrupt(id: &str, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { id: id.to_owned(), what: what.into() }
}

/// A conditional write's result: `Ok(false)` when its condition did not hold.
fn applied<T, E, R>(res: Result<T, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_conditional_failure(&e) => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

fn get_s<'a>(id: &str, item: &'a Item, k: &str) -> Result<&'a str, StoreError> {
    opt_s(item, k).ok_or_else(|| corrupt(id, format!("missing string `{k}`")))
}

fn opt_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n<T: std::str::FromStr>(id: &str, item: &Item, k: &str) -> Result<Option<T>, StoreError> {
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

fn req_n<T: std::str::FromStr>(id: &str, item: &Item, k: &str) -> Result<T, StoreError> {
    get_n(id, item, k)?.ok_or_else(|| corrupt(id, format!("missing number `{k}`")))
}

fn json<T: serde::de::DeserializeOwned>(id: &str, item: &Item, k: &str) -> Result<T, StoreError> {
    serde_json::from_str(get_s(id, item, k)?).map_err(|e| corrupt(id, format!("`{k}`: {e}")))
}

/// The JSON string a domain value is stored as (domain types serialise infallibly).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn state_from_item(id: &TaskId, run: Option<EpochMillis>, i: &Item) -> Result<TaskState, StoreError> {
    let sid = id.as_str();
    let status = get_s(sid, i, "status")?;
    Ok(TaskState {
        id: id.clone(),
        run,
        kind: if opt_s(i, "kind") == Some("cron") { TaskKind::Cron } else { TaskKind::Once },
        tenant: get_s(sid, i, "tenant")?.to_owned(),
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
        failure_reason: opt_s(i, "failure_reason").map(str::to_owned),
        last_status: get_n(sid, i, "last_status")?,
    })
}

/// Reads the task id back from a `pk`.
fn id_of(item: &Item) -> Option<TaskId> {
    opt_s(item, PK).and_then(|pk| pk.strip_prefix("TASK#")).and_then(|id| TaskId::parse(id).ok())
}

fn encode_cursor(v: &str) -> String {
    B64.encode(v)
}

fn decode_cursor(c: &str) -> Option<String> {
    B64.decode(c).ok().and_then(|b| String::from_utf8(b).ok())
}

/// The smallest and largest task id created in the millisecond `ms` (UUIDv7
/// ids start with the creation time), for time-bounded listings.
fn id_bound(ms: EpochMillis, upper: bool) -> String {
    let fill = if upper { "f" } else { "0" };
    format!("tsk_{:012x}{}", ms.max(0), fill.repeat(20))
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention_days: u64) -> Self {
        Self { client, table: table.into(), retention_ms: retention_days as i64 * DAY_MS, reconcile_grace_ms: 120_000 }
    }

    /// How long after its due time the reconciler checks on a task.
    pub fn with_reconcile_grace(mut self, grace_ms: i64) -> Self {
        self.reconcile_grace_ms = grace_ms;
        self
    }

    /// A strongly consistent read of one item.
    async fn get_item(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// A query over one task's items whose sort key starts with `prefix`.
    fn task_items(
        &self,
        id: &TaskId,
        prefix: &str,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(task_pk(id)))
            .expression_attribute_values(":prefix", s(prefix))
    }

    /// Takes `unique` for `task`, or returns the task that holds it.
    async fn take_unique(&self, task: &NewTask, unique: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
        // The unique key first, by a conditional put: exactly one of concurrent
        // identical creates wins it. (No transaction: none is needed, and the
        // local emulator's transactions restore a copy of the table on failure.)
        let unique_key = key(unique_pk(&task.tenant, unique), "UNIQUE");
        let mut orphan: Option<TaskId> = None;
        // Bounded: a key that keeps changing hands (or vanishing) under us is
        // contention to report, never a loop to spin in.
        for round in 0..UNIQUE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << round.min(5))).await;
            }
            let mut put = self.put(self.unique_item(task, unique));
            put = match &orphan {
                None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", PK),
                Some(o) => {
                    put.condition_expression("task_id = :orphan").expression_attribute_values(":orphan", s(o.as_str()))
                }
            };
            if applied(put.send().await)? {
                return Ok(None);
            }
            let Some(holder) = self.find_by_key(&task.tenant, unique).await? else {
                // The key went away (its holder was discarded or purged): take it fresh.
                orphan = None;
                continue;
            };
            let exists =
                |id: TaskId| async move { self.read_state(&Unit { task: id, run: None }).await.map(|s| s.is_some()) };
            if exists(holder.clone()).await? {
                return Ok(Some(holder));
            }
            if orphan.as_ref() == Some(&holder) {
                // Taken over by us already, yet the put failed: someone else moved it meanwhile.
                continue;
            }
            // Its creator may be between the key and the state: give it a moment.
            tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
            if exists(holder.clone()).await? {
                return Ok(Some(holder));
            }
            // A creator that died after taking the key: take it over.
            tracing::warn!(key = ?unique_key, orphan = %holder, "taking over an orphaned unique key");
            orphan = Some(holder);
        }
        Err(StoreError::Unavailable(Box::new(Busy(format!(
            "unique key {} is contended",
            unique_pk(&task.tenant, unique)
        )))))
    }

    /// Deletes a unique key only if it names `task` (another task may hold it now).
    async fn delete_unique_if_mine(&self, tenant: &str, k: &UniqueKey, task: &TaskId) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(unique_pk(tenant, k), "UNIQUE")))
            .condition_expression("task_id = :mine")
            .expression_attribute_values(":mine", s(task.as_str()))
            .send()
            .await;
        applied(res)
    }

    /// One transaction of a stream batch's counts, guarded by `id`; `Ok(false)` if applied before.
    async fn apply_count_chunk(&self, id: &str, writes: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        let now = crate::domain::now_millis();
        let mut marker = key(format!("COUNTBATCH#{id}"), "COUNTBATCH");
        marker.insert(TTL.into(), ttl_secs(now + 2 * DAY_MS));
        let guard = Put::builder()
            .table_name(&self.table)
            .set_item(Some(marker))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(unavailable)?;
        let mut items = vec![TransactWriteItem::builder().put(guard).build()];
        items.extend(writes);
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_transaction_cancelled(&e) => {
                let seen = self.get_item(key(format!("COUNTBATCH#{id}"), "COUNTBATCH")).await?;
                if seen.is_some() { Ok(false) } else { Err(unavailable(e)) }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn put(&self, item: Item) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
        self.client.put_item().table_name(&self.table).set_item(Some(item))
    }

    fn new_items(&self, task: &NewTask) -> (Item, Item) {
        let mut spec = key(task_pk(&task.id), SPEC);
        spec.insert("spec".into(), s(to_json(&task.spec)));
        spec.insert("retry".into(), s(to_json(&task.retry)));
        spec.insert("schedule".into(), s(to_json(&task.schedule)));
        if task.kind() == TaskKind::Once {
            // The spec outlives any retry schedule; finished state items get their own TTL.
            spec.insert(TTL.into(), ttl_secs(task.due_at + self.retention_ms));
        }
        let mut state = key(task_pk(&task.id), STATE);
        state.extend([
            ("tenant".into(), s(&task.tenant)),
            ("kind".into(), s(task.kind().as_str())),
            ("status".into(), s(task.initial_status().as_str())),
            ("attempts".into(), n(0)),
            ("max_attempts".into(), n(task.retry.max_attempts())),
            ("retry_base".into(), n(0)),
            ("timeout_ms".into(), n(task.spec.timeout_ms)),
            ("created_at".into(), n(task.created_at)),
            ("updated_at".into(), n(task.created_at)),
            ("due_at".into(), n(task.due_at)),
            ("host".into(), s(task.spec.url.host())),
            (GPK.into(), s(format!("TENANT#{}", task.tenant))),
            (GSK.into(), s(task.id.as_str())),
        ]);
        if task.kind() == TaskKind::Once {
            state.insert(RPK.into(), s(format!("RECON#{}", shard(&task.id))));
            state.insert(RSK.into(), n(task.due_at + self.reconcile_grace_ms));
        }
        if let Some(b) = &task.business_id {
            state.insert("business_id".into(), s(b));
        }
        (spec, state)
    }

    fn unique_item(&self, task: &NewTask, k: &UniqueKey) -> Item {
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

    /// Reads many items by key (missing ones are left out), keyed by (pk, sk).
    async fn batch_get_keys(&self, all: Vec<Item>) -> Result<HashMap<(String, String), Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in all.chunks(100) {
            let mut keys: Vec<Item> = chunk.to_vec();
            for attempt in 0..6 {
                if keys.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
                }
                let ka = KeysAndAttributes::builder().set_keys(Some(keys.clone())).build().map_err(unavailable)?;
                let out =
                    self.client.batch_get_item().request_items(&self.table, ka).send().await.map_err(unavailable)?;
                for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                    if let (Some(pk), Some(sk)) = (opt_s(&item, PK), opt_s(&item, SK)) {
                        found.insert((pk.to_owned(), sk.to_owned()), item);
                    }
                }
                keys =
                    out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|ka| ka.keys).unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Unavailable(Box::new(Busy("items left unread by a batch read".into()))));
            }
        }
        Ok(found)
    }

    async fn batch_get_states(&self, ids: &[TaskId]) -> Result<HashMap<String, Item>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk.iter().map(|id| key(task_pk(id), STATE)).collect();
            for _ in 0..5 {
                if keys.is_empty() {
                    break;
                }
                let ka = KeysAndAttributes::builder().set_keys(Some(keys.clone())).build().map_err(unavailable)?;
                let out =
                    self.client.batch_get_item().request_items(&self.table, ka).send().await.map_err(unavailable)?;
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
        self.put(spec).send().await.map_err(unavailable)?;
        self.put(state)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(unavailable)?;
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
                    let put = PutRequest::builder().set_item(Some(item)).build().map_err(unavailable)?;
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
            .map_err(unavailable)?;
        let existed = old.attributes.is_some_and(|a| !a.is_empty());
        let spec = key(task_pk(&task.id), SPEC);
        self.client.delete_item().table_name(&self.table).set_key(Some(spec)).send().await.map_err(unavailable)?;
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
            .map_err(unavailable)?;
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

    async fn find_by_key(&self, tenant: &str, k: &UniqueKey) -> Result<Option<TaskId>, StoreError> {
        let out = self.get_item(key(unique_pk(tenant, k), "UNIQUE")).await?;
        Ok(out.as_ref().and_then(|i| opt_s(i, "task_id")).and_then(|id| TaskId::parse(id).ok()))
    }

    async fn list(
        &self,
        tenant: &str,
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
            let out = q.send().await.map_err(unavailable)?;
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
        let mut q = self.task_items(id, ATTEMPT_PREFIX).limit(limit as i32);
        if let Some(sk) = cursor.and_then(decode_cursor).filter(|sk| sk.starts_with(ATTEMPT_PREFIX)) {
            q = q.set_exclusive_start_key(Some(key(task_pk(id), sk)));
        }
        let out = q.send().await.map_err(unavailable)?;
        let items = out.items.unwrap_or_default();
        let attempts = items.iter().map(|i| json(id.as_str(), i, "attempt")).collect::<Result<Vec<Attempt>, _>>()?;
        let cursor = out.last_evaluated_key.as_ref().and_then(|k| opt_s(k, SK)).map(encode_cursor);
        Ok(Page { items: attempts, cursor })
    }

    async fn last_attempt(&self, id: &TaskId) -> Result<Option<Attempt>, StoreError> {
        let out = self
            .task_items(id, ATTEMPT_PREFIX)
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.items.unwrap_or_default().first().map(|i| json(id.as_str(), i, "attempt")).transpose()
    }

    async fn runs(&self, id: &TaskId, limit: usize) -> Result<Vec<TaskState>, StoreError> {
        let out = self
            .task_items(id, RUN_PREFIX)
            .scan_index_forward(false)
            .limit(limit as i32)
            .send()
            .await
            .map_err(unavailable)?;
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
            Err(e) => Err(unavailable(e)),
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
            .map_err(unavailable)?;
        let put = Put::builder().table_name(&self.table).set_item(Some(spec_item)).build().map_err(unavailable)?;
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
            Err(e) => Err(unavailable(e)),
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
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn reconcile_page(
        &self,
        shard: u32,
        from: EpochMillis,
        to: EpochMillis,
        limit: usize,
        start: Option<&str>,
    ) -> Result<CandidatePage, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(RECONCILE_INDEX)
            .key_condition_expression("#r = :r AND #ra BETWEEN :from AND :to")
            .expression_attribute_names("#r", RPK)
            .expression_attribute_names("#ra", RSK)
            .expression_attribute_values(":r", s(format!("RECON#{shard}")))
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":to", n(to))
            .limit(limit.clamp(1, 100) as i32);
        let start = start.and_then(decode_cursor).and_then(|c| serde_json::from_str::<Vec<String>>(&c).ok());
        if let Some([pk, sk, at]) = start.as_deref() {
            let mut esk = key(pk.as_str(), sk.as_str());
            esk.insert(RPK.into(), s(format!("RECON#{shard}")));
            esk.insert(RSK.into(), AttributeValue::N(at.clone()));
            q = q.set_exclusive_start_key(Some(esk));
        }
        let out = q.send().await.map_err(unavailable)?;
        let found = out.items.unwrap_or_default();
        let units: Vec<(Unit, Item)> = found
            .iter()
            .filter_map(|i| {
                let run = match opt_s(i, SK)? {
                    STATE => None,
                    sk => Some(sk.strip_prefix(RUN_PREFIX)?.parse().ok()?),
                };
                Some((Unit { task: id_of(i)?, run }, key(opt_s(i, PK)?, opt_s(i, SK)?)))
            })
            .collect();
        let read = self.batch_get_keys(units.iter().map(|(_, k)| k.clone()).collect()).await?;
        let mut items = Vec::with_capacity(units.len());
        for (unit, k) in &units {
            let pair = (opt_s(k, PK).unwrap_or_default().to_owned(), opt_s(k, SK).unwrap_or_default().to_owned());
            if let Some(i) = read.get(&pair) {
                items.push(state_from_item(&unit.task, unit.run, i)?);
            }
        }
        let (next, checked_to) = match out.last_evaluated_key {
            None => (None, to),
            Some(last) => {
                let at: EpochMillis = get_n("RECONCILER", &last, RSK)?.unwrap_or(from);
                let parts = [opt_s(&last, PK), opt_s(&last, SK)].map(|p| p.unwrap_or_default().to_owned());
                let cursor = serde_json::json!([parts[0], parts[1], at.to_string()]).to_string();
                (Some(encode_cursor(&cursor)), at)
            }
        };
        Ok(CandidatePage { items, next, checked_to })
    }

    async fn push_reconcile(&self, unit: &Unit, at: EpochMillis) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(&unit.task), state_sk(unit.run))))
            .update_expression("SET #rsk = :at")
            .condition_expression("attribute_exists(#rpk)")
            .expression_attribute_names("#rsk", RSK)
            .expression_attribute_names("#rpk", RPK)
            .expression_attribute_values(":at", n(at))
            .send()
            .await;
        // A unit purged meanwhile has nothing left to check.
        applied(res).map(|_| ())
    }

    async fn watermark(&self, shard: u32) -> Result<Option<EpochMillis>, StoreError> {
        let out = self.get_item(key("RECONCILER", format!("WATERMARK#{shard}"))).await?;
        let out = match out {
            Some(i) => Some(i),
            // Written by a reconciler that did not page by shard yet.
            None => self.get_item(key("RECONCILER", "WATERMARK")).await?,
        };
        out.map(|i| req_n("RECONCILER", &i, "at")).transpose()
    }

    async fn set_watermark(&self, shard: u32, at: EpochMillis) -> Result<(), StoreError> {
        let mut item = key("RECONCILER", format!("WATERMARK#{shard}"));
        item.insert("at".into(), n(at));
        self.put(item).send().await.map_err(unavailable)?;
        Ok(())
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
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn apply_counts(&self, batch_id: &str, deltas: &crate::counter::Deltas) -> Result<bool, StoreError> {
        // A transaction holds 100 items: its guard and up to two per tenant. The
        // tenants go in a fixed order, so a retried batch forms the same chunks,
        // and each chunk is guarded by its own id: a chunk applied before a
        // failure is not counted again when the batch comes back.
        let mut tenants: Vec<(&String, &crate::counter::TenantDelta)> = deltas.iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(b.0));
        let mut chunks: Vec<Vec<TransactWriteItem>> = vec![Vec::new()];
        for (tenant, delta) in tenants {
            let mut writes = Vec::new();
            if !delta.statuses.is_empty() {
                let mut u = Update::builder().table_name(&self.table).set_key(Some(key(tenant_pk(tenant), "COUNTS")));
                let mut adds = Vec::new();
                for (i, (status, d)) in delta.statuses.iter().enumerate() {
                    adds.push(format!("#c{i} :d{i}"));
                    u = u.expression_attribute_names(format!("#c{i}"), format!("c_{}", status.as_str()));
                    u = u.expression_attribute_values(format!(":d{i}"), n(d));
                }
                let u = u.update_expression(format!("ADD {}", adds.join(", "))).build().map_err(unavailable)?;
                writes.push(TransactWriteItem::builder().update(u).build());
            }
            if delta.active != 0 {
                let u = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key(tenant_pk(tenant), "TENANT")))
                    .update_expression("ADD active :a")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_values(":a", n(delta.active))
                    .build()
                    .map_err(unavailable)?;
                writes.push(TransactWriteItem::builder().update(u).build());
            }
            let last = chunks.last_mut().expect("one chunk at least");
            if last.len() + writes.len() > MAX_TRANSACTION_ITEMS - 1 {
                chunks.push(writes);
            } else {
                last.extend(writes);
            }
        }
        let mut any = false;
        for (i, writes) in chunks.into_iter().enumerate() {
            if writes.is_empty() {
                continue;
            }
            // The first chunk keeps the batch's own id (batches counted before chunking stay counted).
            let id = if i == 0 { batch_id.to_owned() } else { format!("{batch_id}#{i}") };
            any |= self.apply_count_chunk(&id, writes).await?;
        }
        Ok(any)
    }

    async fn counts(&self, tenant: &str) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
        let out = self.get_item(key(tenant_pk(tenant), "COUNTS")).await?;
        let item = out.unwrap_or_default();
        TaskStatus::ALL
            .iter()
            .map(|s| Ok((*s, get_n(tenant, &item, &format!("c_{}", s.as_str()))?.unwrap_or(0))))
            .collect()
    }

    async fn put_replay(&self, r: &crate::domain::Replay) -> Result<(), StoreError> {
        let mut item = key(format!("REPLAY#{}", r.id), "REPLAY");
        item.insert("doc".into(), s(to_json(r)));
        item.insert("version".into(), n(r.version));
        item.insert(TTL.into(), ttl_secs(r.created_at + self.retention_ms));
        self.put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_replay(&self, id: &str) -> Result<Option<crate::domain::Replay>, StoreError> {
        let out = self.get_item(key(format!("REPLAY#{id}"), "REPLAY")).await?;
        out.map(|i| json(id, &i, "doc")).transpose()
    }

    async fn save_replay(&self, r: &crate::domain::Replay) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("REPLAY#{}", r.id), "REPLAY")))
            .update_expression("SET doc = :doc, version = :v")
            .condition_expression("version = :prev")
            .expression_attribute_values(":doc", s(to_json(r)))
            .expression_attribute_values(":v", n(r.version))
            .expression_attribute_values(":prev", n(r.version.saturating_sub(1)))
            .send()
            .await;
        applied(res)
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
            for i in page.map_err(unavailable)?.items.unwrap_or_default() {
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
                    d.map(|d| WriteRequest::builder().delete_request(d).build()).map_err(unavailable)
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
                    .map_err(unavailable)?;
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
            Err(e) => Err(unavailable(e)),
        }
    }

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
        let res = req.send().await;
        match res {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                let mut state = state_from_item(&unit.task, unit.run, &old)?;
                let interrupted_at = (state.status == TaskStatus::Sending)
                    .then(|| get_n(unit.task.as_str(), &old, "claimed_at").ok().flatten().unwrap_or(state.updated_at));
                state.status = TaskStatus::Sending;
                state.attempts += 1;
                state.lease_until = Some(now + lease_margin + state.timeout_ms as i64);
                state.updated_at = now;
                Ok(Claim::Claimed { state: Box::new(state), interrupted_at })
            }
            // Rare path (early or duplicate delivery, finished task, no time left): read why.
            Err(e) if is_conditional_failure(&e) => {
                let Some(item) = self.get_item(key(task_pk(&unit.task), state_sk(unit.run))).await? else {
                    return Ok(Claim::Missing);
                };
                let st = state_from_item(&unit.task, unit.run, &item)?;
                if st.status == TaskStatus::Sending && opt_s(&item, "claim_token") == Some(token.as_str()) {
                    // Our own claim, applied on a try whose answer was lost.
                    return Ok(Claim::Claimed { state: Box::new(st), interrupted_at: None });
                }
                let claimable = match st.status {
                    TaskStatus::Pending | TaskStatus::Retrying | TaskStatus::Scheduled => true,
                    TaskStatus::Sending => st.lease_until.is_some_and(|l| l < now),
                    _ => false,
                };
                Ok(match (st.status, st.due_at) {
                    (TaskStatus::Pending | TaskStatus::Retrying | TaskStatus::Scheduled, Some(due))
                        if due > now + DUE_SLACK_MS =>
                    {
                        Claim::NotDue(due)
                    }
                    _ if claimable && max_timeout_ms.is_some_and(|b| st.timeout_ms > b) => Claim::NoTime,
                    (status, _) => Claim::NotClaimable(status),
                })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn read_state(&self, unit: &Unit) -> Result<Option<TaskState>, StoreError> {
        let out = self.get_item(key(task_pk(&unit.task), state_sk(unit.run))).await?;
        out.map(|i| state_from_item(&unit.task, unit.run, &i)).transpose()
    }

    async fn get_spec(&self, id: &TaskId) -> Result<Option<(RequestSpec, RetryPolicy)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(task_pk(id), SPEC)))
            .projection_expression("spec, retry")
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(|i| Ok((json(id.as_str(), &i, "spec")?, json(id.as_str(), &i, "retry")?))).transpose()
    }

    async fn record_attempt(&self, unit: &Unit, attempt: &Attempt) -> Result<(), StoreError> {
        let mut item = key(task_pk(&unit.task), attempt_sk(unit.run, attempt.number));
        item.insert("attempt".into(), s(to_json(attempt)));
        item.insert(TTL.into(), ttl_secs(attempt.started_at + self.retention_ms));
        self.put(item).send().await.map_err(unavailable)?;
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

    async fn finish(&self, unit: &Unit, attempt: u32, t: &Transition, now: EpochMillis) -> Result<bool, StoreError> {
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
        let req = match t {
            Transition::Succeeded => req
                .update_expression("SET #s = :to, updated_at = :now, #ttl = :ttl REMOVE lease_until, due_at")
                .expression_attribute_values(":to", s(TaskStatus::Succeeded.as_str()))
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
            // One-off tasks and cron runs alike (a run stored before runs were indexed has no
            // index key: its check time alone keeps it out of the index).
            Transition::Retry { due_at, status } => req
                .update_expression(
                    "SET #s = :to, updated_at = :now, due_at = :due, #rsk = :recon, last_status = :ls \
                     REMOVE lease_until",
                )
                .expression_attribute_values(":ls", n(status.unwrap_or(0)))
                .expression_attribute_values(":to", s(TaskStatus::Retrying.as_str()))
                .expression_attribute_values(":due", n(due_at))
                .expression_attribute_names("#rsk", RSK)
                .expression_attribute_values(":recon", n(due_at + self.reconcile_grace_ms)),
            Transition::Failed { reason, status } => req
                .update_expression(
                    "SET #s = :to, updated_at = :now, failure_reason = :why, #ttl = :ttl, last_status = :ls \
                     REMOVE lease_until, due_at",
                )
                .expression_attribute_values(":ls", n(status.unwrap_or(0)))
                .expression_attribute_values(":to", s(TaskStatus::Failed.as_str()))
                .expression_attribute_values(":why", s(reason))
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":ttl", ttl_secs(now + self.retention_ms)),
        };
        applied(req.send().await)
    }
}

fn tenant_pk(id: &str) -> String {
    format!("TENANT#{id}")
}

fn tenant_from_item(i: &Item) -> Result<Tenant, StoreError> {
    let id = opt_s(i, PK).and_then(|p| p.strip_prefix("TENANT#")).unwrap_or_default().to_owned();
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
        id,
    })
}

impl TenantStore for DynamoStore {
    async fn create_tenant(&self, t: &Tenant) -> Result<(), StoreError> {
        let mut item = key(tenant_pk(&t.id), "TENANT");
        item.extend([
            ("name".into(), s(&t.name)),
            ("enabled".into(), AttributeValue::Bool(t.enabled)),
            ("max_active".into(), n(t.quotas.max_active_tasks)),
            ("create_rate".into(), n(t.quotas.create_rate_per_second)),
            ("active".into(), n(0)),
            ("created_at".into(), n(t.created_at)),
        ]);
        self.put(item)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let out = self.get_item(key(tenant_pk(id), "TENANT")).await?;
        out.as_ref().map(tenant_from_item).transpose()
    }

    async fn update_tenant(&self, id: &str, enabled: Option<bool>, quotas: Option<Quotas>) -> Result<bool, StoreError> {
        let mut sets = Vec::new();
        let mut req = self.client.update_item().table_name(&self.table).set_key(Some(key(tenant_pk(id), "TENANT")));
        if let Some(e) = enabled {
            sets.push("enabled = :e");
            req = req.expression_attribute_values(":e", AttributeValue::Bool(e));
        }
        if let Some(q) = quotas {
            sets.push("max_active = :m, create_rate = :r");
            req = req
                .expression_attribute_values(":m", n(q.max_active_tasks))
                .expression_attribute_values(":r", n(q.create_rate_per_second));
        }
        if sets.is_empty() {
            return Ok(self.get_tenant(id).await?.is_some());
        }
        let res = req
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        applied(res)
    }

    async fn put_key(&self, tenant: &str, key_id: &str, hash: &str, now: EpochMillis) -> Result<(), StoreError> {
        let mut lookup = key(format!("APIKEY#{hash}"), "APIKEY");
        lookup.extend([("tenant".into(), s(tenant)), ("key_id".into(), s(key_id)), ("created_at".into(), n(now))]);
        let mut listed = key(tenant_pk(tenant), format!("KEY#{key_id}"));
        listed.extend([("hash".into(), s(hash)), ("created_at".into(), n(now))]);
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            let p = Put::builder().table_name(&self.table).set_item(Some(item)).build().map_err(unavailable)?;
            Ok(TransactWriteItem::builder().put(p).build())
        };
        self.client
            .transact_write_items()
            .transact_items(put(lookup)?)
            .transact_items(put(listed)?)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn tenant_of_key(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let out = self.get_item(key(format!("APIKEY#{hash}"), "APIKEY")).await?;
        Ok(out.filter(|i| !i.contains_key("revoked_at")).and_then(|i| opt_s(&i, "tenant").map(str::to_owned)))
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str, now: EpochMillis) -> Result<bool, StoreError> {
        let listed = self.get_item(key(tenant_pk(tenant), format!("KEY#{key_id}"))).await?;
        let Some(hash) = listed.as_ref().and_then(|i| opt_s(i, "hash")).map(str::to_owned) else {
            return Ok(false);
        };
        for k in [key(format!("APIKEY#{hash}"), "APIKEY"), key(tenant_pk(tenant), format!("KEY#{key_id}"))] {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .update_expression("SET revoked_at = if_not_exists(revoked_at, :now)")
                .expression_attribute_values(":now", n(now))
                .send()
                .await
                .map_err(unavailable)?;
        }
        Ok(true)
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<(String, EpochMillis, Option<EpochMillis>)>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :k)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":k", s("KEY#"))
            .send()
            .await
            .map_err(unavailable)?;
        out.items
            .unwrap_or_default()
            .iter()
            .map(|i| {
                let id = opt_s(i, SK).and_then(|k| k.strip_prefix("KEY#")).unwrap_or_default().to_owned();
                Ok((id.clone(), req_n(&id, i, "created_at")?, get_n(&id, i, "revoked_at")?))
            })
            .collect()
    }

    async fn reserve_active(&self, t: &Tenant, count: u64) -> Result<bool, StoreError> {
        let Some(limit) = t.quotas.max_active_tasks.checked_sub(count) else { return Ok(false) };
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(&t.id), "TENANT")))
            .update_expression("ADD active :k")
            .condition_expression("attribute_exists(#pk) AND (attribute_not_exists(active) OR active <= :lim)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":k", n(count))
            .expression_attribute_values(":lim", n(limit))
            .send()
            .await;
        applied(res)
    }

    async fn release_active(&self, tenant: &str, count: u64) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), "TENANT")))
            .update_expression("ADD active :k")
            .condition_expression("active >= :n")
            .expression_attribute_values(":k", AttributeValue::N(format!("-{count}")))
            .expression_attribute_values(":n", n(count))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Never below zero (a tenant created before counting, or a double release).
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn take_rate(&self, t: &Tenant, count: u64, now: EpochMillis) -> Result<bool, StoreError> {
        let Some(limit) = t.quotas.create_rate_per_second.checked_sub(count) else { return Ok(false) };
        let second = now / 1000;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{}#{second}", t.id), "RATE")))
            .update_expression("ADD #n :k SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(#n) OR #n <= :lim")
            .expression_attribute_names("#n", "n")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":k", n(count))
            .expression_attribute_values(":lim", n(limit))
            .expression_attribute_values(":ttl", n(second + 120))
            .send()
            .await;
        applied(res)
    }
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
    fn refused_input_is_invalid_and_every_other_failure_unavailable() {
        use aws_sdk_dynamodb::error::ErrorMetadata;
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        let answered = |code: &str| {
            let meta = ErrorMetadata::builder().code(code).message("m").build();
            SdkError::<PutItemError, ()>::service_error(PutItemError::generic(meta), ())
        };
        assert!(matches!(unavailable(answered("ValidationException")), StoreError::Invalid(_)));
        assert!(matches!(unavailable(answered("ThrottlingException")), StoreError::Unavailable(_)));
        assert!(matches!(unavailable(answered("InternalServerError")), StoreError::Unavailable(_)));
        assert!(matches!(unavailable(SdkError::<PutItemError, ()>::timeout_error("slow")), StoreError::Unavailable(_)));
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor("tsk_abc")), Some("tsk_abc".into()));
        assert_eq!(decode_cursor("%%%"), None);
    }
}
