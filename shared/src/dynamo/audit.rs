//! [`AuditLog`] on DynamoDB. One item per entry (about 250 bytes: one write
//! unit, plus one for its keys-only index entry):
//!
//! - `pk = AUDIT#<tenant>` (`AUDIT#-` for service-wide entries), `sk =
//!   <ms, 15 digits>#<4 hex>`: a tenant's entries newest first, one query;
//! - `gsi1pk = AUDIT#<yyyy-mm-dd>`, `gsi1sk = sk` in the `by-tenant` index:
//!   the admin's view across tenants, one index partition per day, read
//!   newest day first and hydrated with one batch read per page.
//!
//! Failed authentications are one item per source address and minute
//! (`sk = <minute start>#ip:<address>`), its `count` added to by each one.

use super::codec::{get_n, n, opt_s, req_n, s};
use super::errors::{corrupt, store_error};
use super::keys::{decode_cursor, encode_cursor, key};
use super::{DAY_MS, DynamoStore, Item};
use crate::domain::{AuditEntry, AuditOutcome, AuditQuery, EpochMillis, TenantId, now_millis};
use crate::ports::{AuditLog, AuditPage, StoreError};
use crate::resources::{
    INDEX_HASH_KEY as GPK, INDEX_RANGE_KEY as GSK, TABLE_HASH_KEY as PK, TABLE_RANGE_KEY as SK,
    TABLE_TTL_ATTRIBUTE as TTL, TASKS_BY_TENANT_INDEX,
};

/// Items examined per listing call at most (a sparse filter returns a
/// short page with a cursor rather than reading on).
const EXAMINE_CAP: usize = 1_000;

fn audit_pk(tenant: Option<&TenantId>) -> String {
    format!("AUDIT#{}", tenant.map_or("-", |t| t.as_str()))
}

/// `yyyy-mm-dd` (UTC) of a time.
fn day_of(ms: EpochMillis) -> String {
    crate::domain::format_millis(ms)[..10].to_owned()
}

fn day_pk(ms: EpochMillis) -> String {
    format!("AUDIT#{}", day_of(ms))
}

impl DynamoStore {
    fn audit_item(&self, e: &AuditEntry, sk: String) -> Item {
        let mut item = key(audit_pk(e.tenant.as_ref()), sk.clone());
        item.extend([
            (GPK.to_owned(), s(day_pk(e.at))),
            (GSK.to_owned(), s(sk)),
            ("at".to_owned(), n(e.at)),
            ("actor".to_owned(), s(&e.actor)),
            ("action".to_owned(), s(&e.action)),
            ("resource".to_owned(), s(&e.resource)),
            ("outcome".to_owned(), s(e.outcome.as_str())),
            ("status".to_owned(), n(e.status)),
            ("count".to_owned(), n(e.count)),
            (TTL.to_owned(), n((e.at + self.audit_retention_ms) / 1000)),
        ]);
        if let Some(t) = &e.tenant {
            item.insert("tenant".to_owned(), s(t));
        }
        if let Some(ip) = &e.source_ip {
            item.insert("ip".to_owned(), s(ip));
        }
        item
    }
}

fn entry_from(item: &Item) -> Result<AuditEntry, StoreError> {
    let id = format!("{}/{}", opt_s(item, PK).unwrap_or_default(), opt_s(item, SK).unwrap_or_default());
    let text = |k: &str| opt_s(item, k).map(str::to_owned).ok_or_else(|| corrupt(&id, format!("missing `{k}`")));
    let outcome = text("outcome")?;
    Ok(AuditEntry {
        at: req_n(&id, item, "at")?,
        actor: text("actor")?,
        tenant: opt_s(item, "tenant").map(TenantId::parse).transpose().map_err(|e| corrupt(&id, e.to_string()))?,
        action: text("action")?,
        resource: text("resource")?,
        source_ip: opt_s(item, "ip").map(str::to_owned),
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt(&id, format!("outcome `{outcome}`")))?,
        status: req_n(&id, item, "status")?,
        count: get_n(&id, item, "count")?.unwrap_or(1),
    })
}

