//! The guard's rules on addresses and allow-list entries, by example.

use super::*;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn public() -> TargetGuard {
    TargetGuard::default()
}

fn local() -> TargetGuard {
    TargetGuard::new(TargetPolicy::LocalOnly, vec![])
}

#[test]
fn public_refuses_every_special_ipv4_range_at_both_ends() {
    let cases = [
        ("0.0.0.0", "0.255.255.255", "this network"),
        ("10.0.0.0", "10.255.255.255", "RFC 1918"),
        ("100.64.0.0", "100.127.255.255", "CGNAT"),
        ("127.0.0.0", "127.255.255.255", "loopback"),
        ("169.254.0.0", "169.254.255.255", "link-local"),
        ("172.16.0.0", "172.31.255.255", "RFC 1918"),
        ("192.0.0.0", "192.0.0.255", "IETF"),
        ("192.0.2.0", "192.0.2.255", "TEST-NET-1"),
        ("192.88.99.0", "192.88.99.255", "6to4 relay"),
        ("192.168.0.0", "192.168.255.255", "RFC 1918"),
        ("198.18.0.0", "198.19.255.255", "benchmarking"),
        ("198.51.100.0", "198.51.100.255", "TEST-NET-2"),
        ("203.0.113.0", "203.0.113.255", "TEST-NET-3"),
        ("224.0.0.0", "239.255.255.255", "multicast"),
        ("240.0.0.0", "255.255.255.254", "reserved"),
        ("255.255.255.255", "255.255.255.255", "broadcast"),
    ];
    for (first, last, why) in cases {
        for a in [first, last] {
            let range = blocked_range(v4(a)).unwrap_or_else(|| panic!("{a} should be refused"));
            assert!(range.contains(why), "{a}: {range} should mention {why}");
        }
    }
    assert!(blocked_range(v4("169.254.169.254")).is_some_and(|r| r.contains("metadata")));
    assert!(blocked_range(v4("169.254.170.2")).is_some_and(|r| r.contains("container credentials")));
}

#[test]
fn public_allows_the_addresses_just_outside_each_range() {
    for a in [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.0",
        "192.0.3.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.99.255",
        "203.0.112.255",
        "223.255.255.255",
        "8.8.8.8",
        "93.184.216.34",
    ] {
        assert_eq!(blocked_range(v4(a)), None, "{a} is public");
    }
}

