//! Lifecycle events and per-task callbacks as values.
//!
//! A task's lifecycle events (`task.created`, `task.succeeded`, `task.failed`,
//! `task.cancelled`, and `run.succeeded`/`run.failed` for a cron task's runs)
//! are read off the table's stream by the stream consumer ([`crate::counter`])
//! and published to EventBridge for the tenants that opted in to that type.
//! A task's callbacks (`on_success`, `on_failure`) are tasks of their own that
//! the stream consumer creates when the task ends that way.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{EpochMillis, TargetUrl, TaskId, TaskStatus, TenantId, format_millis};

/// The event types a tenant can opt in to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    TaskCreated,
    TaskSucceeded,
    TaskFailed,
    TaskCancelled,
    RunSucceeded,
    RunFailed,
    FlowBreakerOpened,
    FlowBreakerClosed,
}

impl EventType {
    pub const ALL: [Self; 8] = [
        Self::TaskCreated,
        Self::TaskSucceeded,
        Self::TaskFailed,
        Self::TaskCancelled,
        Self::RunSucceeded,
        Self::RunFailed,
        Self::FlowBreakerOpened,
        Self::FlowBreakerClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCreated => "task.created",
            Self::TaskSucceeded => "task.succeeded",
            Self::TaskFailed => "task.failed",
            Self::TaskCancelled => "task.cancelled",
            Self::RunSucceeded => "run.succeeded",
            Self::RunFailed => "run.failed",
            Self::FlowBreakerOpened => "flow.breaker_opened",
            Self::FlowBreakerClosed => "flow.breaker_closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event a change of a task's (or a run's) status is, if any.
    pub fn of_change(run: bool, old: Option<TaskStatus>, new: TaskStatus) -> Option<Self> {
        if old == Some(new) {
            return None;
        }
        match (run, old, new) {
            (false, None, _) => Some(Self::TaskCreated),
            (false, _, TaskStatus::Succeeded) => Some(Self::TaskSucceeded),
            (false, _, TaskStatus::Failed) => Some(Self::TaskFailed),
            (false, _, TaskStatus::Cancelled) => Some(Self::TaskCancelled),
            (true, _, TaskStatus::Succeeded) => Some(Self::RunSucceeded),
            (true, _, TaskStatus::Failed) => Some(Self::RunFailed),
            _ => None,
        }
    }
}

/// One lifecycle event: what EventBridge gets as `detail`, with the type as
/// `detail-type` and `courier` as `source`.
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleEvent {
    pub kind: EventType,
    pub tenant: TenantId,
    pub task_id: TaskId,
    /// A cron run's scheduled time.
    pub run: Option<EpochMillis>,
    pub business_id: Option<String>,
    pub status: TaskStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub reason: Option<String>,
    /// When the change happened (the task's `updated_at`).
    pub at: EpochMillis,
}

impl LifecycleEvent {
    /// A stable id (the same for a change published twice after a retried
    /// stream batch): receivers dedupe by it.
    pub fn id(&self) -> String {
        let run = self.run.map_or(String::new(), |r| format!("/{r}"));
        format!("{}{run}/{}/{}", self.task_id, self.kind.as_str(), self.at)
    }

    pub fn detail(&self) -> Value {
        json!({
            "id": self.id(),
            "type": self.kind.as_str(),
            "tenant": self.tenant.as_str(),
            "task_id": self.task_id.as_str(),
            "run": self.run.map(format_millis),
            "business_id": self.business_id,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "reason": self.reason,
            "time": format_millis(self.at),
        })
    }
}

/// What EventBridge gets: the type (`detail-type`), the `detail`, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct BusEvent {
    pub kind: EventType,
    pub detail: Value,
    pub at: EpochMillis,
}

impl From<&LifecycleEvent> for BusEvent {
    fn from(e: &LifecycleEvent) -> Self {
        Self { kind: e.kind, detail: e.detail(), at: e.at }
    }
}

/// A flow key's circuit breaker opened (or opened again after a failed
/// probe) or closed: from the key's history entry.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerEvent {
    pub kind: EventType,
    /// The flow key (`h:host:port`, `n:<tenant>:<name>`, `t:<tenant>`).
    pub key: String,
    /// The tenant owning the key; none for a host key (shared by all tenants).
    pub owner: Option<TenantId>,
    pub reason: String,
    /// Until when it stays open.
    pub until: Option<EpochMillis>,
    pub at: EpochMillis,
}

