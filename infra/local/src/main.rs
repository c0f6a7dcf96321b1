//! `courier-local`: runs Courier on this machine against a local AWS
//! emulator (see `make run`), or bootstraps its resources.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use courier_local::stack::{LocalStack, StackOptions};

/// Where the local JWT issuer keeps its ES256 key (relative to the project).
const LOCAL_JWT_KEY: &str = ".local/jwt-es256.pk8";

#[derive(Parser)]
#[command(version, about = "Courier's local stack (dev tooling; never deployed)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bootstrap resources, start the API, the sender, both bridges and an echo target.
    Up {
        #[arg(long, default_value = "courier", env = "COURIER_STACK")]
        stack: String,
        #[arg(long, default_value = "127.0.0.1:3000")]
        api: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:3001")]
        echo: SocketAddr,
        /// Directory of the `api` and `sender` binaries (default: next to this one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Deliver nothing: no queue pollers (the sender never runs), no
        /// scheduler bridge, no reconciler. For fuzzing the API with made-up
        /// target URLs that must never be sent.
        #[arg(long)]
        no_delivery: bool,
    },
    /// Mint a JWT for a tenant with the local issuer's key (the one `up`'s
    /// authorizer accepts on `/jwt/…`; kept in `.local/jwt-es256.pk8`).
    Jwt {
        /// The tenant the token names (`tnt_…`).
        #[arg(long)]
        tenant: String,
        /// Seconds it is valid for (negative: already expired, to try a refusal).
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
        expires_in: i64,
        /// The claim naming the tenant.
        #[arg(long, default_value = "courier_tenant")]
        claim: String,
    },
    /// Create the stack's table, queues and schedule group, and print their names.
    Bootstrap {
        #[arg(long, default_value = "courier", env = "COURIER_STACK")]
        stack: String,
    },
    /// Check recorded AWS calls (`COURIER_IAM_LOG` of local stacks) against the
    /// functions' policies in the template; fails listing every call not granted,
    /// or when nothing was recorded.
    IamCheck {
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
        #[arg(long, env = "COURIER_IAM_LOG")]
        log: PathBuf,
        /// Also list grants no recorded call used.
        #[arg(long)]
        unused: bool,
    },
    /// Create a tenant directly in the stack's table and print its first API key.
    Tenant {
        #[arg(long, default_value = "courier", env = "COURIER_STACK")]
        stack: String,
        /// The tenant's name.
        #[arg(long)]
        name: String,
    },
}

/// Creates a tenant with default quotas; returns (tenant id, API key).
async fn create_tenant(sdk: &aws_config::SdkConfig, stack: &str, name: &str) -> anyhow::Result<(String, String)> {
    let names = courier::resources::StackNames::for_stack(stack);
    let store = courier::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), names.table, 90);
    let (tenant, key) = courier::api::create_tenant_with_key(&store, name, courier::domain::Quotas::default()).await?;
    Ok((tenant.id.into(), key.secret))
}

