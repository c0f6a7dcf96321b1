//! The EventBridge Scheduler adapter of [`Scheduler`]: one schedule per
//! far-future or cron task, named by the task id, in Courier's group.
//!
//! One-time schedules use the universal `sqs:sendMessage` target so that the
//! final stretch before the due time is an SQS `DelaySeconds`; recurring ones
//! use the templated SQS target with the run's scheduled time in the input.

use std::time::Duration;

use aws_sdk_scheduler::Client;
use aws_sdk_scheduler::types::{
    ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target,
};

use crate::domain::{CronSchedule, EpochMillis, QueueMessage};
use crate::ports::{ScheduleError, Scheduler};

/// The universal target that calls SQS SendMessage with the input as its request.
pub const SQS_SEND_MESSAGE_TARGET: &str = "arn:aws:scheduler:::aws-sdk:sqs:sendMessage";

/// Schedules in one group, targeting one queue.
#[derive(Clone, Debug)]
pub struct EventBridgeScheduler {
    client: Client,
    group: String,
    role_arn: String,
    queue_url: String,
    queue_arn: String,
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> ScheduleError {
    ScheduleError(Box::new(e))
}

/// `at(yyyy-mm-ddThh:mm:ss)` in UTC.
pub fn at_expression(ms: EpochMillis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    format!("at({})", t.format(&f).unwrap_or_default())
}

/// The universal target's input: a SendMessage request.
pub fn send_message_input(queue_url: &str, msg: &QueueMessage, delay: Duration) -> String {
    serde_json::json!({"QueueUrl": queue_url, "MessageBody": msg.to_body(), "DelaySeconds": delay.as_secs()})
        .to_string()
}

impl EventBridgeScheduler {
    pub fn new(
        client: Client,
        group: impl Into<String>,
        role_arn: impl Into<String>,
        queue_url: impl Into<String>,
        queue_arn: impl Into<String>,
    ) -> Self {
        Self {
            client,
            group: group.into(),
            role_arn: role_arn.into(),
            queue_url: queue_url.into(),
            queue_arn: queue_arn.into(),
        }
    }

    fn window() -> Result<FlexibleTimeWindow, ScheduleError> {
        FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().map_err(err)
    }

    fn cron_target(&self, msg: &QueueMessage) -> Result<Target, ScheduleError> {
        Target::builder().arn(&self.queue_arn).role_arn(&self.role_arn).input(msg.to_body()).build().map_err(err)
    }
}

impl Scheduler for EventBridgeScheduler {
    async fn create_at(
        &self,
        name: &str,
        fire_at: EpochMillis,
        msg: &QueueMessage,
        delay: Duration,
    ) -> Result<(), ScheduleError> {
        let target = Target::builder()
            .arn(SQS_SEND_MESSAGE_TARGET)
            .role_arn(&self.role_arn)
            .input(send_message_input(&self.queue_url, msg, delay))
            .build()
            .map_err(err)?;
        self.client
            .create_schedule()
            .group_name(&self.group)
            .name(name)
            .schedule_expression(at_expression(fire_at))
            .schedule_expression_timezone("UTC")
            .flexible_time_window(Self::window()?)
            .action_after_completion(ActionAfterCompletion::Delete)
            .target(target)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn create_cron(&self, name: &str, cron: &CronSchedule, msg: &QueueMessage) -> Result<(), ScheduleError> {
        self.client
            .create_schedule()
            .group_name(&self.group)
            .name(name)
            .schedule_expression(cron.aws_expression())
            .schedule_expression_timezone(&cron.timezone)
            .flexible_time_window(Self::window()?)
            .target(self.cron_target(msg)?)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), ScheduleError> {
        match self.client.delete_schedule().group_name(&self.group).name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn set_enabled(
        &self,
        name: &str,
        cron: &CronSchedule,
        msg: &QueueMessage,
        enabled: bool,
    ) -> Result<(), ScheduleError> {
        // UpdateSchedule replaces the whole schedule: restate it with the new state.
        self.client
            .update_schedule()
            .group_name(&self.group)
            .name(name)
            .schedule_expression(cron.aws_expression())
            .schedule_expression_timezone(&cron.timezone)
            .flexible_time_window(Self::window()?)
            .target(self.cron_target(msg)?)
            .state(if enabled { ScheduleState::Enabled } else { ScheduleState::Disabled })
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_expressions_are_utc_seconds() {
        assert_eq!(at_expression(1_795_312_800_999), "at(2026-11-22T02:00:00)");
    }

    #[test]
    fn the_send_message_input_carries_the_delay() {
        let id = crate::domain::TaskId::generate();
        let input = send_message_input("http://q", &QueueMessage::deliver(&id), Duration::from_secs(55));
        let v: serde_json::Value = serde_json::from_str(&input).expect("JSON");
        assert_eq!(v["QueueUrl"], "http://q");
        assert_eq!(v["DelaySeconds"], 55);
        assert_eq!(QueueMessage::from_body(v["MessageBody"].as_str().expect("body")), Some(QueueMessage::deliver(&id)));
    }
}
