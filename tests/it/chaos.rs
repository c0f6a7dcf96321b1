//! The chaos scenario, short: tasks created by concurrent clients with
//! idempotency keys while 10 % of the functions' AWS calls fail and the
//! sender is SIGKILLed every three seconds. Every created task is delivered,
//! none is stuck, keys and tasks match, and every duplicate request is
//! explained by a kill during that attempt (`make chaos` runs it long).

use std::time::Duration;

use courier_local::chaos::{ChaosOptions, run};

use crate::helpers::{bin_dir, sdk, unique_stack};

#[tokio::test]
async fn tasks_created_through_faults_and_sender_kills_are_each_delivered_and_none_is_lost() {
    let stack = unique_stack("chaos");
    let upstream = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    let mut opts = ChaosOptions::new(&stack, bin_dir(), upstream);
    let logs = bin_dir().join("it-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    opts.log_file = Some(logs.join(format!("{stack}.log")));
    opts.tasks = 50;
    opts.kill_after_creates = Duration::from_secs(3);
    opts.clients = 8;
    opts.kill_every = Duration::from_secs(3);
    // Settling ends as soon as every task is delivered (≈ 15 s alone). The bound is for a
    // loaded machine: with the whole suite beside it, one reconciler pass took 37-53 s
    // (its calls wait on the emulator's one DynamoDB lock and on injected 2 s stalls).
    opts.settle = Duration::from_secs(150);
    let report = run(&sdk().await, opts).await.expect("scenario runs");
    let text = report.render();
    println!("{text}");
    assert!(report.passed(), "{text}");
    assert!(report.kills >= 2, "the sender was killed during the run: {text}");
    assert!(report.aws.values().map(|s| s.faulted()).sum::<u64>() > 0, "faults were injected: {text}");
}
