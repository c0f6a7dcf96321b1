//! A task's mutable state, kept small because every status change rewrites
//! it, and its attempts, appended once each.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, Outcome, RequestSpec, RetryPolicy, TaskId};

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Scheduled,
    Pending,
    Sending,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A validated task about to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub tenant: String,
    pub spec: RequestSpec,
    pub retry: RetryPolicy,
    pub created_at: EpochMillis,
    pub due_at: EpochMillis,
}

/// The mutable part of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskState {
    pub id: TaskId,
    pub tenant: String,
    pub status: TaskStatus,
    /// Attempts started so far (the one in flight included).
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
    /// When the next attempt is due (absent once final).
    pub due_at: Option<EpochMillis>,
    /// While `sending`: until when the claiming sender owns the task.
    pub lease_until: Option<EpochMillis>,
    pub host: String,
    /// Why the task failed, once it has.
    pub failure_reason: Option<String>,
}

/// One attempt to send a task's request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: EpochMillis,
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
}
