//! Creates one stack's resources on the emulator (or any endpoint), with the
//! names and settings of [`courier::resources`]. Idempotent.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use courier::resources::{
    INDEX_HASH_KEY, INDEX_RANGE_KEY, MAX_RECEIVE_COUNT, QUEUE_RETENTION_S, QUEUE_VISIBILITY_TIMEOUT_S,
    RECONCILE_HASH_KEY, RECONCILE_INDEX, RECONCILE_RANGE_KEY, StackNames, TABLE_HASH_KEY, TABLE_RANGE_KEY,
    TABLE_TTL_ATTRIBUTE, TASKS_BY_TENANT_INDEX,
};

/// The role ARN the local stack hands to Scheduler (the emulator does not check it).
pub const LOCAL_SCHEDULER_ROLE: &str = "arn:aws:iam::123456789012:role/courier-local-scheduler";

/// What a stack's resources are called once they exist.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub stack: String,
    pub names: StackNames,
    pub queue_url: String,
    pub queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    /// The KMS key sealing signing secrets (its ARN).
    pub signing_key_arn: String,
    /// The lifecycle events' bus (its name), and the queue its example rule fills.
    pub event_bus: String,
    pub event_queue_url: String,
    /// The bucket expired task history is archived to.
    pub archive_bucket: String,
}

impl Outputs {
    /// The environment Courier's functions read ([`courier::Config`]).
    pub fn function_env(&self) -> Vec<(String, String)> {
        vec![
            ("COURIER_TABLE".into(), self.names.table.clone()),
            ("COURIER_QUEUE_URL".into(), self.queue_url.clone()),
            ("COURIER_DLQ_URL".into(), self.dlq_url.clone()),
            ("COURIER_QUEUE_ARN".into(), self.queue_arn.clone()),
            ("COURIER_SCHEDULE_GROUP".into(), self.names.schedule_group.clone()),
            ("COURIER_SCHEDULER_ROLE_ARN".into(), LOCAL_SCHEDULER_ROLE.into()),
            ("COURIER_SIGNING_KEY_ID".into(), self.signing_key_arn.clone()),
            ("COURIER_EVENT_BUS".into(), self.event_bus.clone()),
            ("COURIER_ARCHIVE_BUCKET".into(), self.archive_bucket.clone()),
        ]
    }
}

/// Creates (or finds) the table, the delivery queue with its DLQ and redrive
/// policy, and the schedule group of `stack`.
pub async fn bootstrap(sdk: &SdkConfig, stack: &str) -> anyhow::Result<Outputs> {
    bootstrap_with_redrive(sdk, stack, MAX_RECEIVE_COUNT).await
}

/// [`bootstrap`] with the queue's redrive after `max_receive_count` receives
/// instead of the deployed count, so a test can show that something (a task
/// held back by flow control) does not count towards it.
pub async fn bootstrap_with_redrive(sdk: &SdkConfig, stack: &str, max_receive_count: i32) -> anyhow::Result<Outputs> {
    let names = StackNames::for_stack(stack);
    create_table(&aws_sdk_dynamodb::Client::new(sdk), &names.table).await?;

    let sqs = aws_sdk_sqs::Client::new(sdk);
    let dlq_url =
        create_queue(&sqs, &names.dlq, &[(QueueAttributeName::MessageRetentionPeriod, QUEUE_RETENTION_S.to_string())])
            .await?;
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}).to_string();
    let queue_url = create_queue(
        &sqs,
        &names.queue,
        &[
            (QueueAttributeName::VisibilityTimeout, QUEUE_VISIBILITY_TIMEOUT_S.to_string()),
            (QueueAttributeName::MessageRetentionPeriod, QUEUE_RETENTION_S.to_string()),
            (QueueAttributeName::RedrivePolicy, redrive),
        ],
    )
    .await?;
    let queue_arn = queue_arn(&sqs, &queue_url).await?;

    let scheduler = aws_sdk_scheduler::Client::new(sdk);
    match scheduler.create_schedule_group().name(&names.schedule_group).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|se| se.is_conflict_exception()) => {}
        Err(e) => return Err(e.into()),
    }
    let signing_key_arn = signing_key(&aws_sdk_kms::Client::new(sdk), stack).await?;
    let (event_bus, event_queue_url) = event_bus(sdk, &sqs, stack).await?;
    let archive_bucket = archive_bucket(sdk, stack).await?;
    Ok(Outputs {
        stack: stack.to_owned(),
        names,
        queue_url,
        queue_arn,
        dlq_url,
        dlq_arn,
        signing_key_arn,
        event_bus,
        event_queue_url,
        archive_bucket,
    })
}

/// The archive bucket, as `template.yaml` names it (`<stack>-archive-<account>`).
async fn archive_bucket(sdk: &SdkConfig, stack: &str) -> anyhow::Result<String> {
    let bucket = format!("{stack}{}{}", courier::resources::ARCHIVE_BUCKET_INFIX, crate::iam::LOCAL_ACCOUNT);
    let s3 = courier::archive::S3Archive::client(sdk);
    match s3.create_bucket().bucket(&bucket).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_bucket_already_owned_by_you() || se.is_bucket_already_exists()) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(bucket)
}

