//! [`FlowPolicies`] and [`FlowLimiter`] on DynamoDB: policies and holds in
//! the `FLOWS` partition (one query gives a sender all of them), each key's
//! shared state in its `STATE` item, written only by conditional
//! UpdateItems whose conditions are those of the in-memory fake
//! (`testing::flows`, the reference), and its history beside it.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::codec::{
    event_from_item, flow_attr as a, flow_shared_from_item, hold_from_item, json, n, policy_from_item, s, to_json,
    ttl_secs,
};
use super::errors::{applied, is_conditional_failure, store_error};
use super::keys::{HIST_PREFIX, HOLD_PREFIX, POLICY_PREFIX, STATE, flow_pk, flows_pk, hist_sk, hold_sk, policy_sk};
use super::{DAY_MS, DynamoStore, Item};
use crate::domain::{
    BreakerPosition, BucketForm, BucketId, Cas, EpochMillis, FlowChange, FlowEvent, FlowKey, FlowPolicy, FlowShared,
    FlowSnapshot, PolicyScope, Reservation, Tally, now_millis,
};
use crate::ports::{FlowLimiter, FlowPolicies, StoreError};
use crate::resources::{TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK, TABLE_TTL_ATTRIBUTE as TTL};

/// State, holds and history outlive their last write by this long.
const FLOW_TTL_MS: i64 = 30 * DAY_MS;

/// One UpdateItem's expression, built clause by clause with a placeholder
/// for every attribute name and value.
#[derive(Default)]
struct Update {
    names: HashMap<String, String>,
    values: Item,
    sets: Vec<String>,
    removes: Vec<String>,
    adds: Vec<String>,
    conditions: Vec<String>,
}

impl Update {
    /// An update that also moves the item's expiry 30 days past `now`.
    fn at(now: EpochMillis) -> Self {
        let mut u = Self::default();
        let ttl = u.val(ttl_secs(now + FLOW_TTL_MS));
        u.set(TTL, &ttl);
        u
    }

    /// The placeholder of an attribute (attribute names here are `[a-z0-9_]`).
    fn name(&mut self, attr: &str) -> String {
        let p = format!("#{attr}");
        self.names.insert(p.clone(), attr.to_owned());
        p
    }

    fn val(&mut self, v: aws_sdk_dynamodb::types::AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    fn set(&mut self, attr: &str, value: &str) {
        let name = self.name(attr);
        self.sets.push(format!("{name} = {value}"));
    }

    fn set_n(&mut self, attr: &str, v: impl ToString) {
        let value = self.val(n(v));
        self.set(attr, &value);
    }

    fn remove(&mut self, attr: &str) {
        let name = self.name(attr);
        self.removes.push(name);
    }

    fn add_n(&mut self, attr: &str, v: impl ToString) {
        let name = self.name(attr);
        let value = self.val(n(v));
        self.adds.push(format!("{name} {value}"));
    }

    /// A condition clause (ANDed with the others), written with placeholders from `name`/`val`.
    fn when(&mut self, clause: impl Into<String>) {
        self.conditions.push(clause.into());
    }

    fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        if !self.adds.is_empty() {
            parts.push(format!("ADD {}", self.adds.join(", ")));
        }
        parts.join(" ")
    }

