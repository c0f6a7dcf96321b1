//! `courier`: operate Courier from a terminal or a script. Talks to Courier's
//! HTTP API (so it works the same locally and against a deployed stack); the
//! queue and DLQ commands use the AWS SDK with the standard credential chain
//! and `AWS_ENDPOINT_URL`.

mod api;
mod archive;
mod audit;
mod commands;
mod flows;
mod output;
mod secrets;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// The `--help` heading of the options every command takes, so they stand
/// apart from a command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Operate Courier: status, tasks, replays, the DLQ, purges, flow policies, signing secrets"
)]
pub struct Cli {
    /// Courier's API base URL (env COURIER_URL, or `url` in the config file).
    #[arg(long, global = true, help_heading = GLOBAL)]
    url: Option<String>,
    /// An API key: a tenant's, or the admin key for `flows` as admin (env COURIER_API_KEY, or `api_key`).
    #[arg(long, global = true, help_heading = GLOBAL)]
    api_key: Option<String>,
    /// The delivery queue URL, for queue depths (env COURIER_QUEUE_URL, or `queue_url`).
    #[arg(long, global = true, help_heading = GLOBAL)]
    queue_url: Option<String>,
    /// The dead-letter queue URL (env COURIER_DLQ_URL, or `dlq_url`).
    #[arg(long, global = true, help_heading = GLOBAL)]
    dlq_url: Option<String>,
    /// Config file of `key = value` lines (default: $COURIER_CONFIG or ~/.config/courier/config).
    #[arg(long, global = true, help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human, help_heading = GLOBAL)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and text, statuses coloured on a terminal.
    Human,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Task counts by status, queue depths and DLQ depth.
    Status {
        /// Refresh every N seconds until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// List, show, create and cancel tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Re-queue failed tasks by filter (history kept, attempt numbering continues).
    Replay(ReplayArgs),
    /// Inspect and redrive the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Flow policies: rate limits, parallelism caps and breakers per target host or flow key.
    #[command(subcommand)]
    Flows(flows::FlowsCommand),
    /// Tenants (admin key): show one (quotas, delivery limits, keys and their expiry), set delivery limits.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Signing secrets (Standard Webhooks): create, list, rotate, revoke.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// The audit log: who did what, when, on which resource, from where, and the outcome.
    Audit(audit::AuditArgs),
    /// Task history past its retention, from the S3 archive (AWS credentials).
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// Prometheus metrics (text exposition format) as the API serves them.
    Metrics,
    /// Delete finished tasks before their retention ends.
    Purge {
        /// The finished status to purge: `succeeded`, `failed` or `cancelled`.
        #[arg(long)]
        status: String,
        /// RFC 3339 time: tasks created before it.
        #[arg(long)]
        before: String,
        /// Count what would be purged; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Tasks newest first, by filter.
    List {
        /// Only tasks in this status (`pending`, `failed`, `active`, …).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks whose request goes to this host.
        #[arg(long)]
        host: Option<String>,
        /// Only tasks created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only tasks created before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// How many tasks to list at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One task with its request, schedule, retry policy and attempts.
    Show {
        /// The task id (`tsk_…`).
        id: String,
    },
    /// Create a task from flags, or from a JSON file with the API's create body.
    Create(CreateArgs),
    /// Cancel a task (a cron task's schedule is deleted).
    Cancel {
        /// The task id (`tsk_…`).
        id: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// A JSON file holding the whole create body (other flags are then ignored).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The HTTP method of the task's request.
    #[arg(long, default_value = "POST")]
    method: String,
    /// The URL the task's request goes to.
    #[arg(long)]
    target: Option<String>,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A text body, sent as given.
    #[arg(long, conflicts_with = "json")]
    body: Option<String>,
    /// A JSON body.
    #[arg(long)]
    json: Option<String>,
    /// Send after this delay: `90s`, `5m`, `2h`.
    #[arg(long, conflicts_with_all = ["at", "cron"])]
    delay: Option<String>,
    /// Send at this RFC 3339 time.
    #[arg(long, conflicts_with = "cron")]
    at: Option<String>,
    /// Send on this five-field cron expression, e.g. `0 10 * * *`.
    #[arg(long)]
    cron: Option<String>,
    /// The IANA time zone of `--cron`, e.g. `Asia/Shanghai` (default UTC).
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    /// Your own id for the task: creating it again returns the first task.
    #[arg(long)]
    business_id: Option<String>,
    /// Send this task's requests unsigned even when the tenant has signing secrets.
    #[arg(long)]
    no_signing: bool,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Only failed tasks are replayed.
    #[arg(long, default_value = "failed")]
    status: String,
    /// Only tasks whose request goes to this host.
    #[arg(long)]
    host: Option<String>,
    /// Only tasks created at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only tasks created before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// The failed attempt's status: `503` or `5xx`.
    #[arg(long)]
    code: Option<String>,
    /// Tasks per second, e.g. `100/s` or `100`.
    #[arg(long)]
    rate: Option<String>,
    /// Count and show a sample; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Resume a cancelled replay by id.
    #[arg(long, conflicts_with = "dry_run")]
    resume: Option<String>,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// The parked messages with their reasons.
    List {
        /// How many messages to read at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One parked message in full.
    Show {
        /// The SQS message id, as `dlq list` shows it.
        message_id: String,
    },
    /// Send each parked task again (marks it for another try) and remove its message.
    Redrive {
        /// How many messages to redrive at most.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("courier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every argument of `cmd` and its subcommands without help text, by path.
    fn undocumented(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_about().is_none() {
            missing.push(path.clone());
        }
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            undocumented(sub, &path, missing);
        }
    }

    #[test]
    fn every_command_and_argument_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn global_options_have_their_own_heading() {
        let cmd = Cli::command();
        let globals: Vec<_> = cmd.get_arguments().filter(|a| a.is_global_set()).collect();
        assert_eq!(globals.len(), 6);
        for arg in globals {
            assert_eq!(arg.get_help_heading(), Some(GLOBAL), "{}", arg.get_id());
        }
        let mut cmd = Cli::command();
        cmd.build();
        let create = cmd.find_subcommand_mut("tasks").and_then(|t| t.find_subcommand_mut("create")).expect("create");
        let help = create.render_help().to_string();
        let (own, global) = help.split_once("Global options:").expect("a global heading");
        assert!(own.contains("--cron") && !own.contains("--api-key"), "{help}");
        assert!(global.contains("--api-key") && !global.contains("--cron"), "{help}");
    }
}
