//! A key's shared runtime state as every sender sees it, the writes that
//! move it, and the pure arithmetic on it (rate slots, adaptive factor).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::{EpochMillis, TenantId};
use super::{FlowKey, FlowPolicy, MIN_FACTOR, PolicyScope};

/// The breaker's position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPosition {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerPosition {
    pub fn code(self) -> &'static str {
        match self {
            Self::Closed => "c",
            Self::Open => "o",
            Self::HalfOpen => "h",
        }
    }

    pub fn from_code(c: &str) -> Self {
        match c {
            "o" => Self::Open,
            "h" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The shared runtime state of one key (its `STATE` item, decoded). Every
/// field is what the store holds; absent attributes read as the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowShared {
    /// Next free rate slot (µs) of the key's own bucket.
    pub next_us: Option<i64>,
    /// Next free rate slot (µs) of each tenant's share, by bucket attribute suffix.
    pub shares: BTreeMap<String, i64>,
    /// Parallelism leases by slot: `expiry_ms * 1000 + nonce`.
    pub leases: BTreeMap<u32, i64>,
    /// Retry-After pause: nothing is sent before this.
    pub paused_until: Option<EpochMillis>,
    /// Adaptive factor applied to the rate (1.0 = the policy's rate).
    pub factor: f64,
    /// When the factor last changed.
    pub factor_at: Option<EpochMillis>,
    /// 429/503 answers since the factor last changed, and the last one's time.
    pub throttles: u32,
    pub throttled_at: Option<EpochMillis>,
    pub breaker: BreakerPosition,
    /// Open: until when. Half-open: the probe's deadline.
    pub breaker_until: Option<EpochMillis>,
    pub breaker_since: Option<EpochMillis>,
    /// Consecutive trips (reset after a long closed stretch).
    pub trips: u32,
    pub probe_token: Option<String>,
    pub closed_at: Option<EpochMillis>,
    /// The fixed breaker window: its start and counts.
    pub window_start: Option<EpochMillis>,
    pub window_requests: u32,
    pub window_failures: u32,
}

impl FlowShared {
    pub fn new() -> Self {
        Self { factor: 1.0, ..Self::default() }
    }

    /// Leases still held at `now`.
    pub fn in_flight(&self, now: EpochMillis) -> usize {
        self.leases.values().filter(|v| **v / 1_000 > now).count()
    }

    /// Slots among `0..parallelism` free at `now`.
    pub fn free_slots(&self, parallelism: u32, now: EpochMillis) -> Vec<u32> {
        (0..parallelism).filter(|i| self.leases.get(i).is_none_or(|v| *v / 1_000 <= now)).collect()
    }

    pub fn next_of(&self, bucket: &BucketId) -> Option<i64> {
        match bucket {
            BucketId::Key => self.next_us,
            BucketId::Share(s) => self.shares.get(s).copied(),
        }
    }
}

/// Which rate bucket of a key's state item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BucketId {
    /// The key's own (admin's, or the named key's) bucket.
    Key,
    /// A tenant's share of a host key (suffix: the tenant id's hex).
    Share(String),
}

impl BucketId {
    pub fn share(tenant: &TenantId) -> Self {
        Self::Share(tenant.as_str().trim_start_matches("tnt_").to_owned())
    }
}

/// How one bucket's reservation is written.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketForm {
    /// The bucket is idle (its next slot is at or before `base`): `next = base + add`,
    /// on condition that it still is.
    Idle { base_us: i64 },
    /// The bucket is busy: `next = next + add`, on condition that
    /// `base < next <= ceiling` (its next slot is within the horizon).
    Busy { base_us: i64, ceiling_us: i64 },
}

/// One bucket's part of a reservation.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketWrite {
    pub bucket: BucketId,
    pub form: BucketForm,
    /// `k × interval`.
    pub add_us: i64,
}

/// One conditional write on a key's state: rate slots and/or parallelism
/// leases for one batch's messages to that key. It also requires the key not
/// to be paused and its breaker closed.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub buckets: Vec<BucketWrite>,
    /// Lease slots to take (`slot`, value `expiry_ms*1000+nonce`): each must be free at `now`.
    pub leases: Vec<(u32, i64)>,
    pub now: EpochMillis,
}

