//! In-memory fakes of every port, and a clock tests set by hand, so unit
//! tests drive the sender, a replay step or a reconciler pass without the
//! emulator. Each fake keeps the DynamoDB, SQS and Scheduler adapters'
//! contracts the workers depend on (a claim under a lease, finish only by the
//! lease holder, index pages and watermarks, a versioned replay save, quota
//! reservations); nothing more. Compiled for the crate's tests and, behind the
//! `test-support` feature, for other crates' tests.

mod flows;
mod ledger;
mod queue;
mod stores;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::Clock;
use crate::domain::{
    Attempt, EpochMillis, KeyId, NewTask, Replay, ReplayId, RequestSpec, RetryPolicy, Schedule, TaskId, TaskState,
    TaskStatus, Tenant, TenantId,
};
use crate::ports::Unit;
use crate::resources::RECONCILE_SHARDS;

pub use flows::FlowWrites;
pub use queue::{FakeQueue, FakeScheduler, RecordedSchedule};

/// A clock that moves only when told; clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(now: EpochMillis) -> Self {
        Self(Arc::new(AtomicI64::new(now)))
    }

    pub fn set(&self, now: EpochMillis) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: EpochMillis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EpochMillis {
        self.0.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: EpochMillis) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.0.fetch_max(at, Ordering::SeqCst);
        Box::pin(std::future::ready(()))
    }
}

/// A unit's state row, with what the table keeps beside the state.
#[derive(Clone, Debug)]
struct Row {
    state: TaskState,
    /// The check time in the reconcile index (`None`: not indexed).
    recon: Option<EpochMillis>,
    /// When the current claim was taken (an interrupted attempt's start).
    claimed_at: Option<EpochMillis>,
}

/// A state row's key: task id and run.
type UnitKey = (String, Option<EpochMillis>);

fn unit_key(unit: &Unit) -> UnitKey {
    (unit.task.as_str().to_owned(), unit.run)
}

/// An API key as stored.
#[derive(Clone, Debug)]
struct KeyRow {
    tenant: TenantId,
    key_id: KeyId,
    created_at: EpochMillis,
    revoked_at: Option<EpochMillis>,
    expires_at: Option<EpochMillis>,
}

#[derive(Default)]
struct Tables {
    states: BTreeMap<UnitKey, Row>,
    specs: BTreeMap<String, (RequestSpec, RetryPolicy, Schedule)>,
    attempts: BTreeMap<(UnitKey, u32), Attempt>,
    /// (tenant, key) → task: business ids and idempotency keys.
    unique: BTreeMap<(TenantId, String), TaskId>,
    replays: BTreeMap<ReplayId, Replay>,
    tenants: BTreeMap<TenantId, Tenant>,
    /// Key hash → key.
    keys: BTreeMap<String, KeyRow>,
    /// (tenant, second) → creations counted.
    rates: BTreeMap<(TenantId, EpochMillis), u64>,
    counts: BTreeMap<String, BTreeMap<TaskStatus, i64>>,
    event_types: std::collections::HashMap<TenantId, Vec<crate::domain::EventType>>,
    activity: BTreeMap<(String, crate::domain::EpochMillis), crate::domain::Activity>,
    applied_batches: BTreeSet<String>,
    watermarks: BTreeMap<u32, EpochMillis>,
    flows: flows::FlowTables,
    /// (tenant, secret) → the secret and its listing (kept in clear: a fake).
    secrets: BTreeMap<(TenantId, crate::domain::SecretId), (crate::domain::SecretInfo, crate::domain::SigningSecret)>,
    /// Reads of signing secrets fail while set (the store or KMS down).
    secrets_down: bool,
    audit: Vec<crate::domain::AuditEntry>,
}

/// One in-memory store implementing every store port; clones share the data,
/// so a test keeps a handle on what the worker it built writes.
#[derive(Clone)]
pub struct FakeStore {
    tables: Arc<Mutex<Tables>>,
    grace_ms: i64,
}

