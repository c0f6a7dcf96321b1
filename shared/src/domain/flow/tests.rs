use super::*;

fn tenant() -> TenantId {
    TenantId::parse("tnt_0123456789abcdef").expect("tenant")
}

#[test]
fn keys_read_from_the_api_path_and_the_stored_form() {
    let t = tenant();
    let host = FlowKey::from_path("API.example.com:443", None).expect("host key");
    assert_eq!(host.as_str(), "h:api.example.com:443");
    assert!(host.is_host());
    assert_eq!(host.display(), "api.example.com:443");
    let named = FlowKey::from_path("acme-api", Some(&t)).expect("named key");
    assert_eq!(named.as_str(), "n:tnt_0123456789abcdef:acme-api");
    assert_eq!(named.owner(), Some(t.clone()));
    assert_eq!(named.display(), "acme-api");
    assert_eq!(FlowKey::parse(named.as_str()), Some(named.clone()));
    assert_eq!(FlowKey::from_path("acme-api", None).expect_err("needs a tenant").field, "tenant");
    assert_eq!(FlowKey::from_path("Acme Api", Some(&t)).expect_err("bad name").field, "key");
    assert_eq!(FlowKey::from_path("host:99999", None).expect_err("bad port").field, "key");
    assert_eq!(FlowKey::parse("x:y"), None);
}

