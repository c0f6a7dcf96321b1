//! EventBridge Scheduler firing, locally: every tick, list the schedules of
//! the group, and for each one that is due, perform its target action with
//! its input (placeholders such as `<aws.scheduler.scheduled-time>`
//! substituted), then delete it if its `ActionAfterCompletion` is `DELETE`.
//!
//! Targets understood: an SQS queue ARN (templated target: the input is the
//! message body) and the universal target
//! `arn:aws:scheduler:::aws-sdk:sqs:sendMessage` (the input is a SendMessage
//! request: `QueueUrl`, `MessageBody`, optional `DelaySeconds`).
//! Expressions understood: `at(yyyy-mm-ddThh:mm:ss)` in UTC.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_scheduler::types::{ActionAfterCompletion, ScheduleState};
use time::OffsetDateTime;
use time::macros::format_description;

/// The universal target that sends an SQS message.
pub const SQS_SEND_MESSAGE_TARGET: &str = "arn:aws:scheduler:::aws-sdk:sqs:sendMessage";

/// Fires due schedules of `group` every `tick` until aborted.
pub async fn run(scheduler: aws_sdk_scheduler::Client, sqs: aws_sdk_sqs::Client, group: String, tick: Duration) {
    let mut bridge = Bridge::new(scheduler, sqs, group);
    loop {
        if let Err(e) = bridge.tick(OffsetDateTime::now_utc()).await {
            tracing::warn!(error = %e, "scheduler bridge tick failed");
        }
        tokio::time::sleep(tick).await;
    }
}

/// The bridge's state: which firing of which schedule already happened.
pub struct Bridge {
    scheduler: aws_sdk_scheduler::Client,
    sqs: aws_sdk_sqs::Client,
    group: String,
    fired: HashMap<String, OffsetDateTime>,
}

/// When a schedule expression is next due at or before `now`, if it is.
pub fn due_firing(expression: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let at = expression.strip_prefix("at(")?.strip_suffix(')')?;
    let t = time::PrimitiveDateTime::parse(at, format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"))
        .ok()?
        .assume_utc();
    (t <= now).then_some(t)
}

impl Bridge {
    pub fn new(scheduler: aws_sdk_scheduler::Client, sqs: aws_sdk_sqs::Client, group: String) -> Self {
        Self { scheduler, sqs, group, fired: HashMap::new() }
    }

    /// Fires everything due at `now`; returns the names fired.
    pub async fn tick(&mut self, now: OffsetDateTime) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut pages = self.scheduler.list_schedules().group_name(&self.group).into_paginator().send();
        while let Some(page) = pages.next().await {
            for s in page?.schedules {
                if s.state() == Some(&ScheduleState::Enabled)
                    && let Some(name) = s.name()
                {
                    names.push(name.to_owned());
                }
            }
        }
        let mut fired = Vec::new();
        for name in names {
            let s = self.scheduler.get_schedule().group_name(&self.group).name(&name).send().await?;
            let Some(when) = s.schedule_expression().and_then(|e| due_firing(e, now)) else {
                continue;
            };
            if self.fired.get(&name) == Some(&when) {
                continue;
            }
            let Some(target) = s.target() else { continue };
            let input = target.input().unwrap_or_default();
            let input = substitute(input, when, s.arn().unwrap_or_default());
            self.perform(target.arn(), &input).await?;
            self.fired.insert(name.clone(), when);
            tracing::info!(schedule = %name, scheduled_time = %when, "schedule fired");
            if s.action_after_completion() == Some(&ActionAfterCompletion::Delete) {
                self.scheduler.delete_schedule().group_name(&self.group).name(&name).send().await?;
                self.fired.remove(&name);
            }
            fired.push(name);
        }
        Ok(fired)
    }

    async fn perform(&self, arn: &str, input: &str) -> anyhow::Result<()> {
        if arn == SQS_SEND_MESSAGE_TARGET {
            let req: serde_json::Value = serde_json::from_str(input)?;
            let url = req.get("QueueUrl").and_then(|v| v.as_str()).ok_or_else(|| anyhow::anyhow!("no QueueUrl"))?;
            let body = req.get("MessageBody").and_then(|v| v.as_str()).unwrap_or_default();
            let delay = req.get("DelaySeconds").and_then(serde_json::Value::as_i64).unwrap_or(0);
            self.sqs.send_message().queue_url(url).message_body(body).delay_seconds(delay as i32).send().await?;
        } else if let Some(name) = arn.strip_prefix("arn:aws:sqs:").and_then(|r| r.rsplit(':').next()) {
            let url = self.sqs.get_queue_url().queue_name(name).send().await?.queue_url.unwrap_or_default();
            self.sqs.send_message().queue_url(url).message_body(input).send().await?;
        } else {
            anyhow::bail!("target {arn} is not supported by the local scheduler bridge");
        }
        Ok(())
    }
}

/// Replaces Scheduler's context placeholders in a target input.
pub fn substitute(input: &str, scheduled: OffsetDateTime, schedule_arn: &str) -> String {
    let time =
        scheduled.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")).unwrap_or_default();
    input
        .replace("<aws.scheduler.scheduled-time>", &time)
        .replace("<aws.scheduler.schedule-arn>", schedule_arn)
        .replace("<aws.scheduler.execution-id>", &uuid::Uuid::new_v4().to_string())
        .replace("<aws.scheduler.attempt-number>", "1")
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn an_at_expression_is_due_from_its_time_on() {
        let e = "at(2026-01-02T03:04:05)";
        assert_eq!(due_firing(e, datetime!(2026-01-02 03:04:04 UTC)), None);
        assert_eq!(due_firing(e, datetime!(2026-01-02 03:04:05 UTC)), Some(datetime!(2026-01-02 03:04:05 UTC)));
        assert_eq!(due_firing("rate(5 minutes)", datetime!(2026-01-02 03:04:05 UTC)), None);
    }

    #[test]
    fn placeholders_are_substituted() {
        let s = substitute(r#"{"t":"<aws.scheduler.scheduled-time>"}"#, datetime!(2026-01-02 03:04:05 UTC), "arn");
        assert_eq!(s, r#"{"t":"2026-01-02T03:04:05Z"}"#);
    }
}