impl BreakerEvent {
    /// The event a history entry (`to`: the breaker's new position) is, if any.
    pub fn of_history(key: &str, to: &str, reason: &str, until: Option<EpochMillis>, at: EpochMillis) -> Option<Self> {
        let kind = match to {
            "open" => EventType::FlowBreakerOpened,
            "closed" => EventType::FlowBreakerClosed,
            _ => return None,
        };
        let owner = key
            .strip_prefix("n:")
            .and_then(|rest| rest.split_once(':').map(|(t, _)| t))
            .or_else(|| key.strip_prefix("t:"))
            .and_then(|t| TenantId::parse(t).ok());
        Some(Self { kind, key: key.to_owned(), owner, reason: reason.to_owned(), until, at })
    }

    pub fn to_bus(&self) -> BusEvent {
        let detail = json!({
            "id": format!("{}/{}/{}", self.key, self.kind.as_str(), self.at),
            "type": self.kind.as_str(),
            "tenant": self.owner.as_ref().map(TenantId::as_str),
            "key": self.key,
            "reason": self.reason,
            "until": self.until.map(format_millis),
            "time": format_millis(self.at),
        });
        BusEvent { kind: self.kind, detail, at: self.at }
    }
}

/// Where a task's outcome is reported, each as a task of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callbacks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<TargetUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<TargetUrl>,
}

impl Callbacks {
    pub fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_failure.is_none()
    }
}

/// Which callback: its business id's last part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    Success,
    Failure,
}

impl CallbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "on_success",
            Self::Failure => "on_failure",
        }
    }

    /// The business id of `parent`'s callback task: it names the task
    /// ([`TaskId::derive`]), so a retried stream batch cannot make two.
    pub fn business_id(self, parent: &TaskId) -> String {
        format!("callback:{parent}:{}", self.as_str())
    }

    pub fn task_id(self, tenant: &TenantId, parent: &TaskId) -> TaskId {
        TaskId::derive(tenant, &self.business_id(parent))
    }

    /// The parent and kind a callback task's business id names.
    pub fn parse_business_id(b: &str) -> Option<(TaskId, Self)> {
        let rest = b.strip_prefix("callback:")?;
        let (parent, kind) = rest.rsplit_once(':')?;
        let kind = match kind {
            "on_success" => Self::Success,
            "on_failure" => Self::Failure,
            _ => return None,
        };
        Some((TaskId::parse(parent).ok()?, kind))
    }
}

/// The JSON notice a callback task delivers.
pub fn callback_notice(kind: CallbackKind, event: &LifecycleEvent) -> Value {
    let mut v = event.detail();
    v["callback"] = json!(kind.as_str());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_events_once() {
        use TaskStatus::*;
        assert_eq!(EventType::of_change(false, None, Pending), Some(EventType::TaskCreated));
        assert_eq!(EventType::of_change(false, Some(Sending), Succeeded), Some(EventType::TaskSucceeded));
        assert_eq!(EventType::of_change(false, Some(Sending), Retrying), None);
        assert_eq!(EventType::of_change(false, Some(Failed), Failed), None);
        assert_eq!(EventType::of_change(true, Some(Sending), Failed), Some(EventType::RunFailed));
        assert_eq!(EventType::of_change(true, None, Pending), None, "a run starting is no event");
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn a_breaker_history_entry_is_an_event_of_the_keys_owner() {
        let t = TenantId::generate();
        let named =
            BreakerEvent::of_history(&format!("n:{t}:orders"), "open", "7 of 10 failed", Some(5), 1).expect("opened");
        assert_eq!((named.kind, named.owner.as_ref()), (EventType::FlowBreakerOpened, Some(&t)));
        let host = BreakerEvent::of_history("h:api.example.invalid:443", "closed", "probes succeeded", None, 2)
            .expect("closed");
        assert_eq!((host.kind, host.owner), (EventType::FlowBreakerClosed, None));
        assert!(BreakerEvent::of_history("h:x.invalid:443", "half_open", "", None, 3).is_none());
        let d = named.to_bus().detail;
        assert_eq!(
            (d["tenant"].as_str(), d["key"].as_str()),
            (Some(t.as_str()), Some(format!("n:{t}:orders").as_str()))
        );
    }

    #[test]
    fn a_callback_task_is_named_by_its_parent_and_kind() {
        let tenant = TenantId::generate();
        let parent = TaskId::generate();
        let b = CallbackKind::Failure.business_id(&parent);
        assert!(crate::domain::parse_business_id(&b).is_ok(), "{b} is a valid business id");
        assert_eq!(CallbackKind::parse_business_id(&b), Some((parent.clone(), CallbackKind::Failure)));
        assert_ne!(CallbackKind::Success.task_id(&tenant, &parent), CallbackKind::Failure.task_id(&tenant, &parent));
        assert_eq!(CallbackKind::parse_business_id("order-1"), None);
    }
}
