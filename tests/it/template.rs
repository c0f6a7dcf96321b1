//! `template.yaml` declares what the local bootstrap creates: names and
//! settings come from `courier::resources` on both sides.

use courier::resources::*;
use serde_yaml::Value;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("template.yaml")).expect("valid YAML")
}

fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    let r = &t["Resources"][name];
    assert!(!r.is_null(), "template declares no {name}");
    &r["Properties"]
}

/// The string inside `!Sub "…"`.
fn sub(v: &Value) -> String {
    match v {
        Value::Tagged(t) if t.tag == "!Sub" => t.value.as_str().expect("!Sub string").to_owned(),
        other => panic!("expected !Sub, got {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("expected a number, got {v:?}"))
}

#[test]
fn template_names_resources_as_the_bootstrap_does() {
    let t = template();
    let names = StackNames::for_stack("${AWS::StackName}");
    assert_eq!(sub(&resource(&t, "TasksTable")["TableName"]), names.table);
    assert_eq!(sub(&resource(&t, "DeliveryQueue")["QueueName"]), names.queue);
    assert_eq!(sub(&resource(&t, "DeadLetterQueue")["QueueName"]), names.dlq);
    assert_eq!(sub(&resource(&t, "ScheduleGroup")["Name"]), names.schedule_group);
}

#[test]
fn template_table_has_the_bootstrap_keys_and_ttl() {
    let t = template();
    let table = resource(&t, "TasksTable");
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    let keys: Vec<(String, String)> = table["KeySchema"]
        .as_sequence()
        .expect("KeySchema")
        .iter()
        .map(|k| {
            (k["AttributeName"].as_str().unwrap_or_default().into(), k["KeyType"].as_str().unwrap_or_default().into())
        })
        .collect();
    assert_eq!(keys, vec![(TABLE_HASH_KEY.into(), "HASH".into()), (TABLE_RANGE_KEY.into(), "RANGE".into())]);
    let gsi = &table["GlobalSecondaryIndexes"][0];
    assert_eq!(gsi["IndexName"], TASKS_BY_TENANT_INDEX);
    assert_eq!(gsi["KeySchema"][0]["AttributeName"], INDEX_HASH_KEY);
    assert_eq!(gsi["KeySchema"][1]["AttributeName"], INDEX_RANGE_KEY);
    assert_eq!(gsi["Projection"]["ProjectionType"], "KEYS_ONLY");
    let recon = &table["GlobalSecondaryIndexes"][1];
    assert_eq!(recon["IndexName"], RECONCILE_INDEX);
    assert_eq!(recon["KeySchema"][0]["AttributeName"], RECONCILE_HASH_KEY);
    assert_eq!(recon["KeySchema"][1]["AttributeName"], RECONCILE_RANGE_KEY);
    assert_eq!(recon["Projection"]["ProjectionType"], "KEYS_ONLY");
    assert!(table["GlobalSecondaryIndexes"][2].is_null(), "two indexes");
    let attr_type = |name: &str| {
        table["AttributeDefinitions"]
            .as_sequence()
            .and_then(|a| a.iter().find(|d| d["AttributeName"] == name))
            .map(|d| d["AttributeType"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(attr_type(RECONCILE_RANGE_KEY).as_deref(), Some("N"));
    assert_eq!(attr_type(INDEX_RANGE_KEY).as_deref(), Some("S"));
    assert_eq!(table["TimeToLiveSpecification"]["AttributeName"], TABLE_TTL_ATTRIBUTE);
    assert_eq!(table["TimeToLiveSpecification"]["Enabled"], true);
}

#[test]
fn template_queues_have_the_bootstrap_settings() {
    let t = template();
    let q = resource(&t, "DeliveryQueue");
    assert_eq!(int(&q["VisibilityTimeout"]), i64::from(QUEUE_VISIBILITY_TIMEOUT_S));
    assert_eq!(int(&q["MessageRetentionPeriod"]), i64::from(QUEUE_RETENTION_S));
    assert_eq!(int(&q["RedrivePolicy"]["maxReceiveCount"]), i64::from(MAX_RECEIVE_COUNT));
    let dlq = resource(&t, "DeadLetterQueue");
    assert_eq!(int(&dlq["MessageRetentionPeriod"]), i64::from(QUEUE_RETENTION_S));
}

#[test]
fn the_deployed_queue_hides_a_batch_for_longer_than_the_sender_may_run() {
    let t = template();
    let visibility = int(&resource(&t, "DeliveryQueue")["VisibilityTimeout"]);
    let sender = int(&resource(&t, "SenderFunction")["Timeout"]);
    assert!(visibility >= sender, "a batch still being sent ({sender} s) reappears after {visibility} s");
}

#[test]
fn template_functions_run_on_al2023_arm64_with_partial_batch_responses() {
    // cfn-lint accepts a misspelled FunctionResponseTypes value or runtime: check them here.
    let t = template();
    let g = &t["Globals"]["Function"];
    assert_eq!(g["Runtime"], "provided.al2023");
    assert_eq!(g["Architectures"][0], "arm64");
    assert_eq!(g["Handler"], "bootstrap");
    let sender = resource(&t, "SenderFunction");
    assert_eq!(int(&sender["Timeout"]), i64::from(SENDER_TIMEOUT_S));
    let event = &sender["Events"]["Delivery"];
    assert_eq!(event["Type"], "SQS");
    assert_eq!(event["Properties"]["FunctionResponseTypes"][0], "ReportBatchItemFailures");
    let reconciler = resource(&t, "ReconcilerFunction");
    assert_eq!(reconciler["Events"]["EveryMinute"]["Properties"]["Schedule"], "rate(1 minute)");
    for (logical, binary) in
        [("ApiFunction", "api"), ("SenderFunction", "sender"), ("ReconcilerFunction", "reconciler")]
    {
        assert_eq!(t["Resources"][logical]["Metadata"]["BuildProperties"]["Binary"], binary);
        assert_eq!(t["Resources"][logical]["Metadata"]["BuildMethod"], "rust-cargolambda");
    }
    for output in ["ApiUrl", "DeliveryQueueUrl", "DeadLetterQueueUrl", "TasksTableName"] {
        assert!(!t["Outputs"][output].is_null(), "missing output {output}");
    }
}

#[test]
fn template_sets_every_variable_the_config_requires() {
    let t = template();
    let mut vars = t["Globals"]["Function"]["Environment"]["Variables"].as_mapping().expect("variables").clone();
    // The API function adds its own (the admin key).
    let api = resource(&t, "ApiFunction")["Environment"]["Variables"].as_mapping().expect("API variables");
    vars.extend(api.clone());
    // Parameters resolve to their defaults; resource references to a placeholder.
    let resolve = |v: &Value| match v {
        Value::Tagged(tag) if tag.tag == "!Ref" => {
            let name = tag.value.as_str().unwrap_or_default();
            match &t["Parameters"][name]["Default"] {
                Value::Null => format!("resolved:{name}"),
                Value::Number(n) => n.to_string(),
                other => other.as_str().unwrap_or_default().to_owned(),
            }
        }
        Value::Tagged(tag) => format!("resolved:{:?}", tag.value),
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap_or_default().to_owned(),
    };
    let lookup = |k: &str| vars.get(k).map(resolve);
    let config = courier::Config::from_lookup(lookup).expect("the template sets every required variable, validly");
    assert_eq!(config.retention_days, 90);
    assert_eq!(config.admin_key, None, "the admin API is off unless a key is given");
}

/// `(namespace, metric, [(dimension, value)])` of one alarm metric; values of
/// `!Ref X` / `!GetAtt X.Attr` are the logical id `X`.
/// Namespace, metric name and (dimension, value) pairs.
type MetricRef = (String, String, Vec<(String, String)>);

fn alarm_metrics(alarm: &Value) -> Vec<MetricRef> {
    let dims = |d: &Value| -> Vec<(String, String)> {
        d.as_sequence()
            .into_iter()
            .flatten()
            .map(|d| {
                let value = match &d["Value"] {
                    Value::Tagged(t) => {
                        t.value.as_str().unwrap_or_default().split('.').next().unwrap_or_default().to_owned()
                    }
                    v => v.as_str().unwrap_or_default().to_owned(),
                };
                (d["Name"].as_str().unwrap_or_default().to_owned(), value)
            })
            .collect()
    };
    let p = &alarm["Properties"];
    if let Some(ns) = p["Namespace"].as_str() {
        return vec![(ns.to_owned(), p["MetricName"].as_str().unwrap_or_default().to_owned(), dims(&p["Dimensions"]))];
    }
    p["Metrics"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("MetricStat").map(|s| &s["Metric"]))
        .map(|m| {
            (
                m["Namespace"].as_str().unwrap_or_default().to_owned(),
                m["MetricName"].as_str().unwrap_or_default().to_owned(),
                dims(&m["Dimensions"]),
            )
        })
        .collect()
}

/// What attempts add, and so what the code also emits by outcome.
const BY_OUTCOME: &[&str] = &["Attempts", "Delivered", "Failed", "Retried", "AttemptDurationMs", "ScheduleLagMs"];

fn check_courier_metric(name: &str, dims: &[(String, String)], place: &str) {
    use courier::metrics::{DIMENSIONS, METRICS, NAMESPACE, OUTCOME_DIMENSIONS, OUTCOMES, SENDER_SERVICE};
    assert!(METRICS.iter().any(|(m, _)| *m == name), "{place}: {NAMESPACE}/{name} is not emitted by the code");
    let names: Vec<&str> = dims.iter().map(|(n, _)| n.as_str()).collect();
    if names == OUTCOME_DIMENSIONS {
        assert!(BY_OUTCOME.contains(&name), "{place}: {name} is not emitted by outcome");
        assert!(OUTCOMES.contains(&dims[1].1.as_str()), "{place}: {name} for an outcome class that does not exist");
    } else {
        assert_eq!(names, DIMENSIONS, "{place}: {name} has a dimension set the code does not emit");
    }
    assert_eq!(dims[0].1, SENDER_SERVICE, "{place}: {name} for a service that does not emit it");
}

#[test]
fn alarms_name_metrics_namespaces_and_dimensions_the_code_emits() {
    let t = template();
    let resources = t["Resources"].as_mapping().expect("resources");
    let type_of = |id: &str| resources.get(id).map(|r| r["Type"].as_str().unwrap_or_default().to_owned());
    let mut seen = Vec::new();
    for (id, r) in resources {
        if r["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        let id = id.as_str().unwrap_or_default();
        for (ns, metric, dims) in alarm_metrics(r) {
            match ns.as_str() {
                "Courier" => check_courier_metric(&metric, &dims, id),
                "AWS/SQS" => {
                    assert_eq!(dims.len(), 1, "{id}");
                    assert_eq!(dims[0].0, "QueueName", "{id}");
                    assert_eq!(
                        type_of(&dims[0].1).as_deref(),
                        Some("AWS::SQS::Queue"),
                        "{id} names a queue of this stack"
                    );
                }
                "AWS/Lambda" => {
                    assert_eq!(dims[0].0, "FunctionName", "{id}");
                    assert_eq!(type_of(&dims[0].1).as_deref(), Some("AWS::Serverless::Function"), "{id}");
                    assert!(["Errors", "Throttles"].contains(&metric.as_str()), "{id}: {metric}");
                }
                other => panic!("{id}: unexpected namespace {other}"),
            }
            seen.push((ns, metric, dims.first().map(|d| d.1.clone()).unwrap_or_default()));
        }
    }
    let has = |ns: &str, metric: &str, dim: &str| seen.iter().any(|(n, m, d)| n == ns && m == metric && d == dim);
    assert!(has("AWS/SQS", "ApproximateNumberOfMessagesVisible", "DeadLetterQueue"), "DLQ depth alarm");
    assert!(has("AWS/SQS", "ApproximateAgeOfOldestMessage", "DeliveryQueue"), "oldest message alarm");
    for f in ["SenderFunction", "ApiFunction"] {
        assert!(has("AWS/Lambda", "Errors", f) && has("AWS/Lambda", "Throttles", f), "{f} errors and throttles");
    }
    assert!(has("Courier", "Failed", "sender") && has("Courier", "Delivered", "sender"), "failed-delivery rate");
}

#[test]
fn the_dashboard_shows_every_emitted_metric_and_the_queues() {
    let t = template();
    let body = match &resource(&t, "Dashboard")["DashboardBody"] {
        Value::Tagged(tag) if tag.tag == "!Sub" => tag.value.as_str().expect("body").to_owned(),
        other => panic!("DashboardBody must be a !Sub string, got {other:?}"),
    };
    // Resolve ${...} as CloudFormation would, to something JSON-safe.
    let mut resolved = String::new();
    let mut rest = body.as_str();
    while let Some(start) = rest.find("${") {
        resolved.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        resolved.push_str(&rest[start + 2..end].replace(".QueueName", ""));
        rest = &rest[end + 1..];
    }
    resolved.push_str(rest);
    let doc: serde_json::Value = serde_json::from_str(&resolved).expect("the dashboard body is JSON");
    let mut courier_metrics = std::collections::BTreeSet::new();
    let mut by_outcome = std::collections::BTreeSet::new();
    let mut latency_stats = std::collections::BTreeSet::new();
    let mut queues = Vec::new();
    for w in doc["widgets"].as_array().expect("widgets") {
        for m in w["properties"]["metrics"].as_array().expect("metrics") {
            let m: Vec<&str> = m.as_array().expect("row").iter().filter_map(|v| v.as_str()).collect();
            let dims: Vec<(String, String)> = m[2..].chunks(2).map(|c| (c[0].to_owned(), c[1].to_owned())).collect();
            match m[0] {
                "Courier" => {
                    check_courier_metric(m[1], &dims, "dashboard");
                    courier_metrics.insert(m[1].to_owned());
                    if m[1] == "Attempts" && dims.len() == 2 {
                        by_outcome.insert(dims[1].1.clone());
                    }
                    let stat = w["properties"]["metrics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|row| row.as_array()?.last()?.get("stat")?.as_str())
                        .map(str::to_owned);
                    if m[1] == "AttemptDurationMs" && dims.len() == 1 {
                        latency_stats.extend(stat);
                    }
                }
                "AWS/SQS" => {
                    assert_eq!(dims[0].0, "QueueName");
                    queues.push((m[1].to_owned(), dims[0].1.clone()));
                }
                other => panic!("dashboard: unexpected namespace {other}"),
            }
        }
    }
    let emitted: std::collections::BTreeSet<String> =
        courier::metrics::METRICS.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(courier_metrics, emitted, "every emitted metric is on the dashboard");
    let outcomes: std::collections::BTreeSet<String> =
        courier::metrics::OUTCOMES.iter().map(|o| (*o).to_owned()).collect();
    assert_eq!(by_outcome, outcomes, "the error distribution shows every outcome class");
    for p in ["p50", "p90", "p95", "p99"] {
        assert!(latency_stats.contains(p), "attempt latency {p} on the dashboard: {latency_stats:?}");
    }
    assert!(queues.contains(&("ApproximateNumberOfMessagesVisible".into(), "DeadLetterQueue".into())));
    assert!(queues.contains(&("ApproximateNumberOfMessagesVisible".into(), "DeliveryQueue".into())));
    assert!(queues.contains(&("ApproximateNumberOfMessagesDelayed".into(), "DeliveryQueue".into())));
}

#[test]
fn the_counter_stream_mapping_bounds_its_retries_and_keeps_what_it_gives_up() {
    let t = template();
    let counter = resource(&t, "CounterFunction");
    let m = &counter["Events"]["TaskChanges"]["Properties"];
    assert_eq!(counter["Events"]["TaskChanges"]["Type"], "DynamoDB");
    let retries = int(&m["MaximumRetryAttempts"]);
    assert!((1..=100).contains(&retries), "bounded retries, not -1 (forever): {retries}");
    assert_eq!(m["BisectBatchOnFunctionError"], true);
    // The local mapping batches as the deployed one does.
    assert_eq!(int(&m["BatchSize"]) as usize, courier_local::streams::BATCH_SIZE);
    assert_eq!(int(&m["MaximumBatchingWindowInSeconds"]) as u64, courier_local::streams::BATCHING_WINDOW.as_secs());
    let age = int(&m["MaximumRecordAgeInSeconds"]);
    assert!((60..=86_400).contains(&age), "a record gives up within the stream's retention: {age}");
    let dest = &m["DestinationConfig"]["OnFailure"]["Destination"];
    assert!(format!("{dest:?}").contains("DeadLetterQueue"), "discarded batches are kept: {dest:?}");
    let grants_send = counter["Policies"][0]["Statement"]
        .as_sequence()
        .expect("statements")
        .iter()
        .any(|s| s["Action"] == "sqs:SendMessage" && format!("{:?}", s["Resource"]).contains("DeadLetterQueue"));
    assert!(grants_send, "the counter's role may write the discarded batch's record");
}
