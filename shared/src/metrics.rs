//! CloudWatch metrics as Embedded Metric Format (EMF) log lines: the sender
//! prints one JSON object per batch (counts summed, each attempt's duration
//! and lag kept as a value of an array, so percentiles still hold) to stdout,
//! and CloudWatch Logs turns it into metrics. No PutMetricData call on the hot path.
//!
//! Two dimension sets: `[Service]` for every metric, and `[Service,
//! Outcome]` for what an attempt adds (its count, duration, lag and the
//! delivered/failed/retried count it led to), so the dashboard shows the
//! error distribution. `Outcome` takes only the outcome classes
//! ([`OUTCOMES`]): bounded, whatever the traffic. A batch whose attempts all
//! ended alike is still one line; each further outcome adds one.
//!
//! The names here are the single source for `template.yaml`'s alarms and
//! dashboard (a test reads both).

use serde_json::{Map, Value, json};

/// The metric namespace.
pub const NAMESPACE: &str = "Courier";
/// The dimension set of every metric: the function that emits (low cardinality).
pub const DIMENSIONS: &[&str] = &["Service"];
/// The second dimension set of what attempts add: by outcome class.
pub const OUTCOME_DIMENSIONS: &[&str] = &["Service", "Outcome"];
/// Every value the `Outcome` dimension takes: the outcome classes.
pub const OUTCOMES: &[&str] = &[
    "success",
    "client_error",
    "server_error",
    "rate_limited",
    "timeout",
    "connect",
    "dns",
    "tls",
    "blocked",
    "stopped_by_receiver",
    "interrupted",
];
/// The `Service` dimension's value for the sender.
pub const SENDER_SERVICE: &str = "sender";

/// Every metric Courier emits, with its unit.
pub const METRICS: &[(&str, &str)] = &[
    (ATTEMPTS, "Count"),
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

/// One per attempt made (with the `Outcome` dimension: by outcome class).
pub const ATTEMPTS: &str = "Attempts";
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
/// `outcome`: the attempt's outcome class, for the `[Service, Outcome]` set.
pub fn emf_line(
    service: &str,
    timestamp_ms: i64,
    outcome: Option<&str>,
    values: &[(&str, f64)],
    properties: Map<String, Value>,
) -> String {
    let values: Vec<(&str, Value)> = values.iter().map(|(n, v)| (*n, json!(v))).collect();
    emf_doc(service, timestamp_ms, outcome, &values, properties)
}

/// EMF takes at most this many values in one metric's array.
pub const MAX_VALUES: usize = 100;

/// What a batch's deliveries add up to: counts summed, measured values kept
/// one by one (in the order they came), by outcome class (`None`: what no
/// attempt made, e.g. a deferral).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchMetrics {
    groups: Vec<(Option<&'static str>, Group)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Group {
    counts: Vec<(&'static str, f64)>,
    values: Vec<(&'static str, Vec<f64>)>,
}

impl BatchMetrics {
    fn group(&mut self, outcome: Option<&'static str>) -> &mut Group {
        let at = match self.groups.iter().position(|(o, _)| *o == outcome) {
            Some(at) => at,
            None => {
                self.groups.push((outcome, Group::default()));
                self.groups.len() - 1
            }
        };
        &mut self.groups[at].1
    }

    /// Counts one of `name` (outside any outcome).
    pub fn count(&mut self, name: &'static str) {
        self.count_in(None, name);
    }

    /// Counts one of `name` for an attempt that ended in `outcome`.
    pub fn count_in(&mut self, outcome: Option<&'static str>, name: &'static str) {
        let g = self.group(outcome);
        match g.counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1.0,
            None => g.counts.push((name, 1.0)),
        }
    }

    pub fn value(&mut self, name: &'static str, v: f64) {
        self.value_in(None, name, v);
    }

    pub fn value_in(&mut self, outcome: Option<&'static str>, name: &'static str, v: f64) {
        let g = self.group(outcome);
        match g.values.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vs)) => vs.push(v),
            None => g.values.push((name, vec![v])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|(_, g)| g.counts.is_empty() && g.values.is_empty())
    }

    /// The EMF lines of the batch: one per outcome class met (and one for
    /// what no attempt made), plus more when a metric has more than
    /// [`MAX_VALUES`] values.
    pub fn lines(&self, service: &str, timestamp_ms: i64) -> Vec<String> {
        let mut lines = Vec::new();
        for (outcome, g) in &self.groups {
            let chunks = g.values.iter().map(|(_, vs)| vs.len().div_ceil(MAX_VALUES)).max().unwrap_or(0).max(1);
            for i in 0..chunks {
                let mut values: Vec<(&str, Value)> = Vec::new();
                if i == 0 {
                    values.extend(g.counts.iter().map(|(n, c)| (*n, json!(c))));
                }
                for (n, vs) in &g.values {
                    let part: Vec<f64> = vs.iter().skip(i * MAX_VALUES).take(MAX_VALUES).copied().collect();
                    match part.len() {
                        0 => {}
                        1 => values.push((n, json!(part[0]))),
                        _ => values.push((n, json!(part))),
                    }
                }
                lines.push(emf_doc(service, timestamp_ms, *outcome, &values, Map::new()));
            }
        }
        lines
    }
}

