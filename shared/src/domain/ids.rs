//! Prefixed, time-ordered identifiers (`tsk_…`), so an id says what it names
//! and sorts by creation time.

use std::fmt;

/// A task identifier: `tsk_` followed by a UUIDv7 in 32 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

/// The text is not a well-formed Courier id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a task id (expected tsk_ followed by 32 hex digits)")]
pub struct InvalidId(pub String);

impl TaskId {
    const PREFIX: &'static str = "tsk_";

    /// A new id, ordered after every id created earlier by this process.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id received from outside (a path segment, a queue message).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let hex = s.strip_prefix(Self::PREFIX).ok_or_else(|| InvalidId(s.to_owned()))?;
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_sort_by_creation() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_eq!(TaskId::parse(a.as_str()), Ok(a.clone()));
        assert!(a < b);
    }

    #[test]
    fn rejects_foreign_or_malformed_ids() {
        for bad in
            ["", "tsk_", "msg_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3", "tsk_XYZ", "tsk_0190A0B1C2D3E4F5A6B7C8D9E0F1A2B3"]
        {
            assert!(TaskId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
