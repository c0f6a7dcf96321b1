//! Per-tenant status counts that stay right without scans, the release of
//! active-task quota slots, and each minute's deliveries, retries and
//! failures (the console's chart).
//!
//! The table's stream (new and old images) feeds this function with every
//! change of a task's `STATE` item; each batch becomes, per tenant, one read
//! and one conditional write of the tenant's item (`dynamo::counts`) that
//! adds the batch's net change per status, counts the active-task slots of
//! tasks created (unless the API took the slot itself: near a tenant's quota,
//! see `api::tasks::quota`) and gives back those of tasks that left the
//! active set (finished, cancelled, deleted), and records the batch on that
//! item, so a retried batch counts no tenant twice. A manual retry takes its
//! slot in the API. Nothing on the sender's or the create path writes a
//! counter: the counts cost one write per tenant per stream batch, and the
//! per-minute activity one more per tenant and minute of the batch (a batch
//! spans one minute, rarely two).
//!
//! Known limit: a batch retried with more records than the first time (the
//! function died after applying some tenants, and more changes arrived
//! meanwhile) has another identity; its overlap would be counted twice. The
//! same holds for a batch that Lambda bisects after a failure in its second
//! part: the halves have other identities than the parts already applied.
//! The mapping's retries are bounded (see `template.yaml`); a batch that
//! still fails goes to the dead-letter queue, whose alarm calls for a person.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::domain::{
    Body, BreakerEvent, BusEvent, CallbackKind, Callbacks, Deltas, EpochMillis, EventType, HttpMethod, LifecycleEvent,
    MINUTE_MS, NewTask, QueueMessage, RequestSpec, ResponseRules, RetryPolicy, Schedule, TargetUrl, TaskId, TaskStatus,
    TenantId, callback_notice, now_millis,
};
use crate::ports::{
    CountStore, Created, DeliveryQueue, EventBus, EventError, EventSettings, QueueError, StoreError, TaskStore,
    UniqueKey,
};

/// Whether a task in this status holds an active-task slot.
fn holds_slot(s: TaskStatus) -> bool {
    !s.is_final()
}

/// The net status changes in a batch of stream records (Lambda's DynamoDB
/// event format). Only task `STATE` items count; a TTL delete removes its status.
pub fn deltas(records: &[Value]) -> Deltas {
    let mut out: Deltas = HashMap::new();
    for r in records {
        let d = &r["dynamodb"];
        if !d["Keys"]["pk"]["S"].as_str().is_some_and(|p| p.starts_with("TASK#")) {
            continue;
        }
        // A cron run's item adds to the per-minute activity only: the counts
        // are of tasks.
        let run = d["Keys"]["sk"]["S"].as_str().is_some_and(|sk| sk.starts_with("RUN#"));
        if d["Keys"]["sk"]["S"] != "STATE" && !run {
            continue;
        }
        let status = |img: &Value| img["status"]["S"].as_str().and_then(TaskStatus::parse);
        let (old, new) = (status(&d["OldImage"]), status(&d["NewImage"]));
        if old == new {
            continue;
        }
        let tenant = d["NewImage"]["tenant"]["S"].as_str().or_else(|| d["OldImage"]["tenant"]["S"].as_str());
        let Some(tenant) = tenant else { continue };
        let t = out.entry(tenant.to_owned()).or_default();
        if let (Some(n), Some(at)) =
            (new, d["NewImage"]["updated_at"]["N"].as_str().and_then(|v| v.parse::<i64>().ok()))
        {
            t.minutes.entry(at - at.rem_euclid(MINUTE_MS)).or_default().count(n);
        }
        if run {
            continue;
        }
        if let Some(o) = old {
            *t.statuses.entry(o).or_default() -= 1;
        }
        if let Some(n) = new {
            *t.statuses.entry(n).or_default() += 1;
        }
        if old.is_some_and(holds_slot) && !new.is_some_and(holds_slot) {
            t.active -= 1;
        }
        // A task created with a slot the API did not take itself (far below
        // the quota: see `api::tasks::quota`) is counted here.
        let slot_taken = d["NewImage"][crate::dynamo::SLOT_TAKEN]["BOOL"].as_bool() == Some(true);
        if old.is_none() && d["OldImage"].is_null() && new.is_some_and(holds_slot) && !slot_taken {
            t.active += 1;
        }
    }
    for t in out.values_mut() {
        t.statuses.retain(|_, d| *d != 0);
        t.minutes.retain(|_, a| !a.is_empty());
    }
    out.retain(|_, t| !t.statuses.is_empty() || t.active != 0 || !t.minutes.is_empty());
    out
}

