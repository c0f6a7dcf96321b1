//! Settings resolution (flags, environment, config file) and the HTTP client
//! of Courier's API.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::Cli;

/// Resolved settings.
pub struct Settings {
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub queue_url: Option<String>,
    pub dlq_url: Option<String>,
}

fn config_file(path: Option<PathBuf>) -> HashMap<String, String> {
    let path = path
        .or_else(|| std::env::var_os("COURIER_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/courier/config")));
    let text = path.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Self {
        let file = config_file(cli.config.clone());
        let pick = |flag: &Option<String>, env: &str, key: &str| {
            flag.clone()
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
                .or_else(|| file.get(key).cloned())
        };
        Self {
            url: pick(&cli.url, "COURIER_URL", "url"),
            api_key: pick(&cli.api_key, "COURIER_API_KEY", "api_key"),
            queue_url: pick(&cli.queue_url, "COURIER_QUEUE_URL", "queue_url"),
            dlq_url: pick(&cli.dlq_url, "COURIER_DLQ_URL", "dlq_url"),
        }
    }
}

/// Courier's API, as the tenant of the API key.
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(s: &Settings) -> anyhow::Result<Self> {
        let Some(base) = s.url.clone() else {
            bail!("no API URL: give --url, COURIER_URL or `url` in the config file")
        };
        let Some(key) = s.api_key.clone() else {
            bail!("no API key: give --api-key, COURIER_API_KEY or `api_key` in the config file")
        };
        Ok(Self { base: base.trim_end_matches('/').to_owned(), key, http: reqwest::Client::new() })
    }

    /// A call whose non-2xx answer becomes an error naming Courier's reason.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.raw(method, path, body).await?;
        if !(200..300).contains(&status) {
            let e = &v["error"];
            let field = e["field"].as_str().map(|f| format!(" ({f})")).unwrap_or_default();
            bail!(
                "{} {status}: {}{field}",
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(v)
    }

    /// A call returning the status and body whatever they are.
    pub async fn raw(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach Courier at {}", self.base))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// A GET whose answer is text (the metrics), with its status.
    pub async fn text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach Courier at {}", self.base))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.context("reading the answer")?))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// Percent-encodes a query value.
pub fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
