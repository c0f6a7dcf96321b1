//! `courier audit`: the audit log, newest first (a tenant's key: its own
//! entries; the admin key: everyone's). `courier metrics`: the Prometheus
//! text the API serves, as is.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Output;
use crate::api::{Api, enc};
use crate::output::{cell, json as print_json, table};

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only entries by this actor: `admin`, `key:<key id>`, `anonymous`.
    #[arg(long)]
    actor: Option<String>,
    /// Only entries of this action, e.g. `task.cancel`, `key.create`, `auth.failed`.
    #[arg(long)]
    action: Option<String>,
    /// Only entries on this resource (a path under /v1, e.g. `tasks/tsk_…`).
    #[arg(long)]
    resource: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only entries at or before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Admin only: one tenant's entries (`tnt_…`).
    #[arg(long)]
    tenant: Option<String>,
    /// How many entries to show at most.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

pub async fn run(api: &Api, out: Output, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut filters = Vec::new();
    for (name, v) in [
        ("actor", &a.actor),
        ("action", &a.action),
        ("resource", &a.resource),
        ("since", &a.since),
        ("until", &a.until),
        ("tenant", &a.tenant),
    ] {
        if let Some(v) = v {
            filters.push(format!("{name}={}", enc(v)));
        }
    }
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    while entries.len() < a.limit {
        let mut q = filters.clone();
        q.push(format!("limit={}", (a.limit - entries.len()).min(500)));
        q.extend(cursor.as_deref().map(|c| format!("cursor={}", enc(c))));
        let page = api.get(&format!("/v1/audit?{}", q.join("&"))).await?;
        entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    if out == Output::Json {
        print_json(&json!({"entries": entries}));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                cell(&e["at"]),
                cell(&e["actor"]),
                cell(&e["action"]),
                cell(&e["resource"]),
                cell(&e["source_ip"]),
                format!("{} {}", cell(&e["outcome"]), cell(&e["status"])),
                cell(&e["count"]),
            ]
        })
        .collect();
    table(&["AT", "ACTOR", "ACTION", "RESOURCE", "SOURCE", "OUTCOME", "COUNT"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Prints `GET /v1/metrics` (Prometheus text) unchanged; with `-o json`,
/// the samples as `{"name", "labels", "value"}` objects.
pub async fn metrics(api: &Api, out: Output) -> anyhow::Result<ExitCode> {
    let (status, text) = api.text("/v1/metrics").await?;
    if status != 200 {
        bail!("metrics {status}: {}", text.trim());
    }
    if out == Output::Human {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(sample)
        .collect::<anyhow::Result<Vec<Value>>>()?;
    print_json(&json!({"samples": samples}));
    Ok(ExitCode::SUCCESS)
}

/// One sample line of the text format (as the API writes it: no timestamps).
fn sample(line: &str) -> anyhow::Result<Value> {
    let (series, value) = line.rsplit_once(' ').context("a sample line has a value")?;
    let value: f64 = value.parse().with_context(|| format!("value of `{line}`"))?;
    let (name, labels) = match series.split_once('{') {
        None => (series, serde_json::Map::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').context("labels end with }")?;
            let mut labels = serde_json::Map::new();
            let mut chars = body.chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                if chars.next() != Some('"') {
                    bail!("label `{key}` of `{line}` is not quoted");
                }
                let mut v = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => v.push('\n'),
                            Some(c) => v.push(c),
                            None => bail!("dangling escape in `{line}`"),
                        },
                        '"' => break,
                        c => v.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_owned(), Value::String(v));
                if chars.peek() == Some(&',') {
                    chars.next();
                }
            }
            (name, labels)
        }
    };
    Ok(json!({"name": name, "labels": labels, "value": value}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_line_splits_into_name_labels_and_value() {
        let v = sample(r#"courier_tasks{tenant="tnt_1",status="fa\"il"} 3"#).expect("sample");
        assert_eq!(
            v,
            json!({"name": "courier_tasks", "labels": {"tenant": "tnt_1", "status": "fa\"il"}, "value": 3.0})
        );
        assert_eq!(sample("courier_dlq_depth 0").expect("sample")["labels"], json!({}));
    }
}