#[test]
fn public_refuses_special_ipv6_ranges_and_ipv4_in_disguise() {
    let cases = [
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fc00::1", "unique local"),
        ("fd00:ec2::254", "unique local"),
        ("fdff:ffff::1", "unique local"),
        ("fe80::1", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:169.254.169.254", "IPv4-mapped"),
        ("::ffff:10.1.2.3", "IPv4-mapped"),
        ("::ffff:0.0.0.0", "IPv4-mapped"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::192.168.1.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("64:ff9b::808:808", "NAT64"),
        ("64:ff9b:1::1", "NAT64"),
        ("2002:7f00:1::", "6to4"),
        ("2002:808:808::1", "6to4"),
        ("2001::1", "Teredo"),
        ("2001:0:ffff:ffff::1", "Teredo"),
        ("2001:db8::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("2001:20::1", "ORCHIDv2"),
        ("3fff::1", "documentation"),
        ("100::1", "reserved"),
        ("fec0::1", "reserved"),
        ("4000::1", "reserved"),
    ];
    for (a, why) in cases {
        let range = blocked_range(v6(a)).unwrap_or_else(|| panic!("{a} should be refused"));
        assert!(range.contains(why), "{a}: {range} should mention {why}");
    }
}

#[test]
fn public_allows_global_ipv6_and_mapped_public_ipv4() {
    for a in ["2606:4700::1111", "2a00:1450:4001::200e", "2001:4860::8888", "::ffff:8.8.8.8", "::8.8.8.8"] {
        assert_eq!(blocked_range(v6(a)), None, "{a} is public");
    }
}

#[test]
fn local_only_allows_loopback_alone() {
    let g = local();
    for a in [v4("127.0.0.1"), v4("127.255.0.9"), v6("::1"), v6("::ffff:127.0.0.1")] {
        assert_eq!(g.check_addr(a, Some(80)), Ok(()), "{a}");
    }
    for a in [v4("8.8.8.8"), v4("10.0.0.1"), v4("0.0.0.0"), v6("::"), v6("fe80::1"), v6("2606:4700::1111")] {
        assert!(g.check_addr(a, Some(80)).is_err(), "{a} is not loopback");
    }
    assert_eq!(
        g.check_addr(v4("8.8.8.8"), Some(443)),
        Err(Blocked("8.8.8.8 is not loopback (policy local-only)".into()))
    );
    assert_eq!(
        public().check_addr(v4("127.0.0.1"), Some(80)).map_err(|b| b.to_string()),
        Err("blocked: 127.0.0.1 is loopback (policy public)".into())
    );
}

#[test]
fn the_url_parser_turns_odd_ipv4_spellings_into_the_address_they_mean() {
    for s in [
        "http://127.1:8080/",
        "http://2130706433:8080/",
        "http://0x7f.0.0.1:8080/",
        "http://0x7f.1:8080/",
        "http://0177.0.0.1:8080/",
        "http://0x7F000001:8080/",
        "http://127.0.0.1.:8080/",
    ] {
        let url = url::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(url.host(), Some(url::Host::Ipv4(Ipv4Addr::LOCALHOST)), "{s}");
        assert!(public().check_url(&url).is_err(), "{s} is loopback");
        assert_eq!(local().check_url(&url), Ok(()), "{s} is loopback");
    }
    let zero = url::Url::parse("http://0:80/").expect("parses");
    assert_eq!(zero.host(), Some(url::Host::Ipv4(Ipv4Addr::UNSPECIFIED)));
    let mapped = url::Url::parse("http://[::ffff:127.0.0.1]:80/").expect("parses");
    assert!(public().check_url(&mapped).is_err());
    let name = url::Url::parse("http://LOCALHOST:80/").expect("parses");
    assert_eq!(public().check_url(&name), Ok(()), "names are judged when resolved");
    let ftp = url::Url::parse("ftp://example.com/").expect("parses");
    assert!(public().check_url(&ftp).is_err());
}

#[test]
fn allow_list_entries_parse_in_every_documented_form() {
    let cases = [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.2.3:8080", "10.1.2.3:8080"),
        ("10.0.0.0/8:8080", "10.0.0.0/8:8080"),
        ("fd00::/8", "fd00::/8"),
        ("::1", "::1"),
        ("[::1]:8080", "[::1]:8080"),
        ("[fd00::/8]:443", "[fd00::/8]:443"),
        ("Hooks.Internal.", "hooks.internal"),
        ("hooks.internal:8443", "hooks.internal:8443"),
        ("127.1:9000", "127.0.0.1:9000"),
    ];
    for (input, shown) in cases {
        let e = AllowEntry::parse(input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.to_string(), shown, "{input}");
    }
    for bad in ["10.0.0.0/33", "10.1.2.3:0", "10.1.2.3:99999", "[::1", "[::1]8080", "[10.0.0.1]:80", ":80", "a b"] {
        assert!(AllowEntry::parse(bad).is_err(), "{bad} should be rejected");
    }
    let list = TargetGuard::parse_allowlist(" 10.0.0.0/8 , ,hooks.internal:8443,").expect("valid");
    assert_eq!(list.len(), 2);
    let e = TargetGuard::parse_allowlist("10.0.0.0/8,nope:x").expect_err("bad port");
    assert_eq!(e.entry, "nope:x");
}

#[test]
fn the_allow_list_lets_exactly_its_addresses_and_ports_through() {
    let allow = TargetGuard::parse_allowlist("127.0.0.1:8080,10.0.0.0/8,[fd00::/8]:443").expect("valid");
    let g = TargetGuard::new(TargetPolicy::Public, allow);
    assert_eq!(g.check_addr(v4("127.0.0.1"), Some(8080)), Ok(()));
    assert!(g.check_addr(v4("127.0.0.1"), Some(8081)).is_err(), "another port");
    assert!(g.check_addr(v4("127.0.0.1"), None).is_err(), "an unknown port matches no ported entry");
    assert!(g.check_addr(v4("127.0.0.2"), Some(8080)).is_err(), "another address");
    assert_eq!(g.check_addr(v6("::ffff:127.0.0.1"), Some(8080)), Ok(()), "the mapped form is the address");
    assert_eq!(g.check_addr(v4("10.9.8.7"), Some(1)), Ok(()));
    assert_eq!(g.check_addr(v4("10.9.8.7"), None), Ok(()));
    assert_eq!(g.check_addr(v6("fd12::1"), Some(443)), Ok(()));
    assert!(g.check_addr(v6("fd12::1"), Some(80)).is_err());
    assert!(g.check_addr(v4("169.254.169.254"), Some(80)).is_err());
}

#[test]
fn resolved_addresses_are_filtered_and_names_on_the_list_pass() {
    let sa = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
    let g = public();
    let mixed = [sa("127.0.0.1:0"), sa("93.184.216.34:0"), sa("[::1]:0")];
    assert_eq!(g.filter_resolved("rebind.example", Some(80), mixed), Ok(vec![sa("93.184.216.34:0")]));
    assert_eq!(
        g.filter_resolved("localhost", Some(80), [sa("127.0.0.1:0"), sa("[::1]:0")]),
        Err(Blocked("localhost resolves only to refused addresses (127.0.0.1 is loopback; policy public)".into()))
    );
    let named =
        TargetGuard::new(TargetPolicy::Public, TargetGuard::parse_allowlist("hooks.internal:8443").expect("valid"));
    assert_eq!(named.filter_resolved("HOOKS.internal.", Some(8443), [sa("10.0.0.5:0")]), Ok(vec![sa("10.0.0.5:0")]));
    assert!(named.filter_resolved("hooks.internal", Some(80), [sa("10.0.0.5:0")]).is_err());
    assert!(local().filter_resolved("example.com", Some(80), [sa("93.184.216.34:0")]).is_err());
    assert!(g.filter_resolved("empty.example", Some(80), []).is_err());
}

#[test]
fn policies_parse_by_name() {
    assert_eq!(TargetPolicy::parse("public"), Some(TargetPolicy::Public));
    assert_eq!(TargetPolicy::parse("local-only"), Some(TargetPolicy::LocalOnly));
    assert_eq!(TargetPolicy::parse("Public"), None);
    assert_eq!(TargetPolicy::parse("off"), None);
}
