//! The DynamoDB adapter of the store ports ([`crate::ports`]): one `impl`
//! per port, each in its own file, over one table. The only module that knows
//! `AttributeValue`s: keys and cursors are in `keys`, the mapping between
//! items and domain values in `codec`, error classification in `errors`.
//!
//! Layout (one table, generic keys `pk`/`sk`):
//!
//! | pk | sk | what |
//! | --- | --- | --- |
//! | `TASK#<id>` | `STATE` | the mutable state every status change rewrites, with the request inline when it is small (`spec`, `retry`, `schedule`: one item per task, under 1 KB); indexed by tenant (`gsi1pk` = `TENANT#<tenant>#<0..7>`, `gsi1sk` = creation time then id) unless a listing group lists it; `on_scheduler` (and `schedule_name` for a retry's schedule) says which schedule holds it; `slot_taken` marks a task whose active-task slot the API took itself |
//! | `LIST#<group>` | `LIST` | a listing group: the tasks one batch create stored without a business id (`ids`, 16 bytes each), listed by this one `by-tenant` entry (`gsi1sk` = the group key, creation time first; its `i`th task lists at `<group>#<iii>`); TTL a week after its tasks' first expiry, when the stream consumer gives those still alive their own entries (`groups`) |
//! | `TASK#<id>` | `SPEC` | a big request, its retry policy and schedule (rewritten only by PATCH) |
//! | `TASK#<id>` | `RUN#<ms>` | the state of one cron run, named by its scheduled time |
//! | `TASK#<id>` | `ATTEMPT#[R<ms>#]<n>` | one per attempt |
//! | `UNIQUE#<tenant>#I#<key>` | `UNIQUE` | which task holds an idempotency key (a business id names its task: `TaskId::derive`) |
//! | `TENANT#<id>` | `TENANT` / `KEY#<key id>` | a tenant (quotas, active count) and its keys |
//! | `TENANT#<id>` | `SECRET#<secret id>` | a signing secret, sealed by KMS (`sealed`), with `created_at` and, once rotated out, `until` |
//! | `APIKEY#<sha256>` | `APIKEY` | key lookup by hash |
//! | `RATE#<tenant>#<second>` | `RATE` | creations in one second (tenants with a create rate of at most 50/s) |
//! | `FLOWS` | `POL#<flow key>#<scope>` | a flow policy (`admin` or the tenant's); the partition every sender reads whole |
//! | `FLOWS` | `HOLD#<flow key>` | what holds a key's deliveries (`open`, `paused`, `closed`) and until when |
//! | `FLOW#<flow key>` | `STATE` | a key's shared state: rate slots, leases, pause, factor, breaker (short names, < 1 KB) |
//! | `FLOW#<flow key>` | `HIST#<ms>#<rand>` | one breaker, pause or factor transition |
//! | `AUDIT#<tenant or ->` | `<ms>#<rand>` | one audit entry (TTL); indexed by day (`gsi1pk` = `AUDIT#<yyyy-mm-dd>`) for the admin's view |
//! | `AUDIT#-` | `<minute>#ip:<address>` | failed authentications of one address in one minute, counted |
//! | `TENANTS` | `<tenant id>` | the tenant registry the admin's metrics walk |

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::TaskId;
use crate::ports::StoreError;

mod attempts;
mod audit;
mod codec;
pub(crate) use codec::SLOT_TAKEN;
mod counts;
mod delivery;
mod errors;
mod fields;
mod flows;
mod groups;
pub use groups::{decode_ids as decode_group_ids, encode_ids as encode_group_ids};
mod keys;
mod reconcile;
mod replays;
mod secrets;
mod tasks;
mod tenants;
mod unique;

use crate::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK};
use codec::s;
use errors::store_error;
use keys::task_pk;

type Item = HashMap<String, AttributeValue>;

const DAY_MS: i64 = 86_400_000;

/// Tasks and tenants in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention_ms: i64,
    reconcile_grace_ms: i64,
    /// Seals signing secrets (`None`: no KMS key configured; secrets refused).
    sealer: Option<crate::kms::KmsSealer>,
    audit_retention_ms: i64,
    /// Data keys of tasks' secret values (`fields`), shared by clones.
    field_keys: std::sync::Arc<fields::FieldKeys>,
}

impl DynamoStore {
    /// The deployed store: the table, retention and reconcile grace from `config`.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Self {
        let store = Self::new(Client::new(sdk), &config.table, config.retention_days)
            .with_reconcile_grace(config.reconcile_grace_s as i64 * 1000)
            .with_audit_retention_days(config.audit_retention_days);
        match crate::kms::KmsSealer::from_config(config, sdk) {
            Some(sealer) => store.with_sealer(sealer),
            None => store,
        }
    }

    pub fn new(client: Client, table: impl Into<String>, retention_days: u64) -> Self {
        Self {
            client,
            table: table.into(),
            retention_ms: retention_days as i64 * DAY_MS,
            reconcile_grace_ms: 120_000,
            sealer: None,
            audit_retention_ms: 90 * DAY_MS,
            field_keys: Default::default(),
        }
    }

    /// Seals and opens signing secrets with this KMS key.
    pub fn with_sealer(mut self, sealer: crate::kms::KmsSealer) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// How long audit entries are kept before TTL deletes them.
    pub fn with_audit_retention_days(mut self, days: u64) -> Self {
        self.audit_retention_ms = days as i64 * DAY_MS;
        self
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
            .map_err(store_error)?;
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

    fn put(&self, item: Item) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
        self.client.put_item().table_name(&self.table).set_item(Some(item))
    }
}