#[test]
fn a_ref_names_host_port_and_primary_key() {
    let t = tenant();
    let url = url::Url::parse("https://API.example.com/x").expect("url");
    let r = FlowRef::of(&url, None, &t);
    assert_eq!(r.host, "api.example.com:443");
    assert_eq!(r.primary(), FlowKey::host("api.example.com:443"));
    let r = FlowRef::of(&url::Url::parse("http://127.0.0.1:8080/").expect("url"), Some("acme"), &t);
    assert_eq!(r.host_key().as_str(), "h:127.0.0.1:8080");
    assert_eq!(r.primary().as_str(), "n:tnt_0123456789abcdef:acme");
    let json = serde_json::to_string(&r).expect("json");
    assert_eq!(json, r#"{"h":"127.0.0.1:8080","n":"acme","t":"tnt_0123456789abcdef"}"#);
}

#[test]
fn rates_parse_with_their_bounds() {
    assert_eq!(Rate::parse("10/s"), Ok(Rate { count: 10, period_ms: 1_000 }));
    assert_eq!(Rate::parse("600/m").map(|r| r.per_second()), Ok(10.0));
    assert_eq!(Rate::parse("1000/h").map(|r| r.to_string()), Ok("1000/h".to_owned()));
    assert!(Rate::parse("0/s").is_err());
    assert!(Rate::parse("2000/s").is_err());
    assert!(Rate::parse("10/d").is_err());
    assert!(Rate::parse("ten/s").is_err());
    assert_eq!(Rate::parse("20/s").expect("rate").interval_us(1.0), 50_000);
    assert_eq!(Rate::parse("20/s").expect("rate").interval_us(0.5), 100_000);
}

#[test]
fn policy_input_names_the_field_and_rule() {
    let p = FlowPolicy::parse_input(
        &serde_json::json!({"rate": "20/s", "burst": 5, "parallelism": 3, "breaker": {"min_requests": 4, "window": "1m", "open_min": "2s"}}),
        false,
    )
    .expect("valid");
    assert_eq!(p.rate, Some(Rate { count: 20, period_ms: 1_000 }));
    assert_eq!(p.burst(), 5);
    let b = p.breaker.expect("breaker");
    assert_eq!((b.min_requests, b.window_ms, b.open_min_ms, b.failure_percent), (4, 60_000, 2_000, 70));
    let err = |doc: serde_json::Value, share: bool| FlowPolicy::parse_input(&doc, share).expect_err("invalid");
    assert_eq!(err(serde_json::json!({"rate": "fast"}), false).field, "rate");
    assert_eq!(err(serde_json::json!({"parallelism": 0}), false).field, "parallelism");
    assert_eq!(err(serde_json::json!({"parallelism": 33}), false).field, "parallelism");
    assert_eq!(err(serde_json::json!({"burst": 3}), false).field, "burst");
    assert_eq!(err(serde_json::json!({"speed": 3}), false).code, "unknown_field");
    assert_eq!(err(serde_json::json!({"breaker": {"window": "1s"}}), false).field, "breaker.window");
    assert_eq!(
        err(serde_json::json!({"breaker": {"open_min": "5m", "open_max": "1m"}}), false).field,
        "breaker.open_max"
    );
    assert_eq!(err(serde_json::json!({"breaker": {"failure_percent": 101}}), false).field, "breaker.failure_percent");
    let e = err(serde_json::json!({"breaker": {}}), true);
    assert_eq!((e.code, e.field.as_str()), ("admin_only", "breaker"));
    assert_eq!(err(serde_json::json!([]), false).field, "body");
}

#[test]
fn a_tenant_share_never_exceeds_the_admin() {
    let admin = FlowPolicy::parse_input(&serde_json::json!({"rate": "10/s", "parallelism": 4}), false).expect("admin");
    let ok = FlowPolicy::parse_input(&serde_json::json!({"rate": "300/m", "parallelism": 2}), true).expect("share");
    assert_eq!(ok.check_share(Some(&admin)), Ok(()));
    let over = FlowPolicy::parse_input(&serde_json::json!({"rate": "11/s"}), true).expect("share");
    let e = over.check_share(Some(&admin)).expect_err("above");
    assert_eq!((e.code, e.field.as_str()), ("above_admin_limit", "rate"));
    let over = FlowPolicy::parse_input(&serde_json::json!({"parallelism": 5}), true).expect("share");
    assert_eq!(over.check_share(Some(&admin)).expect_err("above").field, "parallelism");
    let over = FlowPolicy::parse_input(&serde_json::json!({"rate": "5/s", "burst": 2}), true).expect("share");
    assert_eq!(over.check_share(Some(&admin)).expect_err("above").field, "burst");
    assert_eq!(over.check_share(None), Ok(()));
}

#[test]
fn the_breaker_trips_on_density_and_backs_off_up_to_the_ceiling() {
    let s = BreakerSettings::default();
    assert!(!s.trips(9, 9), "fewer than the minimum requests");
    assert!(!s.trips(10, 6), "60 % is under 70 %");
    assert!(s.trips(10, 7));
    let opens: Vec<i64> = (0..7).map(|t| s.open_for(t)).collect();
    assert_eq!(opens, [30_000, 60_000, 120_000, 240_000, 480_000, 600_000, 600_000]);
    assert_eq!(s.window_start(1_000_123), 900_000);
    assert!(!BreakerSettings { enabled: false, ..s }.trips(100, 100));
}

#[test]
fn a_bucket_plan_reserves_up_to_the_horizon() {
    let t = 50_000; // 20/s
    let now = 10_000_000;
    let h = 1_000_000;
    // Idle: base = now, k = 1 + H/T = 21 at most.
    assert_eq!(plan_bucket(None, now, t, 1, h, 100), Some((BucketForm::Idle { base_us: now }, 21)));
    assert_eq!(plan_bucket(Some(now - 5), now, t, 1, h, 4), Some((BucketForm::Idle { base_us: now }, 4)));
    // Burst 5: base is 4 intervals back, so 5 go at once.
    assert_eq!(plan_bucket(None, now, t, 5, h, 100), Some((BucketForm::Idle { base_us: now - 200_000 }, 25)));
    // Busy: next half a second ahead leaves 11 slots in the horizon.
    assert_eq!(
        plan_bucket(Some(now + 500_000), now, t, 1, h, 100),
        Some((BucketForm::Busy { base_us: now, ceiling_us: now + h }, 11))
    );
    // Full past the horizon: hold without a write.
    assert_eq!(plan_bucket(Some(now + h + 1), now, t, 1, h, 10), None);
    assert_eq!(slot_at(now + 21 * t, 21, 0, t), now);
    assert_eq!(slot_at(now + 21 * t, 21, 20, t), now + 20 * t);
}

/// Any interleaving of two senders' reservations, each applying exactly the
/// store's conditions, never grants more than rate + burst slots in any second.
#[test]
fn two_senders_never_overshoot_a_second() {
    let t = 50_000;
    let h = 1_000_000;
    let mut next: Option<i64> = None;
    let mut views = [None::<i64>; 2];
    let mut slots = Vec::new();
    let mut now = 0;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2_000 {
        now += rng.i64(0..60_000);
        let who = rng.usize(0..2);
        let n = rng.u32(1..=10);
        let Some((form, k)) = plan_bucket(views[who], now, t, 1, h, n) else { continue };
        let ok = match form {
            BucketForm::Idle { base_us } => next.is_none_or(|x| x <= base_us),
            BucketForm::Busy { base_us, ceiling_us } => next.is_some_and(|x| x > base_us && x <= ceiling_us),
        };
        if ok {
            let after = match form {
                BucketForm::Idle { base_us } => base_us + i64::from(k) * t,
                BucketForm::Busy { .. } => next.unwrap_or_default() + i64::from(k) * t,
            };
            for i in 0..k {
                slots.push(slot_at(after, k, i, t).max(now));
            }
            next = Some(after);
        }
        views[who] = next;
    }
    slots.sort_unstable();
    let worst = (0..slots.len()).map(|i| slots[i..].iter().take_while(|s| **s < slots[i] + 1_000_000).count()).max();
    assert!(worst.unwrap_or(0) <= 21, "{worst:?} slots in one second");
    assert!(slots.len() > 500, "only {} slots granted", slots.len());
}