/// Prints the verdict on an IAM log; an error when any call is not granted or none was recorded.
fn iam_check(template: &std::path::Path, log: &std::path::Path, show_unused: bool) -> anyhow::Result<()> {
    use courier_local::iam;
    let text = std::fs::read_to_string(template)?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let log_text =
        std::fs::read_to_string(log).map_err(|e| anyhow::anyhow!("cannot read the IAM log {}: {e}", log.display()))?;
    let records = iam::read_log(&log_text)?;
    let verdict = iam::check(&template, &records, &iam::LocalIdentities::of_local_stack())?;
    let mut per_function: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for ((function, _, _), n) in &verdict.seen {
        let e = per_function.entry(function).or_default();
        e.0 += n;
        e.1 += 1;
    }
    println!(
        "IAM check: {} recorded calls' needs, {} distinct (function, action, resource); {} not granted",
        verdict.records,
        verdict.seen.len(),
        verdict.denied.len()
    );
    for (function, (n, distinct)) in &per_function {
        println!("  {function:<11} {n:>7} records, {distinct:>3} distinct");
    }
    if show_unused {
        for (function, sid, action, resource) in &verdict.unused {
            println!("  unused grant: {function} {sid}: {action} on {resource}");
        }
    }
    for ((function, action, resource), why) in &verdict.denied {
        println!("  NOT GRANTED  {function}  {action}  {resource}  ({why})");
    }
    anyhow::ensure!(verdict.records > 0, "no AWS call was recorded in {}: the check proves nothing", log.display());
    anyhow::ensure!(
        verdict.passed(),
        "{} (function, action, resource) not granted by the template",
        verdict.denied.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).with_writer(std::io::stderr).init();
    let command = Cli::parse().command;
    if let Cmd::IamCheck { template, log, unused } = &command {
        // Offline: no SDK configuration (no region lookup) needed.
        if let Err(e) = iam_check(template, log, *unused) {
            eprintln!("iam-check: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    if let Cmd::Jwt { tenant, expires_in, claim } = &command {
        // Offline too: the key is a local file.
        let issuer = courier_local::jwt::Issuer::load_or_create(std::path::Path::new(LOCAL_JWT_KEY))?;
        println!("{}", issuer.mint(claim, tenant, *expires_in)?);
        return Ok(());
    }
    let sdk = courier::aws::load().await;
    match command {
        Cmd::IamCheck { .. } => {}
        Cmd::Bootstrap { stack } => {
            let out = courier_local::bootstrap::bootstrap(&sdk, &stack).await?;
            for (k, v) in out.function_env() {
                println!("{k}={v}");
            }
        }
        Cmd::Jwt { .. } => unreachable!("handled above"),
        Cmd::Tenant { stack, name } => {
            let (id, key) = create_tenant(&sdk, &stack, &name).await?;
            println!("tenant {id} ({name})\nAPI key (shown once): {key}");
        }
        Cmd::Up { stack, api, echo, bin_dir, no_delivery } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
            };
            let echo_listener = tokio::net::TcpListener::bind(echo).await?;
            let echo_addr = echo_listener.local_addr()?;
            tokio::spawn(courier_local::echo::serve(echo_listener));
            let admin_key = std::env::var("COURIER_ADMIN_KEY")
                .ok()
                .filter(|k| k.len() >= 32)
                .unwrap_or_else(|| format!("adm_{}", uuid::Uuid::new_v4().simple()));
            let mut opts = StackOptions::new(&stack, bin_dir);
            opts.api_addr = api;
            // Lambda gives each concurrent request its own instance: 8 API
            // processes (17 MB each, idle) serve 8 clients at once, not 2.
            opts.api_instances = 8;
            // Items expire as DynamoDB's TTL would have them (then archived to S3).
            opts.ttl_sweep = Some(std::time::Duration::from_secs(60));
            // The JWT routes accept the local issuer's tokens (`courier-local jwt`).
            opts.jwt = Some(std::sync::Arc::new(courier_local::jwt::Issuer::load_or_create(std::path::Path::new(
                LOCAL_JWT_KEY,
            ))?));
            if no_delivery {
                opts.pollers = 0;
                opts.scheduler_tick = None;
                opts.reconcile_every = None;
            }
            // As deployed: the API function gets the key's SHA-256, never the key.
            opts.extra_env.push(("COURIER_ADMIN_KEY_SHA256".into(), courier::domain::hash_key(&admin_key)));
            let local = LocalStack::start(&sdk, opts).await?;
            let (tenant, key) = create_tenant(&sdk, &stack, "demo").await?;
            println!("\nCourier is running.");
            println!("  API:          {}", local.api_url);
            println!("  console:      {}/admin  (sign in with the API key or the admin key below)", local.api_url);
            println!("  echo target:  http://{echo_addr}/  (logs what it receives below)");
            println!("  table:        {}", local.outputs.names.table);
            println!("  queue:        {}", local.outputs.queue_url);
            println!(
                "  events:       bus {}; its example rule fills {}",
                local.outputs.event_bus, local.outputs.event_queue_url
            );
            println!(
                "  archive:      s3://{}/archive/ (expired history; `courier archive list`)",
                local.outputs.archive_bucket
            );
            println!("  tenant:       {tenant} (demo)");
            println!("  API key:      {key}");
            println!("  admin key:    {admin_key}  (the API function holds only its SHA-256)");
            println!("\nCreate a task:\n");
            println!("  export COURIER_API_KEY={key}");
            println!(
                "  curl -s -X POST {}/v1/tasks -H \"authorization: Bearer $COURIER_API_KEY\" -H 'content-type: application/json' \\\n    -d '{{\"request\":{{\"method\":\"POST\",\"url\":\"http://{echo_addr}/hello\",\"json\":{{\"hi\":1}}}}}}'",
                local.api_url
            );
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
            // The CLI built next to this binary, shown relative to the working directory.
            let cli = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("courier")))
                .map(|p| {
                    let cwd = std::env::current_dir().unwrap_or_default();
                    p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p).display().to_string()
                })
                .unwrap_or_else(|| "courier".to_owned());
            println!("\nOr with a JWT (the local issuer's; deployed, your identity provider's):\n");
            println!(
                "  T=$(target/release/courier-local jwt --tenant {tenant})\n  curl -s -H \"authorization: Bearer $T\" {}/jwt/v1/tasks",
                local.api_url
            );
            println!("\nOperate it with the CLI ({cli}, or `cargo install --path cli`):\n");
            println!(
                "  export COURIER_URL={} COURIER_API_KEY={key} \\\n    COURIER_QUEUE_URL={} COURIER_DLQ_URL={} \\\n    AWS_ENDPOINT_URL={endpoint} AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test",
                local.api_url, local.outputs.queue_url, local.outputs.dlq_url
            );
            println!("  {cli} status");
            println!(
                "\nThen look at it:  curl -s -H \"authorization: Bearer $COURIER_API_KEY\" {}/v1/tasks/<id>\n\nCtrl-C stops everything.\n",
                local.api_url
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping");
            drop(local);
        }
    }
    Ok(())
}
