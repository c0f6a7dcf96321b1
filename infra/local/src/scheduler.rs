//! EventBridge Scheduler firing, locally: every tick, list the schedules of
//! the group, and for each one that is due, perform its target action with
//! its input (placeholders such as the scheduled time substituted), then delete it if its `ActionAfterCompletion` is `DELETE`.
//!
//! Targets understood: an SQS queue ARN (templated target: the input is the
//! message body) and the universal target
//! `arn:aws:scheduler:::aws-sdk:sqs:sendMessage` (the input is a SendMessage
//! request: `QueueUrl`, `MessageBody`, optional `DelaySeconds`).
//! Expressions understood: `at(yyyy-mm-ddThh:mm:ss)` in UTC, and the
//! `cron(...)` expressions Courier writes, in their `ScheduleExpressionTimezone`
//! (a recurring schedule fires for each occurrence after the bridge first saw
//! it, at most once per occurrence).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_scheduler::types::{ActionAfterCompletion, ScheduleState};
use time::OffsetDateTime;
use time::macros::format_description;

use courier::schedules;
pub use courier::schedules::SQS_SEND_MESSAGE_TARGET;

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
    /// Per schedule: the last occurrence fired (or, for a recurring schedule
    /// just seen, the moment it was first seen).
    fired: HashMap<String, OffsetDateTime>,
}

/// The occurrence of a schedule due at or before `now` and after `since`, if any.
/// Cron occurrences are the domain's, so the bridge fires what Scheduler fires
/// across daylight-saving changes (a gap time skipped, a repeated time once).
pub fn due_firing(
    expression: &str,
    timezone: Option<&str>,
    since: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    if expression.starts_with("cron(") {
        let cron = schedules::cron_from_expression(expression, timezone)?;
        let since = since?;
        let next = cron.next_after(ms(since))?;
        if next > ms(now) {
            return None;
        }
        // The latest occurrence not after now (missed ones collapse into one).
        let mut latest = next;
        while let Some(n) = cron.next_after(latest).filter(|n| *n <= ms(now)) {
            latest = n;
        }
        return OffsetDateTime::from_unix_timestamp_nanos(i128::from(latest) * 1_000_000).ok();
    }
    let at = schedules::at_from_expression(expression)?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000).ok()?;
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
            let expression = s.schedule_expression().unwrap_or_default();
            if expression.starts_with("cron(") && !self.fired.contains_key(&name) {
                // First sight of a recurring schedule: its occurrences from now on fire.
                self.fired.insert(name.clone(), now);
                continue;
            }
            let since = self.fired.get(&name).copied();
            let Some(when) = due_firing(expression, s.schedule_expression_timezone(), since, now) else { continue };
            if since == Some(when) {
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
        .replace(schedules::SCHEDULED_TIME_PLACEHOLDER, &time)
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
        assert_eq!(due_firing(e, None, None, datetime!(2026-01-02 03:04:04 UTC)), None);
        assert_eq!(
            due_firing(e, None, None, datetime!(2026-01-02 03:04:05 UTC)),
            Some(datetime!(2026-01-02 03:04:05 UTC))
        );
        assert_eq!(due_firing("rate(5 minutes)", None, None, datetime!(2026-01-02 03:04:05 UTC)), None);
    }

    #[test]
    fn a_cron_expression_fires_each_occurrence_after_it_was_seen_in_its_zone() {
        // 10:00 in Shanghai is 02:00 UTC.
        let e = "cron(0 10 * * ? *)";
        let seen = datetime!(2026-01-02 01:00:00 UTC);
        assert_eq!(due_firing(e, Some("Asia/Shanghai"), Some(seen), datetime!(2026-01-02 01:59:59 UTC)), None);
        assert_eq!(
            due_firing(e, Some("Asia/Shanghai"), Some(seen), datetime!(2026-01-02 02:00:03 UTC)),
            Some(datetime!(2026-01-02 02:00:00 UTC))
        );
        // Once fired, the same occurrence is not due again.
        let fired = datetime!(2026-01-02 02:00:00 UTC);
        assert_eq!(due_firing(e, Some("Asia/Shanghai"), Some(fired), datetime!(2026-01-02 02:00:30 UTC)), None);
        assert_eq!(due_firing(e, Some("Asia/Shanghai"), None, datetime!(2026-01-02 02:00:30 UTC)), None);
    }

    #[test]
    fn a_cron_firing_follows_the_scheduler_across_daylight_saving_changes() {
        let e = "cron(30 2 * * ? *)";
        let berlin = Some("Europe/Berlin");
        // 2026-03-29 02:30 does not exist in Berlin: nothing fires that night.
        let seen = datetime!(2026-03-28 12:00:00 UTC);
        assert_eq!(due_firing(e, berlin, Some(seen), datetime!(2026-03-29 02:00:00 UTC)), None);
        // 2026-10-25 02:30 happens twice: it fires at the first, not again at the second.
        let seen = datetime!(2026-10-24 12:00:00 UTC);
        let first = datetime!(2026-10-25 00:30:00 UTC);
        assert_eq!(due_firing(e, berlin, Some(seen), datetime!(2026-10-25 00:30:05 UTC)), Some(first));
        assert_eq!(due_firing(e, berlin, Some(first), datetime!(2026-10-25 01:30:05 UTC)), None);
    }

    #[test]
    fn placeholders_are_substituted() {
        let s = substitute(r#"{"t":"<aws.scheduler.scheduled-time>"}"#, datetime!(2026-01-02 03:04:05 UTC), "arn");
        assert_eq!(s, r#"{"t":"2026-01-02T03:04:05Z"}"#);
    }
}
