//! The EventBridge Scheduler adapter of [`Scheduler`]: one schedule per
//! far-future or cron task, named by the task id, in Courier's group.
//!
//! One-time schedules use the universal `sqs:sendMessage` target so that the
//! final stretch before the due time is an SQS `DelaySeconds`; recurring ones
//! use the templated SQS target with the run's scheduled time in the input.
//! Scheduler's expression syntax (`at(...)`, the 6-field `cron(...)`) and its
//! context placeholders are written and read here only (the local Scheduler
//! bridge reads them back through this module).

use std::time::Duration;

use aws_sdk_scheduler::Client;
use aws_sdk_scheduler::types::{
    ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target,
};

use crate::domain::{CronSchedule, EpochMillis, QueueMessage, TaskId};
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

/// Scheduler's context placeholder for the time a firing was scheduled for
/// (RFC 3339, UTC), substituted into the target input on each firing.
pub const SCHEDULED_TIME_PLACEHOLDER: &str = "<aws.scheduler.scheduled-time>";

/// Scheduler's day-of-week names (Scheduler numbers days 1-7 from Sunday, so
/// names avoid a numbering that differs from standard cron's).
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The input of a cron task's schedule: a cron firing whose scheduled time
/// Scheduler fills in.
pub fn cron_message(task: &TaskId) -> QueueMessage {
    QueueMessage::CronV1 {
        task_id: task.clone(),
        scheduled_time: SCHEDULED_TIME_PLACEHOLDER.to_owned(),
        flow: None,
        held: 0,
    }
}

/// The Scheduler expression of a 5-field cron: `cron(min hour dom month dow
/// year)`, day-of-week as names, and `?` in the unrestricted one of
/// day-of-month and day-of-week.
pub fn cron_expression(cron: &CronSchedule) -> String {
    let [minute, hour, dom, month, _] = cron.fields();
    let (dom, dow) = match cron.days_of_week() {
        None => (dom.to_owned(), "?".to_owned()),
        Some(days) => ("?".to_owned(), days.iter().map(|d| DAY_NAMES[*d as usize]).collect::<Vec<_>>().join(",")),
    };
    format!("cron({minute} {hour} {dom} {month} {dow} *)")
}

/// Reads back an expression written by [`cron_expression`], in `timezone`
/// (Scheduler's default is UTC).
pub fn cron_from_expression(expression: &str, timezone: Option<&str>) -> Option<CronSchedule> {
    let inner = expression.strip_prefix("cron(")?.strip_suffix(')')?;
    let f: Vec<&str> = inner.split_whitespace().collect();
    if f.len() != 6 || f[5] != "*" {
        return None;
    }
    let q = |s: &str| if s == "?" { "*".to_owned() } else { s.to_owned() };
    Some(CronSchedule {
        expression: format!("{} {} {} {} {}", f[0], f[1], q(f[2]), f[3], q(f[4])),
        timezone: timezone.unwrap_or("UTC").to_owned(),
    })
}

/// Reads back an expression written by [`at_expression`].
pub fn at_from_expression(expression: &str) -> Option<EpochMillis> {
    let at = expression.strip_prefix("at(")?.strip_suffix(')')?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(at, f).ok()?.assume_utc();
    Some(t.unix_timestamp() * 1000)
}

/// The universal target's input: a SendMessage request.
pub fn send_message_input(queue_url: &str, msg: &QueueMessage, delay: Duration) -> String {
    serde_json::json!({"QueueUrl": queue_url, "MessageBody": msg.to_body(), "DelaySeconds": delay.as_secs()})
        .to_string()
}

impl EventBridgeScheduler {
    /// The deployed schedule group, role and target queue, from `config`.
    pub fn from_config(config: &crate::Config, sdk: &aws_config::SdkConfig) -> Self {
        Self::new(
            aws_sdk_scheduler::Client::new(sdk),
            &config.schedule_group,
            &config.scheduler_role_arn,
            &config.queue_url,
            &config.queue_arn,
        )
    }

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

    fn cron_target(&self, task: &TaskId) -> Result<Target, ScheduleError> {
        let input = cron_message(task).to_body();
        Target::builder().arn(&self.queue_arn).role_arn(&self.role_arn).input(input).build().map_err(err)
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

    async fn create_cron(&self, name: &str, cron: &CronSchedule, task: &TaskId) -> Result<(), ScheduleError> {
        self.client
            .create_schedule()
            .group_name(&self.group)
            .name(name)
            .schedule_expression(cron_expression(cron))
            .schedule_expression_timezone(&cron.timezone)
            .flexible_time_window(Self::window()?)
            .target(self.cron_target(task)?)
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
        task: &TaskId,
        enabled: bool,
    ) -> Result<(), ScheduleError> {
        // UpdateSchedule replaces the whole schedule: restate it with the new state.
        self.client
            .update_schedule()
            .group_name(&self.group)
            .name(name)
            .schedule_expression(cron_expression(cron))
            .schedule_expression_timezone(&cron.timezone)
            .flexible_time_window(Self::window()?)
            .target(self.cron_target(task)?)
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

    fn cron(expression: &str, timezone: &str) -> CronSchedule {
        CronSchedule::parse(expression, timezone, 1_795_312_800_000).expect("valid")
    }

    #[test]
    fn at_expressions_are_utc_seconds() {
        assert_eq!(at_expression(1_795_312_800_999), "at(2026-11-22T02:00:00)");
        assert_eq!(at_from_expression("at(2026-11-22T02:00:00)"), Some(1_795_312_800_000));
        assert_eq!(at_from_expression("rate(5 minutes)"), None);
    }

    #[test]
    fn cron_translates_to_scheduler_syntax_and_back() {
        assert_eq!(cron_expression(&cron("0 10 * * *", "UTC")), "cron(0 10 * * ? *)");
        let weekdays = cron("*/15 9-17 * * 1-5", "Europe/Berlin");
        assert_eq!(cron_expression(&weekdays), "cron(*/15 9-17 ? * MON,TUE,WED,THU,FRI *)");
        assert_eq!(cron_expression(&cron("0 0 * * 0,7", "UTC")), "cron(0 0 ? * SUN *)");
        let back = cron_from_expression(&cron_expression(&weekdays), Some("Europe/Berlin")).expect("parses");
        assert_eq!(back.next_after(1_795_312_800_000), weekdays.next_after(1_795_312_800_000));
        assert_eq!(cron_from_expression("cron(0 10 * * ? 2027)", None), None);
    }

    #[test]
    fn a_cron_schedules_input_asks_scheduler_for_the_firings_time() {
        let id = TaskId::generate();
        let body = cron_message(&id).to_body();
        assert!(body.contains(SCHEDULED_TIME_PLACEHOLDER));
        let QueueMessage::CronV1 { task_id, .. } = QueueMessage::from_body(&body).expect("parses") else {
            panic!("a cron firing")
        };
        assert_eq!(task_id, id);
    }

    #[test]
    fn the_send_message_input_carries_the_delay() {
        let id = crate::domain::TaskId::generate();
        let input = send_message_input("http://q", &QueueMessage::deliver(&id, None), Duration::from_secs(55));
        let v: serde_json::Value = serde_json::from_str(&input).expect("JSON");
        assert_eq!(v["QueueUrl"], "http://q");
        assert_eq!(v["DelaySeconds"], 55);
        assert_eq!(
            QueueMessage::from_body(v["MessageBody"].as_str().expect("body")),
            Some(QueueMessage::deliver(&id, None))
        );
    }
}
