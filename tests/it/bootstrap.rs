//! The bootstrap creates, on the emulator, what the template declares.

use aws_sdk_sqs::types::QueueAttributeName;
use courier::resources::*;

use crate::helpers::{sdk, unique_stack};

#[tokio::test]
async fn bootstrap_creates_the_declared_resources_and_is_idempotent() {
    let sdk = sdk().await;
    let stack = unique_stack("boot");
    let first = courier_local::bootstrap::bootstrap(&sdk, &stack).await.expect("bootstrap");
    let again = courier_local::bootstrap::bootstrap(&sdk, &stack).await.expect("bootstrap twice");
    assert_eq!(first.queue_url, again.queue_url);

    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = ddb.describe_table().table_name(&first.names.table).send().await.expect("table").table.expect("table");
    let keys: Vec<(String, String)> =
        table.key_schema().iter().map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned())).collect();
    assert_eq!(keys, vec![(TABLE_HASH_KEY.into(), "HASH".into()), (TABLE_RANGE_KEY.into(), "RANGE".into())]);
    for (name, keys) in [
        (TASKS_BY_TENANT_INDEX, [INDEX_HASH_KEY, INDEX_RANGE_KEY]),
        (RECONCILE_INDEX, [RECONCILE_HASH_KEY, RECONCILE_RANGE_KEY]),
    ] {
        let gsi = table.global_secondary_indexes().iter().find(|g| g.index_name() == Some(name)).expect("index");
        let gsi_keys: Vec<&str> = gsi.key_schema().iter().map(|k| k.attribute_name()).collect();
        assert_eq!(gsi_keys, keys);
        assert_eq!(gsi.projection().and_then(|p| p.projection_type()).map(|p| p.as_str()), Some("KEYS_ONLY"));
    }
    assert_eq!(table.global_secondary_indexes().len(), 2);
    let ttl = ddb.describe_time_to_live().table_name(&first.names.table).send().await.expect("ttl");
    assert_eq!(ttl.time_to_live_description().and_then(|d| d.attribute_name()), Some(TABLE_TTL_ATTRIBUTE));

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&first.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .expect("attributes");
    assert_eq!(attrs[&QueueAttributeName::VisibilityTimeout], QUEUE_VISIBILITY_TIMEOUT_S.to_string());
    assert_eq!(attrs[&QueueAttributeName::MessageRetentionPeriod], QUEUE_RETENTION_S.to_string());
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).expect("redrive JSON");
    assert_eq!(redrive["deadLetterTargetArn"], first.dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].as_i64().or_else(|| redrive["maxReceiveCount"].as_str()?.parse().ok()),
        Some(i64::from(MAX_RECEIVE_COUNT))
    );

    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let group = scheduler.get_schedule_group().name(&first.names.schedule_group).send().await.expect("group");
    assert_eq!(group.name(), Some(first.names.schedule_group.as_str()));
}