/// The sort-key range of a time window (inclusive).
fn sk_range(q: &AuditQuery) -> (String, String) {
    let lo = format!("{:015}", q.since.unwrap_or(0).max(0));
    let hi = format!("{:015}~", q.until.unwrap_or(i64::MAX / 2).max(0));
    (lo, hi)
}

impl AuditLog for DynamoStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let sk = format!("{:015}#{:04x}", e.at.max(0), fastrand::u16(..));
        self.put(self.audit_item(e, sk)).send().await.map_err(store_error)?;
        Ok(())
    }

    async fn count_auth_failure(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let minute = e.at - e.at.rem_euclid(60_000);
        let sk = format!("{minute:015}#ip:{}", e.source_ip.as_deref().unwrap_or("unknown"));
        let mut item = self.audit_item(&AuditEntry { at: minute, ..e.clone() }, sk);
        let k = key(
            item.remove(PK).and_then(|v| v.as_s().ok().cloned()).unwrap_or_default(),
            item.remove(SK).and_then(|v| v.as_s().ok().cloned()).unwrap_or_default(),
        );
        item.remove("count");
        // Every attribute but the count is the same for the whole minute
        // (the latest claimed key id wins); the count adds up.
        let mut sets = Vec::new();
        let mut req = self.client.update_item().table_name(&self.table).set_key(Some(k));
        for (i, (name, value)) in item.into_iter().enumerate() {
            sets.push(format!("#a{i} = :v{i}"));
            req = req
                .expression_attribute_names(format!("#a{i}"), name)
                .expression_attribute_values(format!(":v{i}"), value);
        }
        req.update_expression(format!("SET {} ADD #count :one", sets.join(", ")))
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn audit_page(&self, q: &AuditQuery, limit: usize, cursor: Option<&str>) -> Result<AuditPage, StoreError> {
        let cursor = cursor.map(|c| decode_cursor(c).ok_or_else(bad_cursor).and_then(Cursor::parse)).transpose()?;
        match &q.tenant {
            Some(t) => self.tenant_page(q, t, limit, cursor).await,
            None => self.all_page(q, limit, cursor).await,
        }
    }
}

fn bad_cursor() -> StoreError {
    StoreError::Invalid("cursor is not one this listing returned".into())
}

/// Where the next page starts: the day partition (admin view) and the last
/// item's keys.
struct Cursor {
    day: Option<String>,
    pk: String,
    sk: String,
}

impl Cursor {
    fn parse(text: String) -> Result<Self, StoreError> {
        let mut parts = text.splitn(3, '|');
        let (day, pk, sk) = (parts.next(), parts.next(), parts.next());
        match (day, pk, sk) {
            (Some(day), Some(pk), Some(sk)) if pk.starts_with("AUDIT#") && sk.len() <= 200 => {
                Ok(Self { day: (!day.is_empty()).then(|| day.to_owned()), pk: pk.to_owned(), sk: sk.to_owned() })
            }
            _ => Err(bad_cursor()),
        }
    }

    fn encode(day: Option<&str>, pk: &str, sk: &str) -> String {
        encode_cursor(&format!("{}|{pk}|{sk}", day.unwrap_or_default()))
    }
}

impl DynamoStore {
    async fn tenant_page(
        &self,
        q: &AuditQuery,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<AuditPage, StoreError> {
        let pk = audit_pk(Some(tenant));
        let (lo, hi) = sk_range(q);
        let mut start = match cursor {
            Some(c) if c.pk == pk => Some(key(c.pk, c.sk)),
            Some(_) => return Err(bad_cursor()),
            None => None,
        };
        let (mut items, mut examined) = (Vec::new(), 0);
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":lo", s(&lo))
                .expression_attribute_values(":hi", s(&hi))
                .scan_index_forward(false)
                .limit((limit + 1).min(EXAMINE_CAP) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(store_error)?;
            for item in out.items.unwrap_or_default() {
                examined += 1;
                let e = entry_from(&item)?;
                let sk = opt_s(&item, SK).unwrap_or_default().to_owned();
                if q.matches(&e) {
                    items.push(e);
                }
                if items.len() == limit || examined >= EXAMINE_CAP {
                    return Ok(AuditPage { items, cursor: Some(Cursor::encode(None, &pk, &sk)) });
                }
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(AuditPage { items, cursor: None }),
            }
        }
    }

