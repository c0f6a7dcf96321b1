//! A Lambda function for the harness's own tests, never deployed: it speaks
//! the Runtime API directly and answers each event with its process id and
//! the event, or exits mid-invocation when the event says `{"exit": CODE}`
//! (what a crashing function does), so a test can watch the harness replace
//! a process that died.

use anyhow::Context;
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").context("AWS_LAMBDA_RUNTIME_API")?;
    let base = format!("http://{api}/2018-06-01/runtime/invocation");
    let http = reqwest::Client::new();
    loop {
        let next = http.get(format!("{base}/next")).send().await?.error_for_status()?;
        let id = next
            .headers()
            .get("lambda-runtime-aws-request-id")
            .and_then(|v| v.to_str().ok())
            .context("request id")?
            .to_owned();
        let event: Value = next.json().await?;
        if let Some(code) = event["exit"].as_i64() {
            std::process::exit(code as i32);
        }
        let answer = json!({"pid": std::process::id(), "event": event});
        http.post(format!("{base}/{id}/response")).json(&answer).send().await?.error_for_status()?;
    }
}