    fn condition(&self) -> Option<String> {
        (!self.conditions.is_empty())
            .then(|| self.conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND "))
    }
}

/// The condition that an optional number attribute is absent or `op` a value.
fn absent_or(u: &mut Update, attr: &str, op: &str, v: impl ToString) -> String {
    let name = u.name(attr);
    let value = u.val(n(v));
    format!("attribute_not_exists({name}) OR {name} {op} {value}")
}

fn bucket_attr(b: &BucketId) -> String {
    match b {
        BucketId::Key => a::NEXT.to_owned(),
        BucketId::Share(hex) => format!("{}{hex}", a::SHARE_PREFIX),
    }
}

/// Why a change happened, as its history entry says (the fake's words).
fn why(change: &FlowChange) -> String {
    match change {
        FlowChange::Open { why, .. }
        | FlowChange::Reopen { why, .. }
        | FlowChange::Pause { why, .. }
        | FlowChange::Factor { why, .. } => why.clone(),
        FlowChange::HalfOpen { .. } => "open span over: probing".to_owned(),
        FlowChange::Close { .. } => "probes succeeded".to_owned(),
    }
}

/// The state update (and hold it writes, if any) of one change.
fn change_update(change: &FlowChange, now: EpochMillis) -> (Update, Option<(&'static str, EpochMillis)>) {
    let mut u = Update::at(now);
    let closed = u.val(s(BreakerPosition::Closed.code()));
    let open = u.val(s(BreakerPosition::Open.code()));
    let half = u.val(s(BreakerPosition::HalfOpen.code()));
    let br = u.name(a::BREAKER);
    let bu = u.name(a::BREAKER_UNTIL);
    let tok = u.name(a::TOKEN);
    let owns = |u: &mut Update, token: &str| {
        let t = u.val(s(token));
        u.when(format!("{br} = {half} AND {tok} = {t}"));
    };
    let hold = match change {
        FlowChange::Open { trips, until, .. } => {
            u.when(format!("attribute_not_exists({br}) OR {br} = {closed}"));
            u.set(a::BREAKER, &open);
            u.set_n(a::BREAKER_UNTIL, until);
            u.set_n(a::BREAKER_SINCE, now);
            u.set_n(a::TRIPS, trips);
            Some(("open", *until))
        }
        FlowChange::HalfOpen { token, until } => {
            let at = u.val(n(now));
            u.when(format!("({br} = {open} AND {bu} <= {at}) OR ({br} = {half} AND {bu} < {at})"));
            u.set(a::BREAKER, &half);
            u.set_n(a::BREAKER_UNTIL, until);
            u.set_n(a::BREAKER_SINCE, now);
            let t = u.val(s(token));
            u.set(a::TOKEN, &t);
            None
        }
        FlowChange::Close { token } => {
            owns(&mut u, token);
            u.set(a::BREAKER, &closed);
            u.set_n(a::BREAKER_SINCE, now);
            u.set_n(a::CLOSED_AT, now);
            for attr in [a::BREAKER_UNTIL, a::TOKEN, a::WINDOW, a::WINDOW_REQUESTS, a::WINDOW_FAILURES] {
                u.remove(attr);
            }
            Some(("closed", now))
        }
        FlowChange::Reopen { token, trips, until, .. } => {
            owns(&mut u, token);
            u.set(a::BREAKER, &open);
            u.set_n(a::BREAKER_UNTIL, until);
            u.set_n(a::BREAKER_SINCE, now);
            u.set_n(a::TRIPS, trips);
            u.remove(a::TOKEN);
            Some(("open", *until))
        }
        FlowChange::Pause { until, .. } => {
            let c = absent_or(&mut u, a::PAUSED_UNTIL, "<", until);
            u.when(c);
            u.set_n(a::PAUSED_UNTIL, until);
            Some(("paused", *until))
        }
        FlowChange::Factor { from, to, .. } => {
            let f = u.name(a::FACTOR);
            let v = u.val(n(from));
            // An absent factor is the policy's full rate.
            if *from == 1.0 {
                u.when(format!("attribute_not_exists({f}) OR {f} = {v}"));
            } else {
                u.when(format!("{f} = {v}"));
            }
            u.set_n(a::FACTOR, to);
            u.set_n(a::FACTOR_AT, now);
            u.set_n(a::THROTTLES, 0);
            None
        }
    };
    // Placeholders declared above but unused by this change's expressions
    // would be refused by DynamoDB: keep only those the expressions name.
    u.prune();
    (u, hold)
}

impl Update {
    /// Drops name and value placeholders no clause uses.
    fn prune(&mut self) {
        let text = format!("{} {}", self.expression(), self.condition().unwrap_or_default());
        let used = |p: &str| {
            text.match_indices(p)
                .any(|(i, _)| !text[i + p.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        };
        self.names.retain(|p, _| used(p));
        self.values.retain(|p, _| used(p));
    }
}

impl DynamoStore {
    fn state_key(key: &FlowKey) -> Item {
        super::keys::key(flow_pk(key), STATE)
    }

    /// The UpdateItem of `u` on `key`'s state item, returning the item after it.
    fn flow_update(&self, key: &FlowKey, u: Update) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::state_key(key)))
            .update_expression(u.expression())
            .set_condition_expression(u.condition())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(ReturnValue::AllNew)
    }

    /// A conditional write of `key`'s state: the item after it, or the item
    /// as it was when the condition failed (DynamoDB returns it with the failure).
    async fn flow_cas(&self, key: &FlowKey, u: Update) -> Result<Cas, StoreError> {
        let id = flow_pk(key);
        let res = self
            .flow_update(key, u)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Cas::Written(flow_shared_from_item(&id, &out.attributes.unwrap_or_default())?)),
            Err(e) if is_conditional_failure(&e) => {
                let old = match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                    _ => None,
                };
                let old = old.map(|i| flow_shared_from_item(&id, &i)).transpose()?;
                Ok(Cas::Refused(old.unwrap_or_else(FlowShared::new)))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Writes a hold item of the policy partition (every sender reads it with the policies).
    async fn put_hold(
        &self,
        key: &FlowKey,
        kind: &str,
        until: EpochMillis,
        now: EpochMillis,
    ) -> Result<(), StoreError> {
        let mut item = super::keys::key(flows_pk(), hold_sk(key));
        item.extend([
            ("key".into(), s(key.as_str())),
            ("kind".into(), s(kind)),
            ("until".into(), n(until)),
            (TTL.into(), ttl_secs(now + FLOW_TTL_MS)),
        ]);
        self.put(item).send().await.map_err(store_error)?;
        Ok(())
    }

    async fn put_event(&self, key: &FlowKey, event: &FlowEvent) -> Result<(), StoreError> {
        let mut item = super::keys::key(flow_pk(key), hist_sk(event.at));
        item.extend([
            ("at".into(), n(event.at)),
            ("to".into(), s(&event.to)),
            ("why".into(), s(&event.why)),
            (TTL.into(), ttl_secs(event.at + FLOW_TTL_MS)),
        ]);
        if let Some(until) = event.until {
            item.insert("until".into(), n(until));
        }
        self.put(item).send().await.map_err(store_error)?;
        Ok(())
    }
}

impl FlowPolicies for DynamoStore {
    async fn flow_snapshot(&self) -> Result<FlowSnapshot, StoreError> {
        let mut snap = FlowSnapshot::default();
        for item in self.partition_items(flows_pk()).await? {
            let sk = item.get(SK).and_then(|v| v.as_s().ok()).map_or("", String::as_str);
            let read = if sk.starts_with(POLICY_PREFIX) {
                policy_from_item(&item).map(|(k, scope, p)| {
                    snap.policies.insert((k, scope), p);
                })
            } else if sk.starts_with(HOLD_PREFIX) {
                hold_from_item(&item).map(|(k, h)| {
                    snap.holds.insert(k, h);
                })
            } else {
                Ok(())
            };
            if let Err(e) = read {
                // One bad item must not stop every sender's deliveries.
                tracing::warn!(error = %e, sk, "skipping a malformed flow item");
            }
        }
        Ok(snap)
    }