impl FakeStore {
    /// Makes reads of signing secrets fail (`true`) or work again.
    pub fn secrets_down(&self, down: bool) {
        self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner).secrets_down = down;
    }
}

impl Default for FakeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeStore {
    /// An empty store with the adapter's default reconcile grace (two minutes).
    pub fn new() -> Self {
        Self { tables: Arc::default(), grace_ms: 120_000 }
    }

    /// How long after its due time the reconcile index checks on a unit.
    pub fn with_reconcile_grace(mut self, grace_ms: i64) -> Self {
        self.grace_ms = grace_ms;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A test that panicked holding the lock has failed already.
        self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a task as the API creates it (state, spec, index entry), no unique key.
    pub fn insert(&self, task: &NewTask) {
        let mut t = self.lock();
        let key = (task.id.as_str().to_owned(), None);
        let state = task.initial_state();
        let recon = (task.kind() == crate::domain::TaskKind::Once).then(|| task.due_at + self.grace_ms);
        t.states.insert(key, Row { state, recon, claimed_at: None });
        t.specs.insert(task.id.as_str().to_owned(), (task.spec.clone(), task.retry.clone(), task.schedule.clone()));
    }

    /// Replaces (or adds) a unit's state as is, indexed at `recon`: for
    /// arranging states the API cannot make directly (a stale lease, a failure).
    pub fn put_state(&self, state: TaskState, recon: Option<EpochMillis>) {
        let key = (state.id.as_str().to_owned(), state.run);
        self.lock().states.insert(key, Row { state, recon, claimed_at: None });
    }

    /// A unit's state as stored now.
    pub fn state(&self, unit: &Unit) -> Option<TaskState> {
        self.lock().states.get(&unit_key(unit)).map(|r| r.state.clone())
    }

    /// A unit's check time in the reconcile index.
    pub fn recon_at(&self, unit: &Unit) -> Option<EpochMillis> {
        self.lock().states.get(&unit_key(unit)).and_then(|r| r.recon)
    }

    /// A unit's recorded attempts, by number.
    pub fn attempts_of(&self, unit: &Unit) -> Vec<Attempt> {
        let key = unit_key(unit);
        self.lock().attempts.iter().filter(|((k, _), _)| *k == key).map(|(_, a)| a.clone()).collect()
    }

    /// A shard's watermark, as the reconciler left it.
    pub fn watermark_of(&self, shard: u32) -> Option<EpochMillis> {
        self.lock().watermarks.get(&shard).copied()
    }
}

/// The tenant the unit tests' tasks belong to.
pub fn t1() -> TenantId {
    TenantId::parse("tnt_0000000000000001").expect("a well-formed tenant id")
}

/// The replay the unit tests step through.
pub fn rpl1() -> ReplayId {
    ReplayId::parse(&format!("rpl_{:032x}", 1)).expect("a well-formed replay id")
}

/// The reconcile shard of a task: the adapter's hash of its id.
pub fn shard_of(id: &TaskId) -> u32 {
    id.as_str().bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % RECONCILE_SHARDS
}

/// A one-off task of `tenant` sending the example request to `url`, due
/// (and created) at `due_at`.
pub fn new_task(tenant: &TenantId, url: &str, due_at: EpochMillis, retry: RetryPolicy) -> NewTask {
    let spec = RequestSpec {
        method: crate::domain::HttpMethod::Post,
        url: crate::domain::TargetUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")),
        headers: vec![],
        body: None,
        auth: None,
        timeout_ms: 1000,
        follow_redirects: false,
        rules: crate::domain::ResponseRules::default(),
        flow_key: None,
        unsigned: false,
        trace: None,
        callbacks: crate::domain::Callbacks::default(),
    };
    NewTask {
        id: TaskId::generate(),
        tenant: tenant.clone(),
        spec,
        retry,
        schedule: Schedule::Now,
        business_id: None,
        created_at: due_at,
        due_at,
        on_scheduler: false,
        slot_taken: false,
    }
}
