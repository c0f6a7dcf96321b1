//! History past its retention: task items DynamoDB's TTL deletes (locally,
//! the TTL sweeper) are archived by the stream consumer to S3 as gzip JSON
//! lines by tenant and day, and `courier archive list/get` reads them back.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use crate::helpers::{Target, TestStack, bin_dir, eventually, listing_groups, own_index_entry, sdk, stack_options};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn expired_task_history_is_archived_by_tenant_and_day_and_read_back() {
    let target = Target::start(&[500]).await;
    let mut opts = stack_options("archive");
    opts.ttl_sweep = Some(Duration::from_secs(1));
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    // One task retried once (its first attempt is an item of its own), one delivered at once.
    let retry = serde_json::json!({"intervals": ["1s"]});
    let retried = api
        .create_task(serde_json::json!({"request": {"method": "POST", "url": target.url("/r")}, "retry": retry}))
        .await;
    let plain = api.create_task(serde_json::json!({"request": {"method": "POST", "url": target.url("/p")}})).await;
    let ids: Vec<String> = [retried, plain].iter().map(|t| t["id"].as_str().expect("id").to_owned()).collect();
    for id in &ids {
        api.wait_for_status(id, "succeeded", WAIT).await;
    }
    // Their retention is over: every item of both tasks expires now.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = stack.outputs().names.table.clone();
    let mut expired = 0;
    for id in &ids {
        let items = ddb
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("TASK#{id}")))
            .send()
            .await
            .expect("query");
        for item in items.items() {
            let key = [("pk", item["pk"].clone()), ("sk", item["sk"].clone())].map(|(k, v)| (k.to_owned(), v));
            ddb.update_item()
                .table_name(&table)
                .set_key(Some(key.into_iter().collect()))
                .update_expression("SET #ttl = :past")
                .expression_attribute_names("#ttl", courier::resources::TABLE_TTL_ATTRIBUTE)
                .expression_attribute_values(":past", AttributeValue::N("1000".into()))
                .send()
                .await
                .expect("expire");
            expired += 1;
        }
    }
    assert!(expired >= 3, "two states and at least the retried task's first attempt: {expired}");

    // The sweeper deletes them; the consumer archives them.
    let archive = courier::archive::S3Archive::new(
        courier::archive::S3Archive::client(&sdk().await),
        stack.outputs().archive_bucket.clone(),
    );
    let lines: Vec<Value> = eventually(WAIT, || async {
        let objects = archive.list(Some(&stack.tenant), None).await.ok()?;
        let mut lines = Vec::new();
        for (key, _) in &objects {
            lines.extend(archive.get(key).await.ok()?);
        }
        (lines.len() >= expired).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("{expired} items were not archived"));
    assert_eq!(lines.len(), expired, "each expired item once");
    let bytes: i64 = archive.list(Some(&stack.tenant), None).await.expect("list").iter().map(|(_, b)| b).sum();
    println!("archive: {expired} items in {bytes} gzip bytes, {} bytes per item", bytes / expired as i64);
    for id in &ids {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["task_id"] == id.as_str()).collect();
        assert!(mine.iter().any(|l| l["sk"] == "STATE" && l["item"]["status"]["S"] == "succeeded"), "{id}: {mine:?}");
        assert!(mine.iter().all(|l| l["tenant"] == stack.tenant.as_str()), "attempts take their task's tenant");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["task_id"] == ids[0].as_str() && l["sk"].as_str().is_some_and(|s| s.starts_with("ATTEMPT#"))),
        "the retried task's attempt item is archived"
    );
    let (status, _) = api.get(&format!("/v1/tasks/{}", ids[1])).await;
    assert_eq!(status, 404, "gone from the table");

    // The CLI reads the archive back.
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin_dir().join("courier"));
        cmd.args(args)
            .env("COURIER_ARCHIVE_BUCKET", &stack.outputs().archive_bucket)
            .env("COURIER_CONFIG", "/nonexistent")
            .kill_on_drop(true);
        cmd
    };
    let out = cli(&["archive", "list", "--tenant", &stack.tenant, "--output", "json"]).output().await.expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = listed["objects"][0]["key"].as_str().expect("an object").to_owned();
    let day = courier::domain::format_millis(courier::domain::now_millis());
    assert!(key.starts_with(&format!("archive/{}/{}/", stack.tenant, &day[..10])), "{key}");
    let out = cli(&["archive", "get", &key]).output().await.expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("STATE"), "{text}");
}

#[tokio::test]
async fn tasks_outliving_their_listing_group_keep_their_place_in_the_listing() {
    let mut opts = stack_options("relist");
    opts.ttl_sweep = Some(Duration::from_secs(1));
    opts.pollers = 0; // nothing is sent: the tasks stay pending, alive
    let stack = TestStack::start(opts).await;
    let api = &stack.api;
    let tasks: Vec<Value> = (0..6)
        .map(|i| serde_json::json!({"request": {"method": "POST", "url": format!("https://hook.invalid/{i}")}}))
        .collect();
    let (status, resp) = api.post("/v1/tasks/batch", &serde_json::json!({"tasks": tasks}).to_string()).await;
    assert_eq!((status, resp["created"].as_u64()), (200, Some(6)), "{resp}");
    let listed = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (status, before) = api.get("/v1/tasks?limit=100").await;
    assert_eq!(status, 200, "{before}");
    let order = listed(&before);
    assert_eq!(order.len(), 6, "{before}");

    // Their group expires (a week after their own first expiry, normally)
    // while they are still alive: each gets its own index entry, in place.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = stack.outputs().names.table.clone();
    let groups = listing_groups(&stack).await;
    let [group] = groups.as_slice() else { panic!("one group: {groups:?}") };
    ddb.update_item()
        .table_name(&table)
        .key("pk", group["pk"].clone())
        .key("sk", group["sk"].clone())
        .update_expression("SET #ttl = :past")
        .expression_attribute_names("#ttl", courier::resources::TABLE_TTL_ATTRIBUTE)
        .expression_attribute_values(":past", AttributeValue::N("1000".into()))
        .send()
        .await
        .expect("expire the group");
    let own_entries = eventually(WAIT, || async {
        let mut own = 0;
        for id in &order {
            own += usize::from(own_index_entry(&stack, id).await?);
        }
        (own == order.len()).then_some(own)
    })
    .await;
    assert_eq!(own_entries, Some(6), "every member still alive is relisted");
    let gone = ddb.get_item().table_name(&table).key("pk", group["pk"].clone()).key("sk", group["sk"].clone());
    assert!(gone.send().await.expect("get").item().is_none(), "the group itself is gone");
    let (_, after) = api.get("/v1/tasks?limit=100").await;
    assert_eq!(listed(&after), order, "the same tasks in the same places");
    let (_, page) = api.get("/v1/tasks?limit=4").await;
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = api.get(&format!("/v1/tasks?limit=4&cursor={cursor}")).await;
    assert_eq!([listed(&page), listed(&rest)].concat(), order, "pages split at a relisted member");
}
