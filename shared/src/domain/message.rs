//! The delivery queue's message body: versioned, so a sender can read
//! messages written by an older API during a deploy.

use serde::{Deserialize, Serialize};

use super::TaskId;

/// One message on the delivery queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum QueueMessage {
    /// Deliver the task now (its state says which attempt this is).
    #[serde(rename = "deliver.v1")]
    DeliverV1 { task_id: String },
}

impl QueueMessage {
    pub fn deliver(id: &TaskId) -> Self {
        Self::DeliverV1 { task_id: id.as_str().to_owned() }
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
        assert_eq!(QueueMessage::from_body(&body), Some(QueueMessage::deliver(&id)));
        assert_eq!(QueueMessage::from_body("not json"), None);
        assert_eq!(QueueMessage::from_body(r#"{"type":"deliver.v9","task_id":"x"}"#), None);
    }
}
