//! The one source of truth for the names and settings of Courier's AWS
//! resources. `template.yaml` declares them for a deployed stack, the local
//! bootstrap creates them from these constants, and a test checks that the two
//! agree.

/// Names of one stack's resources, derived from the stack name the same way
/// `template.yaml` derives them with `!Sub "${AWS::StackName}-…"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackNames {
    pub table: String,
    pub queue: String,
    pub dlq: String,
    pub schedule_group: String,
}

impl StackNames {
    pub fn for_stack(stack: &str) -> Self {
        Self {
            table: format!("{stack}{TABLE_SUFFIX}"),
            queue: format!("{stack}{QUEUE_SUFFIX}"),
            dlq: format!("{stack}{DLQ_SUFFIX}"),
            schedule_group: format!("{stack}{SCHEDULE_GROUP_SUFFIX}"),
        }
    }
}

pub const TABLE_SUFFIX: &str = "-tasks";
pub const QUEUE_SUFFIX: &str = "-delivery";
pub const DLQ_SUFFIX: &str = "-dlq";
pub const SCHEDULE_GROUP_SUFFIX: &str = "-schedules";
/// The signing key's alias is `alias/<stack>-signing` (the KMS key sealing
/// tenants' signing secrets).
pub const SIGNING_KEY_ALIAS_SUFFIX: &str = "-signing";
/// The EventBridge bus of lifecycle events is `<stack>-events`; the example
/// rule `<stack>-events-to-queue` routes all of them to the queue
/// `<stack>-events-example`.
pub const EVENT_BUS_SUFFIX: &str = "-events";
/// The archive bucket is `<stack>-archive-<account id>` (bucket names are global).
pub const ARCHIVE_BUCKET_INFIX: &str = "-archive-";
pub const EVENT_RULE_SUFFIX: &str = "-events-to-queue";
pub const EVENT_QUEUE_SUFFIX: &str = "-events-example";
/// The example rule's pattern: every Courier event.
pub const EVENT_RULE_PATTERN: &str = r#"{"source":["courier"]}"#;

/// The table's partition and sort keys (both strings): a task's items share
/// `pk = TASK#<id>`; `sk` is `STATE`, `SPEC` or `ATTEMPT#<n>`.
pub const TABLE_HASH_KEY: &str = "pk";
pub const TABLE_RANGE_KEY: &str = "sk";
/// The index listing a tenant's tasks newest first: `gsi1pk = TENANT#<id>#<n>`,
/// `gsi1sk` = creation time, then the rest of the task id; the tasks of one
/// batch create share one entry, their listing group's (`LIST#<group>`).
/// Keys only, so status changes never write to it.
pub const TASKS_BY_TENANT_INDEX: &str = "by-tenant";
pub const INDEX_HASH_KEY: &str = "gsi1pk";
pub const INDEX_RANGE_KEY: &str = "gsi1sk";
/// The index the reconciler reads: one-off tasks by when to check on them
/// (`recon_pk = RECON#<shard>`, `recon_at` = due time + grace, epoch ms).
/// Keys only, set at creation and moved only on retries, so a first-try
/// delivery never writes to it.
pub const RECONCILE_INDEX: &str = "by-recon";
pub const RECONCILE_HASH_KEY: &str = "recon_pk";
pub const RECONCILE_RANGE_KEY: &str = "recon_at";
/// Shards of the reconcile index's partition key (spreads writes).
pub const RECONCILE_SHARDS: u32 = 8;
/// A tenant's entries in the `by-tenant` index are spread over this many
/// partition keys (`TENANT#<id>#<n>`, by task id): one index key takes at
/// most 1,000 writes a second, so one key per tenant would cap its creates.
pub const LIST_SHARDS: u32 = 8;
/// The partition key prefix of a listing group (`LIST#<group>`, sort key
/// `LIST`): the one index entry the tasks of one batch create share, with
/// their ids.
pub const LIST_GROUP_PREFIX: &str = "LIST#";
/// Epoch seconds after which DynamoDB deletes an item.
pub const TABLE_TTL_ATTRIBUTE: &str = "expires_at";

/// Delivery queue visibility timeout: at least the sender's function timeout
/// (an in-flight batch must not reappear while it is being sent).
pub const QUEUE_VISIBILITY_TIMEOUT_S: i32 = 120;
/// Retention of both queues: the SQS maximum, 14 days.
pub const QUEUE_RETENTION_S: i32 = 1_209_600;
/// Receives after which SQS moves a message to the DLQ: a safety net for
/// poison messages, above the largest attempt count a task may ask for (20).
pub const MAX_RECEIVE_COUNT: i32 = 50;
/// The sender function's timeout, below the visibility timeout.
pub const SENDER_TIMEOUT_S: i32 = 60;

// A batch still being sent must not reappear on the queue: checked when the
// crate compiles (a build-time guard, not a test); `tests/it/template.rs`
// checks the deployed template's values against these constants.
const _: () = assert!(QUEUE_VISIBILITY_TIMEOUT_S >= SENDER_TIMEOUT_S, "the visibility timeout must outlast the sender");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_stack_name() {
        let n = StackNames::for_stack("courier");
        assert_eq!(n.table, "courier-tasks");
        assert_eq!(n.queue, "courier-delivery");
        assert_eq!(n.dlq, "courier-dlq");
        assert_eq!(n.schedule_group, "courier-schedules");
    }
}
