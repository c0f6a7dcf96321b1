//! `courier flows`: list, show, set and delete flow policies. With the admin
//! key as `--api-key` these are host limits (or, with `--tenant`, a tenant's
//! policies); with a tenant's key, its named keys and its shares of hosts.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::Output;
use crate::api::{Api, enc};
use crate::output::{cell, json as print_json, table};

#[derive(Subcommand)]
pub enum FlowsCommand {
    /// The policies the key may see (admin: all, or one tenant's with --tenant).
    List {
        /// Admin only: one tenant's policies (`tnt_…`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A key's policy, effective limits, breaker state and recent transitions.
    Show {
        /// `host:port` (a target host) or a flow key name.
        key: String,
        /// Admin only: the tenant whose named key or share this is.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create or replace a policy (unset fields take their defaults).
    Set(SetArgs),
    /// Delete a policy.
    Delete {
        /// `host:port` (a target host) or a flow key name.
        key: String,
        /// Admin only: the tenant whose named key or share this is.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct SetArgs {
    /// `host:port` (a target host) or a flow key name.
    key: String,
    /// Requests per period: `10/s`, `600/m`, `1000/h`.
    #[arg(long)]
    rate: Option<String>,
    /// Requests allowed at once above the rate (needs --rate).
    #[arg(long)]
    burst: Option<u32>,
    /// Requests in flight at most, across every sender (1 to 32).
    #[arg(long)]
    parallelism: Option<u32>,
    /// Breaker: requests in a window before it may open.
    #[arg(long)]
    breaker_min_requests: Option<u32>,
    /// Breaker: failure share (percent) of a window that opens it.
    #[arg(long)]
    breaker_failure_percent: Option<u32>,
    /// Breaker: the window (`5m`, `90s`).
    #[arg(long)]
    breaker_window: Option<String>,
    /// Breaker: how long it first stays open (`30s`); doubles on each repeated trip.
    #[arg(long)]
    open_min: Option<String>,
    /// Breaker: the longest it stays open (`10m`).
    #[arg(long)]
    open_max: Option<String>,
    /// Breaker: requests sent half-open before it closes again.
    #[arg(long)]
    probes: Option<u32>,
    /// Do not halve the rate on repeated 429/503 answers.
    #[arg(long)]
    no_adaptive: bool,
    /// Admin only: the tenant whose named key or share this is.
    #[arg(long)]
    tenant: Option<String>,
}

fn path(key: &str, tenant: Option<&str>) -> String {
    let q = tenant.map(|t| format!("?tenant={}", enc(t))).unwrap_or_default();
    format!("/v1/flows/{}{q}", enc(key))
}

/// The PUT body: only what was given, so the API's defaults and rules apply.
fn body(a: &SetArgs) -> Value {
    let mut doc = Map::new();
    let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put(&mut doc, "rate", a.rate.clone().map(Value::from));
    put(&mut doc, "burst", a.burst.map(Value::from));
    put(&mut doc, "parallelism", a.parallelism.map(Value::from));
    let mut breaker = Map::new();
    put(&mut breaker, "min_requests", a.breaker_min_requests.map(Value::from));
    put(&mut breaker, "failure_percent", a.breaker_failure_percent.map(Value::from));
    put(&mut breaker, "window", a.breaker_window.clone().map(Value::from));
    put(&mut breaker, "open_min", a.open_min.clone().map(Value::from));
    put(&mut breaker, "open_max", a.open_max.clone().map(Value::from));
    put(&mut breaker, "probes", a.probes.map(Value::from));
    if !breaker.is_empty() {
        doc.insert("breaker".to_owned(), Value::Object(breaker));
    }
    if a.no_adaptive {
        doc.insert("adaptive".to_owned(), json!(false));
    }
    Value::Object(doc)
}

pub async fn run(api: &Api, out: Output, c: FlowsCommand) -> anyhow::Result<ExitCode> {
    match c {
        FlowsCommand::List { tenant } => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec!["limit=100".to_owned()];
                q.extend(tenant.as_deref().map(|t| format!("tenant={}", enc(t))));
                q.extend(cursor.as_deref().map(|c| format!("cursor={}", enc(c))));
                let page = api.get(&format!("/v1/flows?{}", q.join("&"))).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if out == Output::Json {
                print_json(&json!({"items": items}));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let p = &i["policy"];
                    vec![
                        cell(&i["key"]),
                        cell(&i["kind"]),
                        cell(&i["tenant"]),
                        cell(&p["rate"]),
                        cell(&p["burst"]),
                        cell(&p["parallelism"]),
                        i["hold"]
                            .as_object()
                            .map_or("-".to_owned(), |h| format!("{} until {}", cell(&h["kind"]), cell(&h["until"]))),
                    ]
                })
                .collect();
            table(&["key", "kind", "tenant", "rate", "burst", "parallelism", "hold"], &rows);
        }
        FlowsCommand::Show { key, tenant } => {
            let v = api.get(&path(&key, tenant.as_deref())).await?;
            if out == Output::Json {
                print_json(&v);
            } else {
                show(&v);
            }
        }
        FlowsCommand::Set(a) => {
            let v = api.put(&path(&a.key, a.tenant.as_deref()), &body(&a)).await?;
            if out == Output::Json {
                print_json(&v);
            } else {
                show(&v);
            }
        }
        FlowsCommand::Delete { key, tenant } => {
            api.delete(&path(&key, tenant.as_deref())).await?;
            if out == Output::Json {
                print_json(&json!({"deleted": key}));
            } else {
                println!("deleted the policy on {key}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn limits(v: &Value) -> String {
    if v.is_null() {
        return "none".to_owned();
    }
    format!("rate {}, burst {}, parallelism {}", cell(&v["rate"]), cell(&v["burst"]), cell(&v["parallelism"]))
}

fn show(v: &Value) {
    let owner = v["tenant"].as_str().map(|t| format!(" (tenant {t})")).unwrap_or_default();
    println!("{} [{}]{owner}", cell(&v["key"]), cell(&v["kind"]));
    println!("policy:      {}", limits(&v["policy"]));
    if let Some(p) = v["policy"].as_object() {
        println!(
            "             adaptive {}, set {} by {}",
            cell(&p["adaptive"]),
            cell(&p["updated_at"]),
            cell(&p["updated_by"])
        );
    }
    if v.get("admin_policy").is_some() {
        println!("admin:       {}", limits(&v["admin_policy"]));
    }
    let e = &v["effective"];
    println!("effective:   {}, factor {}", limits(e), cell(&e["factor"]));
    let b = &v["breaker_settings"];
    println!(
        "breaker:     {} at {} requests / {} % in {}, open {} to {}, {} probes",
        if b["enabled"] == json!(false) { "off" } else { "on" },
        cell(&b["min_requests"]),
        cell(&b["failure_percent"]),
        cell(&b["window"]),
        cell(&b["open_min"]),
        cell(&b["open_max"]),
        cell(&b["probes"]),
    );
    let s = &v["state"];
    let br = &s["breaker"];
    println!(
        "state:       {} since {} until {}, {} trips; window {} requests, {} failures",
        cell(&br["state"]),
        cell(&br["since"]),
        cell(&br["until"]),
        cell(&br["trips"]),
        cell(&br["window"]["requests"]),
        cell(&br["window"]["failures"]),
    );
    println!(
        "             paused until {}, {} in flight, next slot {}",
        cell(&s["paused_until"]),
        cell(&s["in_flight"]),
        cell(&s["next_slot_at"])
    );
    let history = v["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!();
        let rows: Vec<Vec<String>> =
            history.iter().map(|h| vec![cell(&h["at"]), cell(&h["to"]), cell(&h["until"]), cell(&h["why"])]).collect();
        table(&["at", "to", "until", "why"], &rows);
    }
}