    async fn get_policy(&self, key: &FlowKey, scope: &PolicyScope) -> Result<Option<FlowPolicy>, StoreError> {
        let sk = policy_sk(key, scope);
        let item = self.get_item(super::keys::key(flows_pk(), &sk)).await?;
        item.map(|i| json(&sk, &i, "policy")).transpose()
    }

    async fn put_policy(&self, key: &FlowKey, scope: &PolicyScope, policy: &FlowPolicy) -> Result<bool, StoreError> {
        let mut item = super::keys::key(flows_pk(), policy_sk(key, scope));
        item.extend([
            ("policy".into(), s(to_json(policy))),
            ("key".into(), s(key.as_str())),
            ("scope".into(), s(scope.as_str())),
        ]);
        let out = self.put(item).return_values(ReturnValue::AllOld).send().await.map_err(store_error)?;
        Ok(out.attributes.is_none_or(|old| old.is_empty()))
    }

    async fn delete_policy(&self, key: &FlowKey, scope: &PolicyScope) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(super::keys::key(flows_pk(), policy_sk(key, scope))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.attributes.is_some_and(|old| !old.is_empty()))
    }

    async fn flow_state(
        &self,
        key: &FlowKey,
        history: usize,
    ) -> Result<(Option<FlowShared>, Vec<FlowEvent>), StoreError> {
        let id = flow_pk(key);
        let state = self.get_item(Self::state_key(key)).await?;
        let state = state.map(|i| flow_shared_from_item(&id, &i)).transpose()?;
        if history == 0 {
            return Ok((state, Vec::new()));
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(&id))
            .expression_attribute_values(":prefix", s(HIST_PREFIX))
            .scan_index_forward(false)
            .limit(i32::try_from(history).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(store_error)?;
        let events = out.items().iter().map(event_from_item).collect::<Result<Vec<_>, _>>()?;
        Ok((state, events))
    }
}

impl FlowLimiter for DynamoStore {
    async fn reserve(&self, key: &FlowKey, r: &Reservation) -> Result<Cas, StoreError> {
        let mut u = Update::at(r.now);
        let c = absent_or(&mut u, a::PAUSED_UNTIL, "<=", r.now);
        u.when(c);
        let br = u.name(a::BREAKER);
        let closed = u.val(s(BreakerPosition::Closed.code()));
        u.when(format!("attribute_not_exists({br}) OR {br} = {closed}"));
        for b in &r.buckets {
            let attr = bucket_attr(&b.bucket);
            match b.form {
                BucketForm::Idle { base_us } => {
                    let c = absent_or(&mut u, &attr, "<=", base_us);
                    u.when(c);
                    u.set_n(&attr, base_us + b.add_us);
                }
                BucketForm::Busy { base_us, ceiling_us } => {
                    let name = u.name(&attr);
                    let (base, ceiling, add) = (u.val(n(base_us)), u.val(n(ceiling_us)), u.val(n(b.add_us)));
                    u.when(format!("{name} > {base} AND {name} <= {ceiling}"));
                    u.sets.push(format!("{name} = {name} + {add}"));
                }
            }
        }
        for (slot, value) in &r.leases {
            let attr = a::lease(*slot);
            let c = absent_or(&mut u, &attr, "<", r.now * 1_000);
            u.when(c);
            u.set_n(&attr, value);
        }
        self.flow_cas(key, u).await
    }