/// The lifecycle events' bus and, as `template.yaml` declares them, the
/// example rule sending every Courier event to a queue of its own.
async fn event_bus(sdk: &SdkConfig, sqs: &aws_sdk_sqs::Client, stack: &str) -> anyhow::Result<(String, String)> {
    use courier::resources::{EVENT_BUS_SUFFIX, EVENT_QUEUE_SUFFIX, EVENT_RULE_PATTERN, EVENT_RULE_SUFFIX};
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = format!("{stack}{EVENT_BUS_SUFFIX}");
    match events.create_event_bus().name(&bus).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_already_exists_exception()) => {}
        Err(e) => return Err(e.into()),
    }
    let queue_url = create_queue(sqs, &format!("{stack}{EVENT_QUEUE_SUFFIX}"), &[]).await?;
    let queue_arn = queue_arn(sqs, &queue_url).await?;
    let rule = format!("{stack}{EVENT_RULE_SUFFIX}");
    events.put_rule().name(&rule).event_bus_name(&bus).event_pattern(EVENT_RULE_PATTERN).send().await?;
    let target = aws_sdk_eventbridge::types::Target::builder().id("example-queue").arn(queue_arn).build()?;
    events.put_targets().rule(&rule).event_bus_name(&bus).targets(target).send().await?;
    Ok((bus, queue_url))
}

/// The stack's signing key, found by its alias (`alias/<stack>-signing`) or
/// created with it, as `template.yaml` declares `SigningKey`.
async fn signing_key(kms: &aws_sdk_kms::Client, stack: &str) -> anyhow::Result<String> {
    let alias = format!("alias/{stack}{}", courier::resources::SIGNING_KEY_ALIAS_SUFFIX);
    match kms.describe_key().key_id(&alias).send().await {
        Ok(out) => {
            return out
                .key_metadata
                .and_then(|m| m.arn)
                .ok_or_else(|| anyhow::anyhow!("DescribeKey of {alias}: no ARN"));
        }
        Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => {}
        Err(e) => return Err(e.into()),
    }
    let created =
        kms.create_key().description(format!("{stack}: seals tenants' webhook signing secrets")).send().await?;
    let meta = created.key_metadata.ok_or_else(|| anyhow::anyhow!("CreateKey returned no metadata"))?;
    kms.create_alias().alias_name(&alias).target_key_id(meta.key_id()).send().await?;
    meta.arn.ok_or_else(|| anyhow::anyhow!("CreateKey returned no ARN"))
}

async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    let typed = |name: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(t).build()
    };
    let attr = |name: &str| typed(name, ScalarAttributeType::S);
    let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
    let keys_only = |index: &str, hash: &str, range: &str| -> anyhow::Result<GlobalSecondaryIndex> {
        Ok(GlobalSecondaryIndex::builder()
            .index_name(index)
            .key_schema(key(hash, KeyType::Hash)?)
            .key_schema(key(range, KeyType::Range)?)
            .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
            .build()?)
    };
    let res = ddb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(TABLE_HASH_KEY)?)
        .attribute_definitions(attr(TABLE_RANGE_KEY)?)
        .attribute_definitions(attr(INDEX_HASH_KEY)?)
        .attribute_definitions(attr(INDEX_RANGE_KEY)?)
        .key_schema(key(TABLE_HASH_KEY, KeyType::Hash)?)
        .key_schema(key(TABLE_RANGE_KEY, KeyType::Range)?)
        .attribute_definitions(attr(RECONCILE_HASH_KEY)?)
        .attribute_definitions(typed(RECONCILE_RANGE_KEY, ScalarAttributeType::N)?)
        .global_secondary_indexes(keys_only(TASKS_BY_TENANT_INDEX, INDEX_HASH_KEY, INDEX_RANGE_KEY)?)
        .global_secondary_indexes(keys_only(RECONCILE_INDEX, RECONCILE_HASH_KEY, RECONCILE_RANGE_KEY)?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()?,
        )
        .send()
        .await;
    match res {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_in_use_exception()) => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    ddb.update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().attribute_name(TABLE_TTL_ATTRIBUTE).enabled(true).build()?,
        )
        .send()
        .await?;
    Ok(())
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: &[(QueueAttributeName, String)],
) -> anyhow::Result<String> {
    let mut req = sqs.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), v);
    }
    let out = req.send().await?;
    out.queue_url.ok_or_else(|| anyhow::anyhow!("CreateQueue returned no URL for {name}"))
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    let out = sqs.get_queue_attributes().queue_url(url).attribute_names(QueueAttributeName::QueueArn).send().await?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| anyhow::anyhow!("no QueueArn for {url}"))
}
