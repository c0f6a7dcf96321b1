//! Attempts kept on a unit's state item: a final attempt rides on the
//! transition's own write (`att_<number>`, the attempt's JSON) when the item
//! still fits one write unit, so a first-try delivery costs two writes. The
//! listings merge them with the `ATTEMPT#` items as if they were such items.

use aws_sdk_dynamodb::types::AttributeValue;

use super::codec::{json, opt_s};
use super::errors::store_error;
use super::keys::{ATTEMPT_PREFIX, STATE, attempt_sk, encode_cursor, key, task_pk};
use super::{DynamoStore, Item};
use crate::domain::{Attempt, EpochMillis, TaskId, webhook_id};
use crate::ports::{Page, StoreError};
use crate::resources::TABLE_RANGE_KEY as SK;

/// The prefix of an inline attempt's attribute: `att_<number>`.
pub(super) const INLINE_PREFIX: &str = "att_";
/// One write unit: an item (before and after the write) up to this size.
pub(super) const WRITE_UNIT_BYTES: usize = 1024;
/// What a final transition adds to the state item as it was before its claim,
/// at most, besides the failure reason and the attempt: a longer `status`,
/// `last_status`, the TTL (the claim's `claimed_at`, `claim_token` and
/// `lease_until` go with the transition), with a margin.
const TRANSITION_BYTES: usize = 48;

pub(super) fn inline_name(number: u32) -> String {
    format!("{INLINE_PREFIX}{number}")
}

/// DynamoDB's size of an item (names plus values), a little over rather than under.
pub(super) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len() / 2 + 2,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum::<usize>() + 3,
        AttributeValue::Ns(v) => v.iter().map(|n| n.len() / 2 + 2).sum::<usize>() + 3,
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum::<usize>(),
        _ => 64,
    }
}

/// Whether a final transition carrying `attempt_json` (and `reason`) keeps
/// a state item of `item_bytes` (at its claim) within one write unit.
pub(super) fn fits_inline(item_bytes: usize, number: u32, attempt_json: &str, reason: Option<&str>) -> bool {
    item_bytes > 0
        && item_bytes
            + TRANSITION_BYTES
            + inline_name(number).len()
            + attempt_json.len()
            + reason.map_or(0, |r| "failure_reason".len() + r.len())
            <= WRITE_UNIT_BYTES
}

/// The attempts a state item (of a task, or of one of its runs) carries, with
/// the sort keys their own items would have.
pub(super) fn inline_attempts(
    id: &TaskId,
    run: Option<EpochMillis>,
    item: &Item,
) -> Result<Vec<(String, Attempt)>, StoreError> {
    let mut out = Vec::new();
    for (k, _) in item.iter().filter(|(k, _)| k.starts_with(INLINE_PREFIX)) {
        let Some(number) = k[INLINE_PREFIX.len()..].parse::<u32>().ok() else { continue };
        let doc = json::<serde_json::Value>(id.as_str(), item, k)?;
        let attempt = expand(doc, id, number, opt_s(item, "business_id"))
            .map_err(|e| StoreError::Corrupt { id: id.to_string(), what: format!("attempt {number}: {e}") })?;
        out.push((attempt_sk(run, number), attempt));
    }
    Ok(out)
}

/// The headers the sender puts first on every request of a task, before the
/// task's own: `user-agent`, `courier-task-id`, `courier-attempt` and, for a task
/// with a business id, `courier-business-id`. An inline attempt leaves them out
/// (they are known from its task) and says so in `std`: the user agent sent,
/// and whether a business id followed.
const STD: &str = "std";

/// An attempt's JSON as its state item carries it: without the standard headers
/// and without empty fields (a success fits one write unit with its task).
pub(super) fn compact(attempt: &Attempt, id: &TaskId) -> String {
    let mut doc = serde_json::to_value(attempt).unwrap_or_default();
    let h = &attempt.request_headers;
    let named = |i: usize, name: &str| h.get(i).filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let (Some(agent), Some(task), Some(number)) =
        (named(0, "user-agent"), named(1, "courier-task-id"), named(2, "courier-attempt"))
        && task == id.as_str()
        && number == attempt.number.to_string()
    {
        let business = named(3, "courier-business-id").is_some();
        let rest = &h[if business { 4 } else { 3 }..];
        doc["request_headers"] = serde_json::to_value(shorten(rest, id, attempt.run)).unwrap_or_default();
        doc[STD] = serde_json::json!({"ua": agent, "bid": business});
    }
    if let Some(o) = doc.as_object_mut() {
        o.retain(|_, v| !v.is_null());
        // The number is the attribute's own (`att_<number>`); the fields go by short names.
        o.remove("number");
        for (long, short) in FIELDS {
            if let Some(v) = o.remove(long) {
                o.insert(short.to_owned(), v);
            }
        }
    }
    doc.to_string()
}