    async fn release(&self, key: &FlowKey, leases: &[(u32, i64)]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let one = |held: &[(u32, i64)]| {
            let mut u = Update::at(now_millis());
            for (slot, value) in held {
                let attr = a::lease(*slot);
                let name = u.name(&attr);
                let v = u.val(n(value));
                u.when(format!("{name} = {v}"));
                u.remove(&attr);
            }
            self.flow_update(key, u).return_values(ReturnValue::None).send()
        };
        if applied(one(leases).await)? || leases.len() == 1 {
            return Ok(());
        }
        // Some lease was taken over after it expired: give back the others one by one.
        for lease in leases {
            applied(one(std::slice::from_ref(lease)).await)?;
        }
        Ok(())
    }

    async fn report(
        &self,
        key: &FlowKey,
        tally: &Tally,
        window_start: EpochMillis,
        now: EpochMillis,
    ) -> Result<FlowShared, StoreError> {
        let id = flow_pk(key);
        let throttles = |u: &mut Update| {
            if tally.throttles > 0 {
                u.add_n(a::THROTTLES, tally.throttles);
                u.set_n(a::THROTTLED_AT, now);
            }
        };
        let add_counts = |u: &mut Update| {
            u.add_n(a::WINDOW_REQUESTS, tally.requests);
            u.add_n(a::WINDOW_FAILURES, tally.failures);
        };
        // The window the report belongs to is usually the stored one: add to it.
        let mut same = Update::at(now);
        let w = same.name(a::WINDOW);
        let v = same.val(n(window_start));
        same.when(format!("{w} = {v}"));
        add_counts(&mut same);
        throttles(&mut same);
        // None stored, or an older one: this report starts the window.
        let mut fresh = Update::at(now);
        let c = absent_or(&mut fresh, a::WINDOW, "<", window_start);
        fresh.when(c);
        fresh.set_n(a::WINDOW, window_start);
        fresh.set_n(a::WINDOW_REQUESTS, tally.requests);
        fresh.set_n(a::WINDOW_FAILURES, tally.failures);
        throttles(&mut fresh);
        for u in [same, fresh] {
            match self.flow_update(key, u).send().await {
                Ok(out) => return flow_shared_from_item(&id, &out.attributes.unwrap_or_default()),
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        // A newer window is stored (another sender's clock ahead): count into it.
        let mut newer = Update::at(now);
        add_counts(&mut newer);
        throttles(&mut newer);
        let out = self.flow_update(key, newer).send().await.map_err(store_error)?;
        flow_shared_from_item(&id, &out.attributes.unwrap_or_default())
    }

    async fn change(&self, key: &FlowKey, change: &FlowChange, now: EpochMillis) -> Result<Cas, StoreError> {
        let (u, hold) = change_update(change, now);
        let cas = self.flow_cas(key, u).await?;
        if let Cas::Written(_) = cas {
            if let Some((kind, until)) = hold {
                self.put_hold(key, kind, until, now).await?;
            }
            let until = match change {
                FlowChange::Open { until, .. } | FlowChange::Reopen { until, .. } | FlowChange::Pause { until, .. } => {
                    Some(*until)
                }
                _ => None,
            };
            let event = FlowEvent { at: now, to: change.name().to_owned(), why: why(change), until };
            self.put_event(key, &event).await?;
        }
        Ok(cas)
    }
}
