//! `courier tenants` (admin key): a tenant's quotas, delivery limits, event
//! opt-ins and API keys with their expiry; setting its delivery limits and
//! the lifecycle events published for it.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::Output;
use crate::api::{Api, enc};
use crate::output::{cell, json as print_json, table};

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// A tenant: status, quotas, delivery limits and its keys (ids, expiry; never the keys).
    Show {
        /// The tenant's id (`tnt_…`).
        id: String,
    },
    /// Sets the tenant's delivery limits across all its targets (held deliveries are not attempts).
    Limits {
        /// The tenant's id (`tnt_…`).
        id: String,
        /// Deliveries per period, e.g. `1000/m`.
        #[arg(long)]
        rate: Option<String>,
        /// Requests in flight at once (1 to 32).
        #[arg(long)]
        parallelism: Option<u32>,
        /// Removes both limits.
        #[arg(long, conflicts_with_all = ["rate", "parallelism"])]
        clear: bool,
    },
    /// Sets the event types published for the tenant (task.created, task.succeeded, task.failed,
    /// task.cancelled, run.succeeded, run.failed, flow.breaker_opened, flow.breaker_closed);
    /// `--none` turns them off.
    Events {
        /// The tenant's id (`tnt_…`).
        id: String,
        /// The event types, e.g. `task.failed run.failed`.
        #[arg(required_unless_present = "none")]
        types: Vec<String>,
        /// Publishes no event for the tenant.
        #[arg(long, conflicts_with = "types")]
        none: bool,
    },
}

fn print_tenant(t: &Value) {
    let q = &t["quotas"];
    println!("{}  {}  {}", cell(&t["id"]), cell(&t["name"]), if t["enabled"] == true { "enabled" } else { "disabled" });
    println!("active tasks      {} of {}", cell(&t["active_tasks"]), cell(&q["max_active_tasks"]));
    println!("create rate       {}/s", cell(&q["create_rate_per_second"]));
    let limit = |v: &Value| if v.is_null() { "none".to_owned() } else { cell(v) };
    println!("delivery rate     {}", limit(&q["delivery_rate"]));
    println!("delivery parallel {}", limit(&q["delivery_parallelism"]));
    let events: Vec<String> = t["events"].as_array().into_iter().flatten().map(cell).collect();
    println!("events            {}", if events.is_empty() { "none".to_owned() } else { events.join(" ") });
    println!();
    let rows: Vec<Vec<String>> = t["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| vec![cell(&k["id"]), cell(&k["created_at"]), cell(&k["expires_at"]), cell(&k["revoked_at"])])
        .collect();
    table(&["key", "created", "expires", "revoked"], &rows);
}

pub async fn run(api: &Api, out: Output, c: TenantsCommand) -> anyhow::Result<ExitCode> {
    let v = match c {
        TenantsCommand::Show { id } => api.get(&format!("/v1/tenants/{}", enc(&id))).await?,
        TenantsCommand::Limits { id, rate, parallelism, clear } => {
            let mut body = Map::new();
            if clear {
                body.insert("delivery_rate".into(), Value::Null);
                body.insert("delivery_parallelism".into(), Value::Null);
            }
            if let Some(r) = rate {
                body.insert("delivery_rate".into(), json!(r));
            }
            if let Some(p) = parallelism {
                body.insert("delivery_parallelism".into(), json!(p));
            }
            if body.is_empty() {
                anyhow::bail!("give --rate, --parallelism or --clear");
            }
            api.call(reqwest::Method::PATCH, &format!("/v1/tenants/{}", enc(&id)), Some(&Value::Object(body))).await?
        }
        TenantsCommand::Events { id, types, none } => {
            let types = if none { Vec::new() } else { types };
            let body = json!({"events": types});
            api.call(reqwest::Method::PATCH, &format!("/v1/tenants/{}", enc(&id)), Some(&body)).await?
        }
    };
    match out {
        Output::Json => print_json(&v),
        Output::Human => print_tenant(&v),
    }
    Ok(ExitCode::SUCCESS)
}
