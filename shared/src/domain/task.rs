//! A task's mutable state, kept small because every status change rewrites
//! it, and its attempts, appended once each.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, Outcome, RequestSpec, RetryPolicy, Schedule, TaskId, TenantId};

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Scheduled,
    Pending,
    Sending,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    /// A cron task that fires on schedule.
    Active,
    /// A cron task whose schedule is disabled.
    Paused,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 9] = [
        Self::Scheduled,
        Self::Pending,
        Self::Sending,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Active,
        Self::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Whether a task sends once or recurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Once,
    Cron,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Cron => "cron",
        }
    }
}

/// A validated task about to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub tenant: TenantId,
    pub spec: RequestSpec,
    pub retry: RetryPolicy,
    pub schedule: Schedule,
    pub business_id: Option<String>,
    pub created_at: EpochMillis,
    /// The first run (for cron: the first firing).
    pub due_at: EpochMillis,
    /// Whether the API hands it to Scheduler (a cron task, or one due
    /// further ahead than the queue can wait), under a schedule named by its id.
    pub on_scheduler: bool,
    /// Whether the API took its active-task slot itself (a strict reservation,
    /// near the tenant's quota); otherwise the stream counter counts it.
    pub slot_taken: bool,
}

impl NewTask {
    /// The flow keys its deliveries carry.
    pub fn flow_ref(&self) -> super::FlowRef {
        self.spec.flow_ref(&self.tenant)
    }

    pub fn kind(&self) -> TaskKind {
        if matches!(self.schedule, Schedule::Cron(_)) { TaskKind::Cron } else { TaskKind::Once }
    }

    /// The state a new task starts with.
    pub fn initial_state(&self) -> TaskState {
        TaskState {
            id: self.id.clone(),
            run: None,
            kind: self.kind(),
            tenant: self.tenant.clone(),
            business_id: self.business_id.clone(),
            status: self.initial_status(),
            attempts: 0,
            max_attempts: self.retry.max_attempts(),
            retry_base: 0,
            timeout_ms: self.spec.timeout_ms,
            created_at: self.created_at,
            updated_at: self.created_at,
            due_at: Some(self.due_at),
            lease_until: None,
            host: self.spec.url.host().to_owned(),
            request_line: Some(self.spec.request_line()),
            failure_reason: None,
            last_status: None,
            scheduler: if self.on_scheduler {
                SchedulerHold::Schedule(self.id.as_str().to_owned())
            } else {
                SchedulerHold::Nothing
            },
        }
    }

    /// The status a new task starts in.
    pub fn initial_status(&self) -> TaskStatus {
        match self.schedule {
            Schedule::Cron(_) => TaskStatus::Active,
            Schedule::At { .. } => TaskStatus::Scheduled,
            Schedule::Now => TaskStatus::Pending,
        }
    }
}

/// The mutable part of a task, or of one run of a cron task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskState {
    pub id: TaskId,
    /// For a cron run: its scheduled time (the run's identity).
    pub run: Option<EpochMillis>,
    pub kind: TaskKind,
    pub tenant: TenantId,
    pub business_id: Option<String>,
    pub status: TaskStatus,
    /// Attempts started so far (the one in flight included).
    pub attempts: u32,
    pub max_attempts: u32,
    /// Attempts before the last manual retry: the retry policy counts from here.
    pub retry_base: u32,
    /// The request timeout, which bounds the claim's lease.
    pub timeout_ms: u64,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
    /// When the next attempt is due (absent once final).
    pub due_at: Option<EpochMillis>,
    /// While `sending`: until when the claiming sender owns the task.
    pub lease_until: Option<EpochMillis>,
    pub host: String,
    /// `METHOD url` of the task's request, for listings (see
    /// [`RequestSpec::request_line`]); `None` where it was not stored.
    pub request_line: Option<String>,
    /// Why the task failed, once it has.
    pub failure_reason: Option<String>,
    /// The status code of the last failed attempt, if it got a response.
    pub last_status: Option<u16>,
    /// Which Scheduler schedule holds the task, as recorded when it was handed over.
    pub scheduler: SchedulerHold,
}

/// Whether a task waits in EventBridge Scheduler: recorded on the task's
/// state when the API (or the sender, for a retry wait the queue cannot
/// hold) hands it over, so a cancel knows which schedule to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchedulerHold {
    /// Stored before this was recorded: the caller derives it (see cancel).
    Unrecorded,
    /// No schedule was made for the task.
    Nothing,
    /// The schedule of this name fires the task.
    Schedule(String),
}

impl TaskState {
    /// The status as shown: a scheduled task whose time has come is pending.
    pub fn effective_status(&self, now: EpochMillis) -> TaskStatus {
        match (self.status, self.due_at) {
            (TaskStatus::Scheduled, Some(due)) if due <= now => TaskStatus::Pending,
            (s, _) => s,
        }
    }

    /// The attempts a new retry round (a manual retry or a replay) grants:
    /// the retry policy's count, which the state holds as what lies beyond
    /// the current round's base. Never zero, so a retried task gets a send.
    pub fn round_attempts(&self) -> u32 {
        self.max_attempts.saturating_sub(self.retry_base).max(1)
    }
}

/// One attempt to send a task's request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// For a cron run: its scheduled time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<EpochMillis>,
    pub number: u32,
    pub started_at: EpochMillis,
    /// The request as sent: method, URL, headers (secrets masked), body size.
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub request_headers: Vec<(String, String)>,
    #[serde(default)]
    pub request_body_size: usize,
    /// The response headers (secrets masked), when there was a response.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub outcome: Outcome,
    /// The response body, truncated to the configured limit.
    pub response_body: Option<String>,
    pub error: Option<String>,
    /// The wait chosen before the next attempt, when one follows.
    pub next_delay_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_know_when_they_are_final() {
        for s in [TaskStatus::Pending, TaskStatus::Sending, TaskStatus::Retrying, TaskStatus::Succeeded] {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        assert!(TaskStatus::Succeeded.is_final());
        assert!(TaskStatus::Cancelled.is_final());
        assert!(!TaskStatus::Retrying.is_final());
        assert_eq!(TaskStatus::parse("done"), None);
    }

    fn state(attempts: u32, max_attempts: u32, retry_base: u32) -> TaskState {
        TaskState {
            id: crate::domain::TaskId::generate(),
            run: None,
            kind: TaskKind::Once,
            tenant: TenantId::generate(),
            business_id: None,
            status: TaskStatus::Failed,
            attempts,
            max_attempts,
            retry_base,
            timeout_ms: 10_000,
            created_at: 0,
            updated_at: 0,
            due_at: None,
            lease_until: None,
            scheduler: SchedulerHold::Nothing,
            host: "example.invalid".into(),
            request_line: None,
            failure_reason: None,
            last_status: None,
        }
    }

    #[test]
    fn a_retry_round_grants_the_policys_attempts_whatever_came_before() {
        // A first round of a 5-attempt policy.
        assert_eq!(state(0, 5, 0).round_attempts(), 5);
        // Retried after those 5: base 5, 5 more.
        assert_eq!(state(5, 10, 5).round_attempts(), 5);
        // A state that holds no budget beyond its base still gets one send.
        assert_eq!(state(5, 5, 5).round_attempts(), 1);
    }
}