/// A conditional write's result: the item after it, or as it was when the condition failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Cas {
    Written(FlowShared),
    Refused(FlowShared),
}

/// One sender's tally for a key since its last report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub requests: u32,
    pub failures: u32,
    /// 429/503 answers.
    pub throttles: u32,
}

/// A change of a key's breaker, pause or adaptive factor: one conditional
/// write of its state (plus, for the breaker and the pause, its hold item
/// in the policy partition and a history entry).
#[derive(Clone, Debug, PartialEq)]
pub enum FlowChange {
    /// Closed → open (condition: closed).
    Open { trips: u32, until: EpochMillis, why: String },
    /// Open and due (or half-open with a dead prober) → half-open, owned by `token`.
    HalfOpen { token: String, until: EpochMillis },
    /// Half-open (owned by `token`) → closed; the window restarts.
    Close { token: String },
    /// Half-open (owned by `token`) → open again.
    Reopen { token: String, trips: u32, until: EpochMillis, why: String },
    /// Pause the key until `until` (condition: not already paused longer).
    Pause { until: EpochMillis, why: String },
    /// Adaptive factor `from` → `to` (condition: still `from`).
    Factor { from: f64, to: f64, why: String },
}

impl FlowChange {
    /// The history entry's `to` state.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
            Self::Close { .. } => "closed",
            Self::Reopen { .. } => "open",
            Self::Pause { .. } => "paused",
            Self::Factor { from, to, .. } if to < from => "rate_halved",
            Self::Factor { .. } => "rate_restored",
        }
    }
}

/// What holds every delivery to a key for a while (the hold items every
/// sender reads with the policies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// `open`, `paused` or `closed` (a closed hold has `until` in the past).
    pub kind: String,
    pub until: EpochMillis,
}

/// One past transition of a key, newest first in views.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    pub at: EpochMillis,
    pub to: String,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<EpochMillis>,
}

/// Every policy and hold, as the sender caches them.
#[derive(Clone, Debug, Default)]
pub struct FlowSnapshot {
    pub policies: std::collections::HashMap<(FlowKey, PolicyScope), FlowPolicy>,
    pub holds: std::collections::HashMap<FlowKey, Hold>,
}

impl FlowSnapshot {
    pub fn policy(&self, key: &FlowKey, scope: &PolicyScope) -> Option<&FlowPolicy> {
        self.policies.get(&(key.clone(), scope.clone()))
    }
}

/// The plan for one bucket: how to write it and how many slots (`k ≥ 1`)
/// it reserves, from the sender's last view of `next` (`cached`). `None`:
/// the cached view says the bucket is full past the horizon: hold without a write.
pub fn plan_bucket(
    cached: Option<i64>,
    now_us: i64,
    interval_us: i64,
    burst: u32,
    horizon_us: i64,
    n: u32,
) -> Option<(BucketForm, u32)> {
    let t = interval_us.max(1);
    let tau = i64::from(burst.max(1) - 1) * t;
    let base = now_us - tau;
    match cached {
        Some(next) if next > base => {
            if next > now_us + horizon_us {
                return None;
            }
            let k = 1 + (now_us + horizon_us - next) / t;
            Some((BucketForm::Busy { base_us: base, ceiling_us: now_us + horizon_us }, n.min(k as u32).max(1)))
        }
        _ => {
            let k = 1 + (tau + horizon_us) / t;
            Some((BucketForm::Idle { base_us: base }, n.min(k as u32).max(1)))
        }
    }
}

/// The send time (µs) of the `i`-th of `k` slots a written bucket granted:
/// the bucket's `next` after the write minus what is left after slot `i`.
pub fn slot_at(next_after_us: i64, k: u32, i: u32, interval_us: i64) -> i64 {
    next_after_us - i64::from(k - i) * interval_us
}

/// The adaptive factor after another halving.
pub fn halved(factor: f64) -> f64 {
    (factor / 2.0).max(MIN_FACTOR)
}

/// The adaptive factor one clean step later.
pub fn restored(factor: f64) -> f64 {
    (factor * 2.0).min(1.0)
}
