//! The delivery queue's message body: versioned, so a sender can read
//! messages written by an older API during a deploy.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, FlowRef, ReplayId, TaskId};

/// One message on the delivery queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum QueueMessage {
    /// Deliver the task (or, with `run`, one run of a cron task) now.
    #[serde(rename = "deliver.v1")]
    DeliverV1 {
        task_id: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<EpochMillis>,
        /// The flow keys that govern it, so the sender gates it before the
        /// claim (absent in messages written before flow control: the sender
        /// then reads the task's request first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<FlowRef>,
        /// Times flow control held it back (never an attempt).
        #[serde(default, skip_serializing_if = "is_zero")]
        held: u32,
    },
    /// A cron firing from the Scheduler: `scheduled_time` (RFC 3339, filled in
    /// by the Scheduler on each firing) is the run's identity.
    #[serde(rename = "cron.v1")]
    CronV1 {
        task_id: TaskId,
        scheduled_time: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<FlowRef>,
        #[serde(default, skip_serializing_if = "is_zero")]
        held: u32,
    },
    /// Advance a replay by page `page` of chain `chain`: a message whose page is
    /// not the replay's current page (a duplicate delivery) does nothing.
    #[serde(rename = "replay.v1")]
    ReplayV1 {
        replay_id: ReplayId,
        #[serde(default)]
        chain: u64,
        #[serde(default)]
        page: u64,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl QueueMessage {
    /// Deliver a one-off task; `flow`: the keys that govern it (see [`FlowRef::of`]).
    pub fn deliver(id: &TaskId, flow: Option<FlowRef>) -> Self {
        Self::DeliverV1 { task_id: id.clone(), run: None, flow, held: 0 }
    }

    /// Deliver a run of a cron task (or a one-off task with `run: None`).
    pub fn deliver_run(id: &TaskId, run: Option<EpochMillis>, flow: Option<FlowRef>) -> Self {
        Self::DeliverV1 { task_id: id.clone(), run, flow, held: 0 }
    }

    /// The flow keys the message carries.
    pub fn flow(&self) -> Option<&FlowRef> {
        match self {
            Self::DeliverV1 { flow, .. } | Self::CronV1 { flow, .. } => flow.as_ref(),
            Self::ReplayV1 { .. } => None,
        }
    }

    /// The same message held back once more by flow control, with its keys.
    pub fn held_again(&self, keys: FlowRef) -> Self {
        let mut m = self.clone();
        if let Self::DeliverV1 { flow, held, .. } | Self::CronV1 { flow, held, .. } = &mut m {
            *flow = Some(keys);
            *held += 1;
        }
        m
    }

    /// A cron firing's run: its scheduled time (Scheduler's RFC 3339) in epoch ms.
    pub fn scheduled_run(scheduled_time: &str) -> Result<EpochMillis, String> {
        super::parse_rfc3339(scheduled_time).ok_or_else(|| format!("scheduled_time `{scheduled_time}` is not RFC 3339"))
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a body; `None` if it is not a message of a known version or an
    /// id in it is malformed (ids are parsed here, once).
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
        let body = QueueMessage::deliver(&id, None).to_body();
        assert!(body.contains(r#""type":"deliver.v1""#));
        assert!(!body.contains("run"));
        assert_eq!(QueueMessage::from_body(&body), Some(QueueMessage::deliver(&id, None)));
        assert_eq!(QueueMessage::from_body("not json"), None);
        assert_eq!(QueueMessage::from_body(r#"{"type":"deliver.v9","task_id":"x"}"#), None);
    }

    #[test]
    fn a_cron_firing_names_its_run_by_the_scheduled_time() {
        let m = QueueMessage::from_body(
            r#"{"type":"cron.v1","task_id":"tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3","scheduled_time":"2026-11-22T02:00:00Z"}"#,
        )
        .expect("parses");
        let QueueMessage::CronV1 { scheduled_time, .. } = m else { panic!("a cron firing") };
        assert_eq!(QueueMessage::scheduled_run(&scheduled_time), Ok(1_795_312_800_000));
        assert!(QueueMessage::scheduled_run("yesterday").is_err());
    }

    #[test]
    fn messages_written_before_ids_were_typed_read_the_same() {
        let deliver = r#"{"type":"deliver.v1","task_id":"tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3","run":1795312800000}"#;
        let id = TaskId::parse("tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").expect("id");
        assert_eq!(
            QueueMessage::from_body(deliver),
            Some(QueueMessage::DeliverV1 { task_id: id, run: Some(1_795_312_800_000), flow: None, held: 0 })
        );
        assert_eq!(QueueMessage::from_body(deliver).expect("parses").to_body(), deliver);
        let replay = r#"{"type":"replay.v1","replay_id":"rpl_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3"}"#;
        let Some(QueueMessage::ReplayV1 { replay_id, chain: 0, page: 0 }) = QueueMessage::from_body(replay) else {
            panic!("an old replay message without chain and page reads as the first page");
        };
        assert_eq!(replay_id.as_str(), "rpl_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3");
    }

    #[test]
    fn a_message_with_a_malformed_id_is_unreadable() {
        assert_eq!(QueueMessage::from_body(r#"{"type":"deliver.v1","task_id":"x"}"#), None);
        assert_eq!(QueueMessage::from_body(r#"{"type":"cron.v1","task_id":"tsk_","scheduled_time":"x"}"#), None);
        assert_eq!(
            QueueMessage::from_body(r#"{"type":"replay.v1","replay_id":"tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3"}"#),
            None
        );
    }
}