fn emf_doc(
    service: &str,
    timestamp_ms: i64,
    outcome: Option<&str>,
    values: &[(&str, Value)],
    properties: Map<String, Value>,
) -> String {
    let metrics: Vec<Value> = values
        .iter()
        .map(|(name, _)| {
            let unit = METRICS.iter().find(|(n, _)| n == name).map_or("None", |(_, u)| *u);
            json!({"Name": name, "Unit": unit})
        })
        .collect();
    let mut doc = properties;
    let dimensions = match outcome {
        Some(_) => json!([DIMENSIONS, OUTCOME_DIMENSIONS]),
        None => json!([DIMENSIONS]),
    };
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics}],
        }),
    );
    doc.insert("Service".into(), Value::String(service.to_owned()));
    if let Some(o) = outcome {
        doc.insert("Outcome".into(), Value::String(o.to_owned()));
    }
    for (name, v) in values {
        doc.insert((*name).to_owned(), v.clone());
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
        let line = emf_line(SENDER_SERVICE, 1_000, None, &[(DELIVERED, 1.0), (ATTEMPT_DURATION_MS, 12.0)], props);
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

    #[test]
    fn a_batch_sums_its_counts_and_keeps_every_duration() {
        let mut b = BatchMetrics::default();
        for (m, ms) in [(DELIVERED, 12.0), (DELIVERED, 30.0), (RETRIED, 7.0)] {
            b.count(m);
            b.value(ATTEMPT_DURATION_MS, ms);
        }
        b.value(SCHEDULE_LAG_MS, 4.0);
        assert_eq!(b.lines(SENDER_SERVICE, 1_000).len(), 1);
        let lines = b.lines(SENDER_SERVICE, 1_000);
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!((&v["Delivered"], &v["Retried"]), (&json!(2.0), &json!(1.0)));
        assert_eq!(v["AttemptDurationMs"], json!([12.0, 30.0, 7.0]));
        assert_eq!(v["ScheduleLagMs"], json!(4.0));
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .filter_map(|m| m["Name"].as_str())
            .collect();
        assert_eq!(names, [DELIVERED, RETRIED, ATTEMPT_DURATION_MS, SCHEDULE_LAG_MS]);
    }

    #[test]
    fn more_values_than_emf_takes_go_on_further_lines() {
        let mut b = BatchMetrics::default();
        for i in 0..250 {
            b.count(DELIVERED);
            b.value(ATTEMPT_DURATION_MS, f64::from(i));
        }
        let lines = b.lines(SENDER_SERVICE, 1_000);
        let docs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        let sizes: Vec<usize> = docs.iter().map(|d| d["AttemptDurationMs"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(docs[0]["Delivered"], json!(250.0));
        assert!(docs[1].get("Delivered").is_none(), "counted once");
    }

    #[test]
    fn attempts_are_also_counted_by_outcome_one_line_per_outcome_met() {
        let mut b = BatchMetrics::default();
        for (outcome, m, ms) in
            [("success", DELIVERED, 12.0), ("server_error", RETRIED, 30.0), ("success", DELIVERED, 7.0)]
        {
            b.count_in(Some(outcome), ATTEMPTS);
            b.count_in(Some(outcome), m);
            b.value_in(Some(outcome), ATTEMPT_DURATION_MS, ms);
        }
        b.count(DEFERRED);
        let docs: Vec<Value> =
            b.lines(SENDER_SERVICE, 1_000).iter().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        assert_eq!(docs.len(), 3, "two outcomes and the deferral");
        let (ok, err, other) = (&docs[0], &docs[1], &docs[2]);
        assert_eq!(ok["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Service"], ["Service", "Outcome"]]));
        assert_eq!((&ok["Outcome"], &ok["Attempts"], &ok["Delivered"]), (&json!("success"), &json!(2.0), &json!(2.0)));
        assert_eq!(ok["AttemptDurationMs"], json!([12.0, 7.0]));
        assert_eq!(
            (&err["Outcome"], &err["Retried"], &err["AttemptDurationMs"]),
            (&json!("server_error"), &json!(1.0), &json!(30.0))
        );
        assert_eq!(other["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Service"]]));
        assert!(other.get("Outcome").is_none() && other["Deferred"] == json!(1.0));
    }

    #[test]
    fn the_outcome_dimension_takes_exactly_the_outcome_classes() {
        use crate::domain::Outcome;
        let all = [
            Outcome::Success,
            Outcome::ClientError,
            Outcome::ServerError,
            Outcome::Timeout,
            Outcome::Connect,
            Outcome::Dns,
            Outcome::Tls,
            Outcome::RateLimited,
            Outcome::StoppedByReceiver,
            Outcome::Blocked,
            Outcome::Interrupted,
        ];
        let mut names: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
        let mut listed = OUTCOMES.to_vec();
        names.sort_unstable();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }
}