    async fn all_page(&self, q: &AuditQuery, limit: usize, cursor: Option<Cursor>) -> Result<AuditPage, StoreError> {
        let now = now_millis();
        let until = q.until.unwrap_or(now).min(now + DAY_MS);
        let since = q.since.unwrap_or(now - self.audit_retention_ms).max(until - 400 * DAY_MS);
        let (lo, hi) = sk_range(&AuditQuery { since: Some(since), until: Some(until), ..q.clone() });
        let mut day_ms = until;
        let mut start: Option<Item> = None;
        if let Some(c) = cursor {
            let day = c.day.ok_or_else(bad_cursor)?;
            let ms = crate::domain::parse_time("cursor", &format!("{day}T00:00:00Z")).map_err(|_| bad_cursor())?;
            day_ms = ms;
            let mut k = key(c.pk, c.sk.clone());
            k.extend([(GPK.to_owned(), s(format!("AUDIT#{day}"))), (GSK.to_owned(), s(c.sk))]);
            start = Some(k);
        }
        let (mut items, mut examined) = (Vec::new(), 0usize);
        while day_of(day_ms) >= day_of(since) {
            let gpk = day_pk(day_ms);
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(TASKS_BY_TENANT_INDEX)
                    .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
                    .expression_attribute_names("#pk", GPK)
                    .expression_attribute_names("#sk", GSK)
                    .expression_attribute_values(":pk", s(&gpk))
                    .expression_attribute_values(":lo", s(&lo))
                    .expression_attribute_values(":hi", s(&hi))
                    .scan_index_forward(false)
                    .limit((limit + 1).min(100) as i32)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(store_error)?;
                let keys: Vec<Item> = out
                    .items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| Some(key(opt_s(i, PK)?, opt_s(i, SK)?)))
                    .collect();
                let found = self.batch_get_keys(keys.clone()).await?;
                for k in &keys {
                    let (pk, sk) = (opt_s(k, PK).unwrap_or_default(), opt_s(k, SK).unwrap_or_default());
                    examined += 1;
                    // Gone between the index read and the batch read: expired.
                    if let Some(item) = found.get(&(pk.to_owned(), sk.to_owned())) {
                        let e = entry_from(item)?;
                        if q.matches(&e) {
                            items.push(e);
                        }
                    }
                    if items.len() == limit || examined >= EXAMINE_CAP {
                        return Ok(AuditPage { items, cursor: Some(Cursor::encode(Some(&day_of(day_ms)), pk, sk)) });
                    }
                }
                match out.last_evaluated_key {
                    Some(k) => start = Some(k),
                    None => break,
                }
            }
            day_ms -= DAY_MS;
        }
        Ok(AuditPage { items, cursor: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_sort_keys_order_entries_by_time() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_pk(DAY_MS + 5), "AUDIT#1970-01-02");
        let (lo, hi) = sk_range(&AuditQuery { since: Some(1_000), until: Some(2_000), ..Default::default() });
        let inside = format!("{:015}#{:04x}", 2_000, 0xffff);
        assert!(lo.as_str() <= inside.as_str() && inside.as_str() <= hi.as_str());
        let after = format!("{:015}#0000", 2_001);
        assert!(after.as_str() > hi.as_str());
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let c = Cursor::encode(Some("2026-01-02"), "AUDIT#tnt_0123456789abcdef", "000000000000001#00ff");
        let back = Cursor::parse(decode_cursor(&c).expect("base64")).expect("cursor");
        assert_eq!(back.day.as_deref(), Some("2026-01-02"));
        assert_eq!(back.sk, "000000000000001#00ff");
        assert!(Cursor::parse("x|TASK#1|y".into()).is_err());
    }
}
