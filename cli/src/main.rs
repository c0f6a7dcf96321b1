//! `courier`: operate Courier from a terminal or a script. Talks to Courier's
//! HTTP API (so it works the same locally and against a deployed stack); the
//! queue and DLQ commands use the AWS SDK with the standard credential chain
//! and `AWS_ENDPOINT_URL`.

mod api;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "courier", version, about = "Operate Courier: status, tasks, replays, the DLQ, purges")]
pub struct Cli {
    /// Courier's API base URL (env COURIER_URL, or `url` in the config file).
    #[arg(long, global = true)]
    url: Option<String>,
    /// A tenant API key (env COURIER_API_KEY, or `api_key` in the config file).
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// The delivery queue URL, for queue depths (env COURIER_QUEUE_URL, or `queue_url`).
    #[arg(long, global = true)]
    queue_url: Option<String>,
    /// The dead-letter queue URL (env COURIER_DLQ_URL, or `dlq_url`).
    #[arg(long, global = true)]
    dlq_url: Option<String>,
    /// Config file of `key = value` lines (default: $COURIER_CONFIG or ~/.config/courier/config).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
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
    /// Delete finished tasks before their retention ends.
    Purge {
        #[arg(long)]
        status: String,
        /// RFC 3339 time: tasks created before it.
        #[arg(long)]
        before: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum TasksCommand {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    Show {
        id: String,
    },
    /// Create a task from flags, or from a JSON file with the API's create body.
    Create(CreateArgs),
    Cancel {
        id: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// A JSON file holding the whole create body (other flags are then ignored).
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long, default_value = "POST")]
    method: String,
    /// The URL the task's request goes to.
    #[arg(long)]
    target: Option<String>,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, conflicts_with = "json")]
    body: Option<String>,
    /// A JSON body.
    #[arg(long)]
    json: Option<String>,
    /// `90s`, `5m`, `2h`.
    #[arg(long, conflicts_with_all = ["at", "cron"])]
    delay: Option<String>,
    /// RFC 3339 time.
    #[arg(long, conflicts_with = "cron")]
    at: Option<String>,
    #[arg(long)]
    cron: Option<String>,
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    #[arg(long)]
    business_id: Option<String>,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Only failed tasks are replayed.
    #[arg(long, default_value = "failed")]
    status: String,
    #[arg(long)]
    host: Option<String>,
    /// RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time.
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
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    Show {
        message_id: String,
    },
    /// Send each parked task again (marks it for another try) and remove its message.
    Redrive {
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