/// A batch's identity: its first and last record ids.
pub fn batch_id(records: &[Value]) -> String {
    let id = |r: Option<&Value>| r.and_then(|r| r["eventID"].as_str()).unwrap_or("-").to_owned();
    format!("{}..{}", id(records.first()), id(records.last()))
}

/// Applies one stream batch.
pub async fn apply<S: CountStore>(store: &S, records: &[Value]) -> Result<bool, StoreError> {
    let d = deltas(records);
    if d.is_empty() {
        return Ok(true);
    }
    store.apply_counts(&batch_id(records), &d).await
}

/// A change in a batch that is a lifecycle event, and the callback it calls for.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub event: LifecycleEvent,
    pub callback: Option<(CallbackKind, TargetUrl)>,
}

/// The lifecycle events in a batch of stream records, in order: creations,
/// ends of tasks (succeeded, failed, cancelled) and of cron runs.
pub fn changes(records: &[Value]) -> Vec<Change> {
    let mut out = Vec::new();
    for r in records {
        let d = &r["dynamodb"];
        let (new, old) = (&d["NewImage"], &d["OldImage"]);
        let str_of = |img: &Value, k: &str| img[k]["S"].as_str().map(str::to_owned);
        let num_of = |img: &Value, k: &str| img[k]["N"].as_str().and_then(|v| v.parse::<i64>().ok());
        let Some(task_id) = d["Keys"]["pk"]["S"].as_str().and_then(|p| p.strip_prefix("TASK#")) else { continue };
        let sk = d["Keys"]["sk"]["S"].as_str().unwrap_or_default();
        let run = sk.strip_prefix("RUN#").and_then(|ms| ms.parse::<EpochMillis>().ok());
        if sk != "STATE" && run.is_none() {
            continue;
        }
        let Some(status) = str_of(new, "status").as_deref().and_then(TaskStatus::parse) else { continue };
        let before = str_of(old, "status").as_deref().and_then(TaskStatus::parse);
        let Some(kind) = EventType::of_change(run.is_some(), before, status) else { continue };
        let (Ok(task_id), Some(Ok(tenant))) =
            (TaskId::parse(task_id), str_of(new, "tenant").map(|t| TenantId::parse(&t)))
        else {
            continue;
        };
        let event = LifecycleEvent {
            kind,
            tenant,
            task_id,
            run,
            business_id: str_of(new, "business_id"),
            status,
            attempts: num_of(new, "attempts").unwrap_or(0).max(0) as u32,
            last_status_code: num_of(new, "last_status").and_then(|c| u16::try_from(c).ok()),
            reason: str_of(new, "failure_reason"),
            at: num_of(new, "updated_at").unwrap_or(0),
        };
        let callback = match kind {
            EventType::TaskSucceeded => Some(CallbackKind::Success),
            EventType::TaskFailed => Some(CallbackKind::Failure),
            _ => None,
        }
        .and_then(|k| Some((k, TargetUrl::parse(&str_of(new, k.as_str())?).ok()?)));
        out.push(Change { event, callback });
    }
    out
}

/// The flow breakers' openings and closings in a batch: new history entries
/// of flow keys (written only on a transition).
pub fn breaker_changes(records: &[Value]) -> Vec<BreakerEvent> {
    records
        .iter()
        .filter_map(|r| {
            let d = &r["dynamodb"];
            let key = d["Keys"]["pk"]["S"].as_str()?.strip_prefix("FLOW#")?;
            if !d["Keys"]["sk"]["S"].as_str()?.starts_with("HIST#") || !d["OldImage"].is_null() {
                return None;
            }
            let new = &d["NewImage"];
            let num = |k: &str| new[k]["N"].as_str().and_then(|v| v.parse::<EpochMillis>().ok());
            BreakerEvent::of_history(
                key,
                new["to"]["S"].as_str()?,
                new["why"]["S"].as_str().unwrap_or_default(),
                num("until"),
                num("at")?,
            )
        })
        .collect()
}

/// Each tenant's event opt-ins, read at most once a minute per tenant.
#[derive(Default)]
pub struct OptIns(Mutex<HashMap<TenantId, (EpochMillis, Vec<EventType>)>>);

/// How long a tenant's opt-ins are trusted.
pub const OPT_IN_CACHE_MS: i64 = 60_000;

