//! `make chaos`: the chaos scenario of [`courier_local::chaos`], long — by
//! default 1,000 tasks from 16 concurrent clients, 10 % of the functions' AWS
//! calls failing, the sender SIGKILLed every 3 s — and prints the figures:
//! created, delivered, duplicates with their causes, stuck, elapsed, AWS calls
//! failed per service. Exits non-zero when the scenario fails.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use courier_local::chaos::{ChaosOptions, run};

#[derive(Parser)]
#[command(about = "Courier under faults and sender kills (needs AWS_ENDPOINT_URL: the emulator)")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Share of the functions' AWS calls that fail (0–1).
    #[arg(long, default_value_t = 0.1)]
    fault_share: f64,
    /// Seconds between two kills of the sender.
    #[arg(long, default_value_t = 3)]
    kill_every: u64,
    /// Seed of the fault draws and the receiver's answer times.
    #[arg(long, default_value_t = 8)]
    seed: u64,
    /// Created but not yet received, at most (the emulator slows on deep queues).
    #[arg(long, default_value_t = 150)]
    max_in_flight: usize,
    /// Seconds the tasks may take to settle once all are created.
    #[arg(long, default_value_t = 300)]
    settle: u64,
    /// Seconds between two reconciler runs (grace 1 s).
    #[arg(long, default_value_t = 3)]
    reconcile_every: u64,
    /// Directory of the `api`, `sender` and `reconciler` binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .map_err(|_| anyhow::anyhow!("AWS_ENDPOINT_URL must point at the emulator"))?;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let stack = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::create_dir_all(".local")?;
    let mut opts = ChaosOptions::new(&stack, bin_dir, upstream);
    opts.log_file = Some(PathBuf::from(format!(".local/{stack}.log")));
    opts.tasks = args.tasks;
    opts.clients = args.clients;
    opts.fault_share = args.fault_share;
    opts.kill_every = Duration::from_secs(args.kill_every);
    opts.seed = args.seed;
    opts.max_in_flight = args.max_in_flight;
    opts.settle = Duration::from_secs(args.settle);
    opts.reconcile_every = Duration::from_secs(args.reconcile_every);
    opts.progress = Some(Duration::from_secs(30));
    println!(
        "chaos: {} tasks, {} clients, {:.0} % of AWS calls failing, sender killed every {} s (functions log to .local/{stack}.log)…",
        args.tasks,
        args.clients,
        args.fault_share * 100.0,
        args.kill_every
    );
    let sdk = courier::aws::load().await;
    let report = run(&sdk, opts).await?;
    print!("\n{}", report.render());
    anyhow::ensure!(report.passed(), "the chaos scenario failed");
    Ok(())
}
