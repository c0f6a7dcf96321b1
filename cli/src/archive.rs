//! `courier archive`: the task history TTL deleted, read back from the S3
//! archive (`archive/<tenant>/<day>/….jsonl.gz`) with the caller's AWS
//! credentials, as `courier dlq` reads the queues.

use std::process::ExitCode;

use clap::Subcommand;
use courier::archive::S3Archive;
use serde_json::json;

use crate::Output;
use crate::output::{cell, json as print_json, table};

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// The archive's objects, by tenant and day.
    List {
        /// Only this tenant's (`tnt_…`).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this day's (`yyyy-mm-dd`).
        #[arg(long)]
        day: Option<String>,
        /// The bucket (env COURIER_ARCHIVE_BUCKET).
        #[arg(long, env = "COURIER_ARCHIVE_BUCKET")]
        bucket: String,
    },
    /// One object's items (one JSON document per line: task id, item key, tenant, when it expired, the item).
    Get {
        /// The object's key, as `list` shows it.
        key: String,
        /// The bucket (env COURIER_ARCHIVE_BUCKET).
        #[arg(long, env = "COURIER_ARCHIVE_BUCKET")]
        bucket: String,
    },
}

pub async fn run(out: Output, c: ArchiveCommand) -> anyhow::Result<ExitCode> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    match c {
        ArchiveCommand::List { tenant, day, bucket } => {
            let objects =
                S3Archive::new(S3Archive::client(&sdk), bucket).list(tenant.as_deref(), day.as_deref()).await?;
            match out {
                Output::Json => print_json(
                    &json!({"objects": objects.iter().map(|(k, size)| json!({"key": k, "bytes": size})).collect::<Vec<_>>()}),
                ),
                Output::Human => {
                    let rows: Vec<Vec<String>> =
                        objects.iter().map(|(k, size)| vec![k.clone(), size.to_string()]).collect();
                    table(&["key", "bytes"], &rows);
                }
            }
        }
        ArchiveCommand::Get { key, bucket } => {
            let lines = S3Archive::new(S3Archive::client(&sdk), bucket).get(&key).await?;
            match out {
                Output::Json => {
                    for l in &lines {
                        println!("{l}");
                    }
                }
                Output::Human => {
                    let rows: Vec<Vec<String>> = lines
                        .iter()
                        .map(|l| {
                            let status = l["item"]["status"]["S"].clone();
                            vec![
                                cell(&l["task_id"]),
                                cell(&l["sk"]),
                                cell(&l["tenant"]),
                                cell(&l["expired_at"]),
                                cell(&status),
                            ]
                        })
                        .collect();
                    table(&["task", "item", "tenant", "expired", "status"], &rows);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