impl OptIns {
    async fn of<S: EventSettings>(
        &self,
        store: &S,
        tenant: &TenantId,
        now: EpochMillis,
    ) -> Result<Vec<EventType>, StoreError> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned();
        if let Some((_, types)) = cached.filter(|(at, _)| now - at < OPT_IN_CACHE_MS) {
            return Ok(types);
        }
        let types = store.event_types(tenant).await?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), (now, types.clone()));
        Ok(types)
    }
}

/// What the stream consumer works with.
pub struct Consumer<S, B, Q> {
    pub store: S,
    /// The bus lifecycle events go to (none: events are off).
    pub bus: Option<B>,
    /// The delivery queue, for callback tasks.
    pub queue: Q,
    pub opt_ins: OptIns,
    /// Whether host keys' breaker events are published (host keys belong to
    /// no tenant: the stack's `COURIER_HOST_BREAKER_EVENTS`).
    pub host_breaker_events: bool,
    /// Where TTL-deleted task items are archived (none: not archived).
    pub archive: Option<crate::archive::S3Archive>,
}

/// A batch that must be retried.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Events(#[from] EventError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl<S, B, Q> Consumer<S, B, Q>
where
    S: CountStore + EventSettings + TaskStore,
    B: EventBus,
    Q: DeliveryQueue,
{
    /// Publishes the batch's events its tenants opted in to (and host keys'
    /// breaker events if the stack wants them); returns how many.
    pub async fn publish(
        &self,
        changes: &[Change],
        breakers: &[BreakerEvent],
        now: EpochMillis,
    ) -> Result<usize, ConsumerError> {
        let Some(bus) = &self.bus else { return Ok(0) };
        let mut wanted: Vec<BusEvent> = Vec::new();
        let mut opt_ins: HashMap<&TenantId, Vec<EventType>> = HashMap::new();
        let all = changes
            .iter()
            .map(|c| (Some(&c.event.tenant), c.event.kind, BusEvent::from(&c.event)))
            .chain(breakers.iter().map(|b| (b.owner.as_ref(), b.kind, b.to_bus())));
        for (tenant, kind, event) in all {
            let Some(tenant) = tenant else {
                if self.host_breaker_events {
                    wanted.push(event);
                }
                continue;
            };
            if !opt_ins.contains_key(tenant) {
                opt_ins.insert(tenant, self.opt_ins.of(&self.store, tenant, now).await?);
            }
            if opt_ins[tenant].contains(&kind) {
                wanted.push(event);
            }
        }
        if !wanted.is_empty() {
            bus.publish(&wanted).await?;
        }
        Ok(wanted.len())
    }

    /// Creates the callback tasks the batch's ends call for: each named by
    /// its parent and kind ([`CallbackKind::task_id`]), so doing it again
    /// (a retried batch) makes no second task; its message is sent first, as
    /// the API does, and a duplicate message is dropped by the sender's claim.
    pub async fn callbacks(&self, changes: &[Change], now: EpochMillis) -> Result<usize, ConsumerError> {
        let mut made = 0;
        for c in changes {
            let Some((kind, url)) = &c.callback else { continue };
            let task = callback_task(*kind, url, &c.event, now);
            let bid = kind.business_id(&c.event.task_id);
            self.queue.enqueue(&QueueMessage::deliver(&task.id, Some(task.flow_ref())), Duration::ZERO).await?;
            if self.store.create(&task, Some(&UniqueKey::BusinessId(bid))).await? == Created::New {
                made += 1;
            }
        }
        Ok(made)
    }

    /// Archives the task items TTL deleted in the batch (see [`crate::archive`]);
    /// returns how many. An item that does not name its tenant (a request, an
    /// attempt) takes it from its task's other items in the batch, else from
    /// its task's state, which outlives them (one read per such task).
    pub async fn archive(&self, records: &[Value]) -> Result<usize, ConsumerError> {
        let Some(archive) = &self.archive else { return Ok(0) };
        let mut items = crate::archive::expired(records);
        if items.is_empty() {
            return Ok(0);
        }
        let mut tenants: HashMap<TaskId, Option<TenantId>> =
            items.iter().filter_map(|e| Some((e.task_id.clone(), Some(e.tenant.clone()?)))).collect();
        for e in &mut items {
            if e.tenant.is_some() {
                continue;
            }
            if !tenants.contains_key(&e.task_id) {
                let found = self.store.get(&e.task_id).await?.map(|t| t.state.tenant);
                tenants.insert(e.task_id.clone(), found);
            }
            e.tenant = tenants.get(&e.task_id).cloned().flatten();
        }
        let objects = crate::archive::objects(&items, &batch_id(records))
            .map_err(|e| ConsumerError::Store(StoreError::Permanent(Box::new(e))))?;
        for (key, bytes) in objects {
            archive.put(&key, bytes).await?;
        }
        Ok(items.len())
    }

    /// Lists on their own the tasks that listing groups TTL deleted in the
    /// batch still listed and that still exist (see `dynamo::groups`);
    /// returns how many. A retried batch sets the same entries again.
    pub async fn relist(&self, records: &[Value]) -> Result<usize, ConsumerError> {
        let mut relisted = 0;
        for group in crate::archive::expired_groups(records) {
            relisted += self.store.relist(&group).await?;
        }
        Ok(relisted)
    }

    /// Handles one invocation: `event` is a DynamoDB Streams batch in
    /// Lambda's event format. Events and callbacks first, counts last; an
    /// error makes Lambda retry the batch (counts are applied once per batch;
    /// callbacks are created once; an event may be published again).
    pub async fn handle(&self, event: &Value) -> Result<Value, ConsumerError> {
        let records = event["Records"].as_array().map_or(&[][..], Vec::as_slice);
        let now = now_millis();
        let changes = changes(records);
        let published = self.publish(&changes, &breaker_changes(records), now).await?;
        let callbacks = self.callbacks(&changes, now).await?;
        let archived = self.archive(records).await?;
        let relisted = self.relist(records).await?;
        let applied = apply(&self.store, records).await?;
        tracing::info!(
            records = records.len(),
            applied,
            published,
            callbacks,
            archived,
            relisted,
            "stream batch handled"
        );
        Ok(serde_json::json!({"batchItemFailures": []}))
    }
}