/// An inline attempt's fields by short names (about 100 bytes fewer). An
/// attempt written before they came in has the long names and reads the same.
const FIELDS: [(&str, &str); 13] = [
    ("run", "r"),
    ("started_at", "t"),
    ("method", "m"),
    ("url", "u"),
    ("request_headers", "rh"),
    ("request_body_size", "rb"),
    ("response_headers", "h"),
    ("duration_ms", "d"),
    ("status_code", "c"),
    ("outcome", "o"),
    ("response_body", "b"),
    ("error", "e"),
    ("next_delay_ms", "w"),
];

/// Courier's trace and signature headers under short names that no HTTP
/// header can have (a `:` is not a token character): `webhook-id` is left
/// empty when it is the one the task's id (and run) gives. Saves about 80
/// bytes, so that a signed first-try success still fits one write unit.
const SHORT: [(&str, &str); 5] = [
    ("traceparent", ":p"),
    ("tracestate", ":t"),
    ("webhook-id", ":i"),
    ("webhook-timestamp", ":s"),
    ("webhook-signature", ":g"),
];

fn shorten(headers: &[(String, String)], id: &TaskId, run: Option<EpochMillis>) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| match SHORT.iter().find(|(long, _)| long == k) {
            Some(("webhook-id", short)) if *v == webhook_id(id, run) => ((*short).to_owned(), String::new()),
            Some((_, short)) => ((*short).to_owned(), v.clone()),
            None => (k.clone(), v.clone()),
        })
        .collect()
}

fn lengthen(k: String, v: String, id: &TaskId, run: Option<EpochMillis>) -> (String, String) {
    match SHORT.iter().find(|(_, short)| *short == k) {
        Some(("webhook-id", _)) if v.is_empty() => ("webhook-id".to_owned(), webhook_id(id, run)),
        Some((long, _)) => ((*long).to_owned(), v),
        None => (k, v),
    }
}

