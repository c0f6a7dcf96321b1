//! The delivery queue's message body: versioned, so a sender can read
//! messages written by an older API during a deploy.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, TaskId};

/// One message on the delivery queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum QueueMessage {
    /// Deliver the task (or, with `run`, one run of a cron task) now.
    #[serde(rename = "deliver.v1")]
    DeliverV1 {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<EpochMillis>,
    },
    /// A cron firing from the Scheduler: `scheduled_time` (RFC 3339, filled in
    /// by the Scheduler on each firing) is the run's identity.
    #[serde(rename = "cron.v1")]
    CronV1 { task_id: String, scheduled_time: String },
    /// Advance a replay by page `page` of chain `chain`: a message whose page is
    /// not the replay's current page (a duplicate delivery) does nothing.
    #[serde(rename = "replay.v1")]
    ReplayV1 {
        replay_id: String,
        #[serde(default)]
        chain: u64,
        #[serde(default)]
        page: u64,
    },
}

impl QueueMessage {
    pub fn deliver(id: &TaskId) -> Self {
        Self::DeliverV1 { task_id: id.as_str().to_owned(), run: None }
    }

    /// A cron firing's run: its scheduled time (Scheduler's RFC 3339) in epoch ms.
    pub fn scheduled_run(scheduled_time: &str) -> Result<EpochMillis, String> {
        super::parse_rfc3339(scheduled_time).ok_or_else(|| format!("scheduled_time `{scheduled_time}` is not RFC 3339"))
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_body(body: &str) -> Option<Self> {
        serde_json::from_str(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_versioned_body() {
        let id = TaskId::generate();
        let body = QueueMessage::deliver(&id).to_body();
        assert!(body.contains(r#""type":"deliver.v1""#));
        assert!(!body.contains("run"));
        assert_eq!(QueueMessage::from_body(&body), Some(QueueMessage::deliver(&id)));
        assert_eq!(QueueMessage::from_body("not json"), None);
        assert_eq!(QueueMessage::from_body(r#"{"type":"deliver.v9","task_id":"x"}"#), None);
    }

    #[test]
    fn a_cron_firing_names_its_run_by_the_scheduled_time() {
        let m = QueueMessage::from_body(r#"{"type":"cron.v1","task_id":"t","scheduled_time":"2026-11-22T02:00:00Z"}"#)
            .expect("parses");
        let QueueMessage::CronV1 { scheduled_time, .. } = m else { panic!("a cron firing") };
        assert_eq!(QueueMessage::scheduled_run(&scheduled_time), Ok(1_795_312_800_000));
        assert!(QueueMessage::scheduled_run("yesterday").is_err());
    }
}
