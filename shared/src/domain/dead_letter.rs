//! What the sender parks on the dead-letter queue, as one typed, versioned
//! document (like [`super::QueueMessage`]): the sender writes it, the API and
//! the CLI read it back to show and redrive it. The JSON is the one written
//! before it was typed, so documents already parked stay readable.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, TaskId, TenantId, format_millis, parse_rfc3339};

/// One document on the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DeadLetter {
    /// A task (or one run of a cron task) failed for good. The task and its
    /// tenant are known once the task was claimed; `run` is the run's
    /// scheduled time (RFC 3339), so a redrive retries that run.
    #[serde(rename = "task.failed.v1")]
    TaskFailedV1 {
        #[serde(default)]
        task_id: Option<TaskId>,
        #[serde(default, with = "rfc3339_opt")]
        run: Option<EpochMillis>,
        #[serde(default)]
        tenant: Option<TenantId>,
        reason: String,
    },
    /// A message that names no task Courier can deliver, kept with its body
    /// for a person to read.
    #[serde(rename = "poison.v1")]
    PoisonV1 { reason: String, body: String },
}

impl DeadLetter {
    /// The document of a task that failed for good.
    pub fn failed(task: Option<(&TaskId, Option<EpochMillis>, &TenantId)>, reason: &str) -> Self {
        Self::TaskFailedV1 {
            task_id: task.map(|(t, _, _)| t.clone()),
            run: task.and_then(|(_, r, _)| r),
            tenant: task.map(|(_, _, t)| t.clone()),
            reason: reason.to_owned(),
        }
    }

    /// The document of a message that names no task.
    pub fn poison(reason: &str, body: &str) -> Self {
        Self::PoisonV1 { reason: reason.to_owned(), body: body.to_owned() }
    }

    /// The task a redrive retries (and its run), if there is one.
    pub fn task(&self) -> Option<(&TaskId, Option<EpochMillis>)> {
        match self {
            Self::TaskFailedV1 { task_id: Some(t), run, .. } => Some((t, *run)),
            _ => None,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::TaskFailedV1 { reason, .. } | Self::PoisonV1 { reason, .. } => reason,
        }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a parked document; `None` if it is not one of a known version.
    pub fn from_body(body: &str) -> Option<Self> {
        serde_json::from_str(body).ok()
    }
}

/// A run's time as RFC 3339 text (or null), the form parked documents have always had.
mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::{EpochMillis, format_millis, parse_rfc3339};

    pub fn serialize<S: Serializer>(v: &Option<EpochMillis>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ms) => s.serialize_some(&format_millis(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EpochMillis>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(t) => {
                parse_rfc3339(&t).map(Some).ok_or_else(|| D::Error::custom(format!("run `{t}` is not RFC 3339")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn a_failed_run_round_trips_through_the_json_parked_before_it_was_typed() {
        let task = TaskId::generate();
        let tenant = TenantId::generate();
        let doc = DeadLetter::failed(Some((&task, Some(1_700_000_000_123), &tenant)), "HTTP 410");
        let body = doc.to_body();
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v,
            json!({"type": "task.failed.v1", "task_id": task.as_str(), "run": "2023-11-14T22:13:20.123Z",
                   "tenant": tenant.as_str(), "reason": "HTTP 410"})
        );
        assert_eq!(DeadLetter::from_body(&body), Some(doc.clone()));
        assert_eq!(doc.task(), Some((&task, Some(1_700_000_000_123))));
    }

    #[test]
    fn documents_parked_today_parse() {
        let failed = r#"{"type":"task.failed.v1","task_id":"tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3","run":null,"tenant":"tnt_0123456789abcdef","reason":"attempts exhausted"}"#;
        let doc = DeadLetter::from_body(failed).expect("parses");
        assert_eq!(doc.reason(), "attempts exhausted");
        assert_eq!(doc.task().map(|(t, r)| (t.as_str(), r)), Some(("tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3", None)));
        assert_eq!(DeadLetter::from_body(failed).expect("parses").to_body(), failed);

        let unclaimed = r#"{"type":"task.failed.v1","task_id":null,"run":null,"tenant":null,"reason":"x"}"#;
        assert_eq!(DeadLetter::from_body(unclaimed), Some(DeadLetter::failed(None, "x")));

        let poison = r#"{"type":"poison.v1","reason":"unreadable message body","body":"not json"}"#;
        let doc = DeadLetter::from_body(poison).expect("parses");
        assert_eq!(doc, DeadLetter::poison("unreadable message body", "not json"));
        assert_eq!(doc.task(), None);
        assert_eq!(doc.to_body(), poison);
    }

    #[test]
    fn unknown_versions_and_malformed_documents_are_not_read() {
        assert_eq!(DeadLetter::from_body("not a task"), None);
        assert_eq!(DeadLetter::from_body(r#"{"type":"task.failed.v9","reason":"x"}"#), None);
        assert_eq!(DeadLetter::from_body(r#"{"type":"task.failed.v1","task_id":"x","reason":"x"}"#), None);
        assert_eq!(DeadLetter::from_body(r#"{"type":"task.failed.v1","run":"yesterday","reason":"x"}"#), None);
    }
}
