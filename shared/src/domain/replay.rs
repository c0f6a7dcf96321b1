//! Replay by filter: re-queue many failed tasks at a bounded rate, resumably.
//! A replay is a small document that a chain of queue messages advances one
//! page (one second's worth at its rate) at a time.

use serde::{Deserialize, Serialize};

use super::{EpochMillis, ReplayId, TaskStatus, TenantId};

/// Which response status codes a replay selects by (the failed attempt's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum CodeMatch {
    Exact(u16),
    /// `5` for `5xx`.
    Class(u16),
}

impl CodeMatch {
    /// Parses `503` or `5xx`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(class) = s.strip_suffix("xx") {
            return class.parse::<u16>().ok().filter(|c| (1..=5).contains(c)).map(Self::Class);
        }
        s.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).map(Self::Exact)
    }

    pub fn matches(self, status: Option<u16>) -> bool {
        match (self, status) {
            (Self::Exact(c), Some(s)) => c == s,
            (Self::Class(c), Some(s)) => s / 100 == c,
            (_, None) => false,
        }
    }
}

/// What a replay selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFilter {
    pub status: TaskStatus,
    pub host: Option<String>,
    pub created_after: Option<EpochMillis>,
    pub created_before: Option<EpochMillis>,
    pub code: Option<CodeMatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStatus {
    Running,
    Done,
    Cancelled,
}

/// A replay and its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    pub id: ReplayId,
    pub tenant: TenantId,
    pub filter: ReplayFilter,
    /// Tasks re-queued per second, at most.
    pub rate: u32,
    pub status: ReplayStatus,
    /// Where the next page starts (a listing cursor).
    pub cursor: Option<String>,
    pub replayed: u64,
    /// Selected but no longer failed when their turn came.
    pub skipped: u64,
    pub errored: u64,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
    /// Optimistic-concurrency version of this document.
    pub version: u64,
    /// Which chain of page messages is current: a resume starts a new one, so
    /// a message of the old chain still in the queue does nothing.
    #[serde(default)]
    pub chain: u64,
    /// Pages done: the page the next message must name. Advanced by the
    /// conditional save of each page, so one delivery of a page advances it.
    #[serde(default)]
    pub page: u64,
}

impl ReplayFilter {
    /// Every failed task of the tenant: no host, time or code condition.
    pub fn all_failed() -> Self {
        Self { status: TaskStatus::Failed, host: None, created_after: None, created_before: None, code: None }
    }
}

impl Replay {
    /// A new replay of `tenant`'s tasks matching `filter`, running from the
    /// first page at `rate` tasks a second.
    pub fn start(id: ReplayId, tenant: TenantId, filter: ReplayFilter, rate: u32, now: EpochMillis) -> Self {
        Self {
            id,
            tenant,
            filter,
            rate,
            status: ReplayStatus::Running,
            cursor: None,
            replayed: 0,
            skipped: 0,
            errored: 0,
            created_at: now,
            updated_at: now,
            version: 1,
            chain: 0,
            page: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_exactly_or_by_class() {
        assert_eq!(CodeMatch::parse("5xx"), Some(CodeMatch::Class(5)));
        assert_eq!(CodeMatch::parse("503"), Some(CodeMatch::Exact(503)));
        assert_eq!(CodeMatch::parse("9xx"), None);
        assert_eq!(CodeMatch::parse("abc"), None);
        assert!(CodeMatch::Class(5).matches(Some(503)));
        assert!(!CodeMatch::Class(5).matches(Some(404)));
        assert!(CodeMatch::Exact(404).matches(Some(404)));
        assert!(!CodeMatch::Exact(404).matches(None));
    }
}