/// A callback task: a signed `POST` of the outcome's notice to the URL, with
/// the default retry policy; its own callbacks are none (no loops).
pub fn callback_task(kind: CallbackKind, url: &TargetUrl, event: &LifecycleEvent, now: EpochMillis) -> NewTask {
    let business_id = kind.business_id(&event.task_id);
    let spec = RequestSpec {
        method: HttpMethod::Post,
        url: url.clone(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: Some(Body::Text(callback_notice(kind, event).to_string())),
        auth: None,
        timeout_ms: RequestSpec::DEFAULT_TIMEOUT_MS,
        follow_redirects: false,
        flow_key: None,
        rules: ResponseRules::default(),
        unsigned: false,
        trace: None,
        callbacks: Callbacks::default(),
    };
    NewTask {
        id: kind.task_id(&event.tenant, &event.task_id),
        tenant: event.tenant.clone(),
        spec,
        retry: RetryPolicy::default(),
        schedule: Schedule::Now,
        business_id: Some(business_id),
        created_at: now,
        due_at: now,
        on_scheduler: false,
        slot_taken: false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn rec(id: &str, old: Option<(&str, &str)>, new: Option<(&str, &str)>) -> Value {
        let img =
            |x: Option<(&str, &str)>| x.map_or(Value::Null, |(t, s)| json!({"tenant": {"S": t}, "status": {"S": s}}));
        json!({"eventID": id, "dynamodb": {
            "Keys": {"pk": {"S": "TASK#tsk_1"}, "sk": {"S": "STATE"}},
            "OldImage": img(old), "NewImage": img(new)}})
    }

    #[test]
    fn a_delivery_nets_out_to_one_succeeded() {
        let d = deltas(&[
            rec("1", None, Some(("a", "pending"))),
            rec("2", Some(("a", "pending")), Some(("a", "sending"))),
            rec("3", Some(("a", "sending")), Some(("a", "succeeded"))),
            rec("4", None, Some(("b", "scheduled"))),
            rec("5", Some(("b", "scheduled")), None),
        ]);
        let a = d.get("a").expect("tenant a");
        assert_eq!(a.statuses, BTreeMap::from([(TaskStatus::Succeeded, 1)]));
        assert!(!d.contains_key("b"), "created then deleted: counted and given back in one batch");
        assert_eq!(a.active, 0, "counted when created, given back when delivered");
        let later = deltas(&[rec("3", Some(("a", "sending")), Some(("a", "succeeded")))]);
        assert_eq!(later["a"].active, -1, "the delivered task gives its slot back");
    }

    #[test]
    fn a_created_task_is_counted_unless_the_api_took_its_slot() {
        let mut taken = rec("2", None, Some(("a", "pending")));
        taken["dynamodb"]["NewImage"]["slot_taken"] = json!({"BOOL": true});
        let d = deltas(&[rec("1", None, Some(("a", "pending"))), taken]);
        assert_eq!(d["a"].active, 1, "only the task whose slot the API did not take");
        assert_eq!(d["a"].statuses, BTreeMap::from([(TaskStatus::Pending, 2)]));
    }

    #[test]
    fn a_retry_takes_no_slot_here_and_a_cancel_gives_one_back() {
        let d = deltas(&[
            rec("1", Some(("a", "failed")), Some(("a", "pending"))),
            rec("2", Some(("a", "scheduled")), Some(("a", "cancelled"))),
        ]);
        assert_eq!(d["a"].active, -1);
    }

    #[test]
    fn each_minute_counts_every_delivery_retry_and_failure_cron_runs_included() {
        let at = |mut r: Value, ms: i64| {
            r["dynamodb"]["NewImage"]["updated_at"] = json!({"N": ms.to_string()});
            r
        };
        let mut run = rec("5", Some(("a", "sending")), Some(("a", "succeeded")));
        run["dynamodb"]["Keys"]["sk"] = json!({"S": "RUN#0000000001"});
        let d = deltas(&[
            at(rec("1", Some(("a", "sending")), Some(("a", "retrying"))), 60_000 + 5),
            at(rec("2", Some(("a", "retrying")), Some(("a", "sending"))), 60_000 + 10),
            at(rec("3", Some(("a", "sending")), Some(("a", "succeeded"))), 120_000 + 1),
            at(rec("4", Some(("a", "sending")), Some(("a", "failed"))), 120_000 + 2),
            at(run, 120_000 + 3),
        ]);
        let a = &d["a"];
        assert_eq!(a.minutes[&60_000], crate::domain::Activity { delivered: 0, retried: 1, failed: 0 });
        assert_eq!(a.minutes[&120_000], crate::domain::Activity { delivered: 2, retried: 0, failed: 1 });
        assert_eq!(a.minutes.len(), 2);
        // The run counts in its minute, not in the task counts.
        assert_eq!(a.statuses[&TaskStatus::Succeeded], 1);
    }

    #[test]
    fn changes_are_the_events_of_a_batch_with_the_callbacks_they_call_for() {
        let tenant = TenantId::generate();
        let t = tenant.as_str();
        let (a, b) = (TaskId::generate(), TaskId::generate());
        let rec = |id: &TaskId, sk: &str, old: Option<&str>, new: Value| {
            let old = old.map_or(Value::Null, |s| json!({"tenant": {"S": t}, "status": {"S": s}}));
            json!({"eventID": "1", "dynamodb": {"Keys": {"pk": {"S": format!("TASK#{id}")}, "sk": {"S": sk}},
                   "OldImage": old, "NewImage": new}})
        };
        let img = |status: &str, extra: Value| {
            let mut v = json!({"tenant": {"S": t}, "status": {"S": status}, "attempts": {"N": "2"},
                               "updated_at": {"N": "1000"}, "business_id": {"S": "order-1"}});
            for (k, x) in extra.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v
        };
        let got = changes(&[
            rec(&a, "STATE", None, img("pending", json!({"on_failure": {"S": "https://h.invalid/f"}}))),
            rec(&a, "STATE", Some("pending"), img("sending", json!({}))),
            rec(
                &a,
                "STATE",
                Some("sending"),
                img(
                    "failed",
                    json!({"on_failure": {"S": "https://h.invalid/f"}, "last_status": {"N": "503"},
                                     "failure_reason": {"S": "exhausted"}}),
                ),
            ),
            rec(&b, "RUN#0000000005", Some("sending"), img("succeeded", json!({}))),
            rec(&b, "ATTEMPT#0000000001", None, img("succeeded", json!({}))),
            rec(&b, "STATE", Some("active"), Value::Null),
        ]);
        let kinds: Vec<EventType> = got.iter().map(|c| c.event.kind).collect();
        assert_eq!(kinds, vec![EventType::TaskCreated, EventType::TaskFailed, EventType::RunSucceeded]);
        let failed = &got[1];
        assert_eq!(failed.event.last_status_code, Some(503));
        assert_eq!(failed.event.reason.as_deref(), Some("exhausted"));
        assert_eq!(failed.event.business_id.as_deref(), Some("order-1"));
        assert_eq!(
            failed.callback.as_ref().map(|(k, u)| (*k, u.as_str())),
            Some((CallbackKind::Failure, "https://h.invalid/f"))
        );
        assert!(got[0].callback.is_none(), "a creation calls no callback");
        assert_eq!(got[2].event.run, Some(5));
        let task = callback_task(
            CallbackKind::Failure,
            &TargetUrl::parse("https://h.invalid/f").expect("url"),
            &failed.event,
            7,
        );
        assert_eq!(task.id, CallbackKind::Failure.task_id(&tenant, &a));
        assert!(task.spec.callbacks.is_empty(), "a callback task calls no callback of its own");
    }

    /// A bus that records what it is given.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Vec<BusEvent>>>);

    impl EventBus for Recorded {
        async fn publish(&self, events: &[BusEvent]) -> Result<(), EventError> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(events.to_vec());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_publishes_what_its_tenants_opted_in_to_and_makes_each_callback_once() {
        use crate::ports::EventSettings;
        use crate::testing::{FakeQueue, FakeStore};
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let store = FakeStore::new();
        store.set_event_types(&a, &[EventType::TaskFailed, EventType::FlowBreakerOpened]).await.expect("fake");
        let consumer = Consumer {
            store,
            bus: Some(Recorded::default()),
            queue: FakeQueue::default(),
            opt_ins: OptIns::default(),
            host_breaker_events: false,
            archive: None,
        };
        let failed = |tenant: &TenantId, id: &TaskId| {
            json!({"eventID": id.as_str(), "dynamodb": {
                "Keys": {"pk": {"S": format!("TASK#{id}")}, "sk": {"S": "STATE"}},
                "OldImage": {"tenant": {"S": tenant.as_str()}, "status": {"S": "sending"}},
                "NewImage": {"tenant": {"S": tenant.as_str()}, "status": {"S": "failed"}, "attempts": {"N": "1"},
                             "updated_at": {"N": "5"}, "on_failure": {"S": "https://hook.invalid/f"}}}})
        };
        let opened = |key: String| {
            json!({"eventID": "h", "eventName": "INSERT", "dynamodb": {
                "Keys": {"pk": {"S": format!("FLOW#{key}")}, "sk": {"S": "HIST#000000000000009#0001"}},
                "NewImage": {"at": {"N": "9"}, "to": {"S": "open"}, "why": {"S": "7 of 10 failed"}}}})
        };
        let (ta, tb) = (TaskId::generate(), TaskId::generate());
        let batch = json!({"Records": [failed(&a, &ta), failed(&b, &tb), opened(format!("n:{a}:orders")),
                                        opened(format!("n:{b}:orders")), opened("h:api.example.invalid:443".into())]});
        consumer.handle(&batch).await.expect("handled");
        consumer.handle(&batch).await.expect("a retried batch");
        let calls = consumer.bus.as_ref().expect("bus").0.lock().expect("lock").clone();
        assert_eq!(calls.len(), 2, "one PutEvents per batch");
        let kinds: Vec<(EventType, Value)> = calls[0].iter().map(|e| (e.kind, e.detail["tenant"].clone())).collect();
        assert_eq!(
            kinds,
            vec![(EventType::TaskFailed, json!(a.as_str())), (EventType::FlowBreakerOpened, json!(a.as_str()))],
            "only tenant a's opted-in types; no host key event"
        );
        // Both failed tasks had an on_failure: one callback task each, however often the batch comes.
        for (tenant, id) in [(&a, &ta), (&b, &tb)] {
            let child = CallbackKind::Failure.task_id(tenant, id);
            assert!(consumer.store.get(&child).await.expect("fake").is_some(), "the callback task of {id}");
        }
        assert_eq!(consumer.queue.sent().len(), 4, "sent again on the retry; the sender drops duplicates");
        // A stack that publishes host keys' breaker events.
        let host = Consumer { host_breaker_events: true, bus: Some(Recorded::default()), ..consumer };
        host.handle(&json!({"Records": [opened("h:api.example.invalid:443".into())]})).await.expect("handled");
        let calls = host.bus.as_ref().expect("bus").0.lock().expect("lock").clone();
        assert_eq!(calls[0][0].detail["tenant"], Value::Null);
        assert_eq!(calls[0][0].detail["key"], "h:api.example.invalid:443");
    }

    #[test]
    fn only_state_items_count_and_batches_are_named_by_their_ends() {
        let mut attempt = rec("1", None, Some(("a", "pending")));
        attempt["dynamodb"]["Keys"]["sk"] = json!({"S": "ATTEMPT#0000000001"});
        assert!(deltas(&[attempt.clone()]).is_empty());
        assert_eq!(batch_id(&[attempt.clone(), rec("9", None, None)]), "1..9");
    }
}
