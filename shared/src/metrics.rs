//! CloudWatch metrics as Embedded Metric Format (EMF) log lines: the sender
//! prints one JSON object per attempt (and per deferral) to stdout, and
//! CloudWatch Logs turns it into metrics. No PutMetricData call on the hot path.
//!
//! The names here are the single source for `template.yaml`'s alarms and
//! dashboard (a test reads both).

use serde_json::{Map, Value, json};

/// The metric namespace.
pub const NAMESPACE: &str = "Courier";
/// The one dimension set: the function that emits (low cardinality).
pub const DIMENSIONS: &[&str] = &["Service"];
/// The `Service` dimension's value for the sender.
pub const SENDER_SERVICE: &str = "sender";

/// Every metric Courier emits, with its unit.
pub const METRICS: &[(&str, &str)] = &[
    (DELIVERED, "Count"),
    (FAILED, "Count"),
    (RETRIED, "Count"),
    (DEFERRED, "Count"),
    (ATTEMPT_DURATION_MS, "Milliseconds"),
    (SCHEDULE_LAG_MS, "Milliseconds"),
    (THROTTLED, "Count"),
    (BREAKER_OPENED, "Count"),
    (BREAKER_CLOSED, "Count"),
];

pub const DELIVERED: &str = "Delivered";
pub const FAILED: &str = "Failed";
pub const RETRIED: &str = "Retried";
pub const DEFERRED: &str = "Deferred";
pub const ATTEMPT_DURATION_MS: &str = "AttemptDurationMs";
pub const SCHEDULE_LAG_MS: &str = "ScheduleLagMs";
/// A delivery flow control held back (a rate slot, a parallelism cap, a pause or an open breaker).
pub const THROTTLED: &str = "Throttled";
pub const BREAKER_OPENED: &str = "BreakerOpened";
pub const BREAKER_CLOSED: &str = "BreakerClosed";

/// One EMF document: `values` are metric name → value (names from [`METRICS`]);
/// `properties` are searchable log fields that are not dimensions (task id…).
pub fn emf_line(service: &str, timestamp_ms: i64, values: &[(&str, f64)], properties: Map<String, Value>) -> String {
    let metrics: Vec<Value> = values
        .iter()
        .map(|(name, _)| {
            let unit = METRICS.iter().find(|(n, _)| n == name).map_or("None", |(_, u)| *u);
            json!({"Name": name, "Unit": unit})
        })
        .collect();
    let mut doc = properties;
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [DIMENSIONS], "Metrics": metrics}],
        }),
    );
    doc.insert("Service".into(), Value::String(service.to_owned()));
    for (name, v) in values {
        doc.insert((*name).to_owned(), json!(v));
    }
    Value::Object(doc).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_declares_its_metrics_and_carries_their_values() {
        let mut props = Map::new();
        props.insert("task_id".into(), json!("tsk_1"));
        let line = emf_line(SENDER_SERVICE, 1_000, &[(DELIVERED, 1.0), (ATTEMPT_DURATION_MS, 12.0)], props);
        let v: Value = serde_json::from_str(&line).expect("JSON");
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], NAMESPACE);
        assert_eq!(cw["Dimensions"], json!([["Service"]]));
        assert_eq!(
            cw["Metrics"],
            json!([{"Name": "Delivered", "Unit": "Count"}, {"Name": "AttemptDurationMs", "Unit": "Milliseconds"}])
        );
        assert_eq!(v["Service"], "sender");
        assert_eq!(v["Delivered"], 1.0);
        assert_eq!(v["task_id"], "tsk_1");
        assert_eq!(v["_aws"]["Timestamp"], 1_000);
    }
}