/// The attempt an inline JSON stands for: the standard headers put back.
fn expand(mut doc: serde_json::Value, id: &TaskId, number: u32, business: Option<&str>) -> Result<Attempt, String> {
    if let Some(o) = doc.as_object_mut() {
        for (long, short) in FIELDS {
            if let Some(v) = o.remove(short) {
                o.insert(long.to_owned(), v);
            }
        }
        o.entry("number").or_insert(number.into());
    }
    if let Some(std) = doc.as_object_mut().and_then(|o| o.remove(STD)) {
        let agent = std["ua"].as_str().ok_or("no user agent")?;
        let mut headers = vec![
            ("user-agent".to_owned(), agent.to_owned()),
            ("courier-task-id".to_owned(), id.to_string()),
            ("courier-attempt".to_owned(), number.to_string()),
        ];
        if std["bid"] == true {
            headers.push(("courier-business-id".to_owned(), business.ok_or("no business id")?.to_owned()));
        }
        let rest: Vec<(String, String)> =
            serde_json::from_value(doc["request_headers"].take()).map_err(|e| e.to_string())?;
        let run = doc["run"].as_i64();
        headers.extend(rest.into_iter().map(|(k, v)| lengthen(k, v, id, run)));
        doc["request_headers"] = serde_json::to_value(headers).map_err(|e| e.to_string())?;
    }
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

/// Merges the attempts of `ATTEMPT#` items (sorted, by sort key) with inline
/// ones into one sorted list; an attempt with both keeps its own item's.
pub(super) fn merge(items: Vec<(String, Attempt)>, inline: Vec<(String, Attempt)>) -> Vec<(String, Attempt)> {
    let mut all = items;
    for (sk, a) in inline {
        if let Err(at) = all.binary_search_by(|(k, _)| k.as_str().cmp(sk.as_str())) {
            all.insert(at, (sk, a));
        }
    }
    all
}

impl DynamoStore {
    /// A page of a task's attempts: its `ATTEMPT#` items merged with those its
    /// state item carries, in the order of the items' sort keys; the cursor is
    /// the last one's sort key, as when every attempt was an item.
    pub(super) async fn attempt_page(
        &self,
        id: &TaskId,
        limit: usize,
        after: Option<String>,
    ) -> Result<Page<Attempt>, StoreError> {
        let mut q = self.task_items(id, ATTEMPT_PREFIX).limit(limit as i32);
        if let Some(sk) = &after {
            q = q.set_exclusive_start_key(Some(key(task_pk(id), sk.clone())));
        }
        let (out, state) = tokio::join!(q.send(), self.get_item(key(task_pk(id), STATE)));
        let out = out.map_err(store_error)?;
        let items = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|i| Ok((opt_s(i, SK).unwrap_or_default().to_owned(), json::<Attempt>(id.as_str(), i, "attempt")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Past the last item read, more items may come first: inline ones wait for a later page.
        let bound = out.last_evaluated_key.as_ref().and(items.last().map(|(sk, _)| sk.clone()));
        let inline = match state? {
            Some(item) => inline_attempts(id, None, &item)?,
            None => Vec::new(),
        };
        let inline = inline
            .into_iter()
            .filter(|(sk, _)| after.as_ref().is_none_or(|a| sk > a) && bound.as_ref().is_none_or(|b| sk <= b))
            .collect();
        let mut all = merge(items, inline);
        let more = all.len() > limit || out.last_evaluated_key.is_some();
        all.truncate(limit);
        let cursor = if more { all.last().map(|(sk, _)| encode_cursor(sk)) } else { None };
        Ok(Page { items: all.into_iter().map(|(_, a)| a).collect(), cursor })
    }

    /// A task's latest attempt: its last `ATTEMPT#` item or the one its state item carries.
    pub(super) async fn latest_attempt(&self, id: &TaskId) -> Result<Option<Attempt>, StoreError> {
        let q = self.task_items(id, ATTEMPT_PREFIX).scan_index_forward(false).limit(1).consistent_read(true);
        let (out, state) = tokio::join!(q.send(), self.get_item(key(task_pk(id), STATE)));
        let out = out.map_err(store_error)?;
        let item = out
            .items
            .unwrap_or_default()
            .first()
            .map(|i| {
                Ok::<_, StoreError>((opt_s(i, SK).unwrap_or_default().to_owned(), json(id.as_str(), i, "attempt")?))
            })
            .transpose()?;
        let inline = match state? {
            Some(item) => inline_attempts(id, None, &item)?,
            None => Vec::new(),
        };
        Ok(item.into_iter().chain(inline).max_by(|a, b| a.0.cmp(&b.0)).map(|(_, a)| a))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::dynamo::codec::{n, s, to_json};

    #[test]
    fn sizes_count_names_and_values() {
        let item: Item = HashMap::from([("pk".into(), s("TASK#x")), ("attempts".into(), n(12))]);
        assert_eq!(item_size(&item), 2 + 6 + 8 + 3);
    }

    #[test]
    fn an_attempt_fits_a_small_item_only() {
        let a = "x".repeat(400);
        assert!(fits_inline(300, 1, &a, None));
        assert!(!fits_inline(600, 1, &a, None));
        assert!(!fits_inline(300, 1, &a, Some(&"r".repeat(300))));
        assert!(!fits_inline(0, 1, &a, None), "an unknown size never fits");
    }

    #[test]
    fn an_inline_attempt_leaves_out_the_standard_headers_and_reads_back_whole() {
        let id = TaskId::generate();
        let mut a = sample(3);
        a.request_headers = vec![
            ("user-agent".into(), "Courier/0.0.9".into()),
            ("courier-task-id".into(), id.to_string()),
            ("courier-attempt".into(), "3".into()),
            ("courier-business-id".into(), "order-1".into()),
            ("content-type".into(), "application/json".into()),
        ];
        let doc = compact(&a, &id);
        assert!(!doc.contains("courier-task-id") && !doc.contains("order-1") && !doc.contains("null"), "{doc}");
        assert!(!doc.contains("request_headers") && !doc.contains("\"number\""), "short field names: {doc}");
        assert!(doc.len() + 120 < to_json(&a).len(), "{} vs {}", doc.len(), to_json(&a).len());
        let item: Item = HashMap::from([(inline_name(3), s(&doc)), ("business_id".into(), s("order-1"))]);
        assert_eq!(inline_attempts(&id, None, &item).expect("read"), vec![(attempt_sk(None, 3), a.clone())]);
        // Trace and signature headers go under short names and come back whole,
        // for a one-off task and a cron run.
        for run in [None, Some(1_796_472_000_000)] {
            let mut signed = a.clone();
            signed.run = run;
            signed.request_headers.extend([
                ("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
                ("tracestate".to_owned(), "congo=t61rcWkgMzE".to_owned()),
                ("webhook-id".to_owned(), webhook_id(&id, run)),
                ("webhook-timestamp".to_owned(), "1796472700".to_owned()),
                ("webhook-signature".to_owned(), "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=".to_owned()),
            ]);
            let doc = compact(&signed, &id);
            assert!(!doc.contains("webhook-") && !doc.contains("trace"), "{doc}");
            assert!(doc.len() + 80 < to_json(&signed).len() - 120, "{doc}");
            let item: Item = HashMap::from([(inline_name(3), s(&doc)), ("business_id".into(), s("order-1"))]);
            assert_eq!(inline_attempts(&id, run, &item).expect("read")[0].1, signed);
            // A webhook id the task's id does not give is kept as it is.
            signed.request_headers[7].1 = "msg_other".into();
            let item: Item =
                HashMap::from([(inline_name(3), s(compact(&signed, &id))), ("business_id".into(), s("order-1"))]);
            assert_eq!(inline_attempts(&id, run, &item).expect("read")[0].1, signed);
        }
        // An attempt written whole (long names, all headers), as before, reads the same.
        let item: Item = HashMap::from([(inline_name(3), s(to_json(&a))), ("business_id".into(), s("order-1"))]);
        assert_eq!(inline_attempts(&id, None, &item).expect("read")[0].1, a);
        // Headers that do not follow the standard pattern are kept as they are.
        for cut in [0, 1, 2] {
            let mut odd = a.clone();
            odd.request_headers.remove(cut);
            let doc = compact(&odd, &id);
            let item: Item = HashMap::from([(inline_name(3), s(&doc)), ("business_id".into(), s("order-1"))]);
            assert_eq!(inline_attempts(&id, None, &item).expect("read")[0].1, odd);
        }
        // Without a business id.
        let mut plain = a.clone();
        plain.request_headers.remove(3);
        let item: Item =
            HashMap::from([(inline_name(3), s(compact(&plain, &TaskId::parse(id.as_str()).expect("id"))))]);
        assert_eq!(inline_attempts(&id, None, &item).expect("read")[0].1, plain);
    }

    fn sample(number: u32) -> Attempt {
        Attempt {
            run: None,
            number,
            started_at: 1_796_472_700_551,
            method: "POST".into(),
            url: "http://127.0.0.1:9/hook".into(),
            request_headers: Vec::new(),
            request_body_size: 7,
            response_headers: vec![("content-length".into(), "2".into())],
            duration_ms: 1,
            status_code: Some(200),
            outcome: crate::domain::Outcome::Success,
            response_body: Some("ok".into()),
            error: None,
            next_delay_ms: None,
        }
    }

    #[test]
    fn merged_attempts_sort_by_their_keys_and_items_win() {
        let at = |number: u32, url: &str| Attempt {
            run: None,
            number,
            started_at: 1,
            method: "POST".into(),
            url: url.into(),
            request_headers: Vec::new(),
            request_body_size: 0,
            response_headers: Vec::new(),
            duration_ms: 1,
            status_code: Some(200),
            outcome: crate::domain::Outcome::Success,
            response_body: None,
            error: None,
            next_delay_ms: None,
        };
        let items = vec![(attempt_sk(None, 1), at(1, "item")), (attempt_sk(None, 3), at(3, "item"))];
        let inline = vec![(attempt_sk(None, 2), at(2, "inline")), (attempt_sk(None, 3), at(3, "inline"))];
        let got: Vec<(u32, String)> = merge(items, inline).into_iter().map(|(_, a)| (a.number, a.url)).collect();
        assert_eq!(got, vec![(1, "item".into()), (2, "inline".into()), (3, "item".into())]);
    }
}
