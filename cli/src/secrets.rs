//! `courier secrets`: create, list, rotate and revoke the tenant's signing
//! secrets (Standard Webhooks). A new secret is printed once: store it where
//! the receiver verifies signatures.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::Output;
use crate::api::{Api, enc};
use crate::output::{cell, json as print_json, table};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Create a signing secret (printed once); every task of the tenant is then signed.
    Create,
    /// The tenant's secrets: ids, times and states (never the secrets).
    List,
    /// A new secret (printed once); the ones signing until now keep signing for 24 hours.
    Rotate,
    /// Revoke a secret: it stops signing at once (senders notice within a minute).
    Revoke {
        /// The secret's id (`whs_…`).
        id: String,
    },
}

fn print_new(v: &Value) {
    println!("secret {} created {}", cell(&v["id"]), cell(&v["created_at"]));
    println!("{}", cell(&v["secret"]));
    println!("(shown once: give it to the receiver, which verifies webhook-signature with it)");
    for p in v["previous"].as_array().into_iter().flatten() {
        println!("previous secret {} signs until {}", cell(&p["id"]), cell(&p["until"]));
    }
}

pub async fn run(api: &Api, out: Output, c: SecretsCommand) -> anyhow::Result<ExitCode> {
    let v = match c {
        SecretsCommand::Create => api.post("/v1/secrets", &json!({})).await?,
        SecretsCommand::Rotate => api.post("/v1/secrets/rotate", &json!({})).await?,
        SecretsCommand::List => {
            let v = api.get("/v1/secrets").await?;
            if out == Output::Human {
                let rows: Vec<Vec<String>> = v["secrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| vec![cell(&s["id"]), cell(&s["state"]), cell(&s["created_at"]), cell(&s["until"])])
                    .collect();
                table(&["id", "state", "created", "signs until"], &rows);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        SecretsCommand::Revoke { id } => {
            api.delete(&format!("/v1/secrets/{}", enc(&id))).await?;
            if out == Output::Human {
                println!("revoked signing secret {id}");
                return Ok(ExitCode::SUCCESS);
            }
            json!({"revoked": id})
        }
    };
    if out == Output::Json {
        print_json(&v);
    } else {
        print_new(&v);
    }
    Ok(ExitCode::SUCCESS)
}
