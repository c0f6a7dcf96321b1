//! The target guard's rules (SSRF): which addresses a task may reach.
//!
//! Pure: this module judges address *values*; the sender applies it to the
//! addresses a name resolves to at connect time, to IP-literal URLs before
//! sending and to every redirect hop, and the API to literal addresses at
//! create time. Under [`TargetPolicy::Public`] (the deployed default) every
//! address that is not globally reachable is refused: loopback, private,
//! link-local (instance metadata, container credentials), CGNAT, reserved,
//! documentation and the IPv6 forms that embed or translate IPv4.
//! [`TargetPolicy::LocalOnly`] allows loopback alone, so a local stack sends
//! nothing off the machine. Allow-list entries are allowed despite the policy.
//!
//! Odd IPv4 spellings (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`) need
//! no code here: the `url` crate parses hosts as the URL standard does, so a
//! URL's host is already the address it means (tested in `tests.rs`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which addresses tasks may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetPolicy {
    /// Globally reachable addresses only (the deployed default).
    #[default]
    Public,
    /// Loopback only: nothing leaves the machine (local stacks and tests).
    LocalOnly,
}

impl TargetPolicy {
    /// Parses `public` or `local-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "local-only" => Some(Self::LocalOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::LocalOnly => "local-only",
        }
    }
}

/// What an allow-list entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AllowHost {
    /// An address block (a single address is a /32 or /128).
    Net { base: IpAddr, prefix: u8 },
    /// A host name, lowercase, without a trailing dot.
    Name(String),
}

/// One allow-list entry: a CIDR block or a host name, optionally one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    host: AllowHost,
    port: Option<u16>,
}

/// An allow-list entry that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("allow-list entry `{entry}`: {rule}")]
pub struct InvalidAllowEntry {
    pub entry: String,
    pub rule: &'static str,
}

impl AllowEntry {
    /// Parses one entry: `10.0.0.0/8`, `10.1.2.3:8080`, `10.0.0.0/8:8080`,
    /// `fd00::/8`, `[fd00::/8]:443`, `[::1]:8080`, `hooks.internal`,
    /// `hooks.internal:8443`. A bare IPv6 entry has no port; brackets give it one.
    pub fn parse(entry: &str) -> Result<Self, InvalidAllowEntry> {
        let bad = |rule| InvalidAllowEntry { entry: entry.to_owned(), rule };
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("`[` without `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected `:port` after `]`"))?),
            };
            if !inner.contains(':') {
                return Err(bad("brackets hold an IPv6 address or block"));
            }
            (inner, port)
        } else if entry.matches(':').count() > 1 {
            (entry, None)
        } else {
            match entry.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (entry, None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("port must be 1 to 65535")))
            .transpose()?;
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        let host = match host.split_once('/') {
            Some((addr, prefix)) => {
                let base: IpAddr = addr.parse().map_err(|_| bad("a CIDR block needs an IP address before `/`"))?;
                let max = if base.is_ipv4() { 32 } else { 128 };
                let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| bad("prefix too long"))?;
                AllowHost::Net { base, prefix }
            }
            None if host.contains(':') => {
                let base: Ipv6Addr = host.parse().map_err(|_| bad("not an IPv6 address"))?;
                AllowHost::Net { base: IpAddr::V6(base), prefix: 128 }
            }
            // The URL parser's host rules: odd IPv4 spellings become the address, names are lowercased.
            None => match url::Host::parse(host).map_err(|_| bad("not a host name or address"))? {
                url::Host::Ipv4(a) => AllowHost::Net { base: IpAddr::V4(a), prefix: 32 },
                url::Host::Ipv6(a) => AllowHost::Net { base: IpAddr::V6(a), prefix: 128 },
                url::Host::Domain(d) => AllowHost::Name(d.trim_end_matches('.').to_owned()),
            },
        };
        Ok(Self { host, port })
    }

    fn port_matches(&self, port: Option<u16>) -> bool {
        self.port.is_none() || self.port == port
    }

    fn matches_addr(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let AllowHost::Net { base, prefix } = self.host else { return false };
        self.port_matches(port) && in_block(ip, base, prefix)
    }

    fn matches_name(&self, name: &str, port: Option<u16>) -> bool {
        matches!(&self.host, AllowHost::Name(n) if n == name) && self.port_matches(port)
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            AllowHost::Net { base, prefix } if *prefix == if base.is_ipv4() { 32 } else { 128 } => base.to_string(),
            AllowHost::Net { base, prefix } => format!("{base}/{prefix}"),
            AllowHost::Name(n) => n.clone(),
        };
        match (self.port, host.contains(':')) {
            (None, _) => f.write_str(&host),
            (Some(p), true) => write!(f, "[{host}]:{p}"),
            (Some(p), false) => write!(f, "{host}:{p}"),
        }
    }
}

/// A target the guard refuses, with the reason (shown in the attempt and the task's failure).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("blocked: {0}")]
pub struct Blocked(pub String);

/// The policy and the allow-list, read once at cold start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetGuard {
    pub policy: TargetPolicy,
    allow: Vec<AllowEntry>,
}

impl TargetGuard {
    pub fn new(policy: TargetPolicy, allow: Vec<AllowEntry>) -> Self {
        Self { policy, allow }
    }

    /// Parses a comma-separated allow-list (blank entries ignored).
    pub fn parse_allowlist(list: &str) -> Result<Vec<AllowEntry>, InvalidAllowEntry> {
        list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(AllowEntry::parse).collect()
    }

    pub fn allowlist(&self) -> &[AllowEntry] {
        &self.allow
    }

    /// Judges one address. `port` is the port connected to; `None` when it is
    /// not known (then only entries without a port apply).
    pub fn check_addr(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Blocked> {
        match self.refusal(ip, port) {
            None => Ok(()),
            Some(range) => Err(Blocked(format!("{} is {range} (policy {})", show(ip), self.policy.as_str()))),
        }
    }

    /// Why the policy refuses `ip` on `port`, unless the allow-list lets it through.
    fn refusal(&self, ip: IpAddr, port: Option<u16>) -> Option<&'static str> {
        let range = match self.policy {
            TargetPolicy::Public => blocked_range(ip),
            TargetPolicy::LocalOnly if is_loopback(ip) => None,
            TargetPolicy::LocalOnly => Some(blocked_range(ip).unwrap_or("not loopback")),
        }?;
        (!self.allow.iter().any(|e| e.matches_addr(ip, port))).then_some(range)
    }

    /// Judges a URL before any connection: its scheme, and its host when that
    /// is an address (names are judged on their resolved addresses at connect
    /// time, see [`TargetGuard::filter_resolved`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Blocked> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Blocked(format!("scheme {} is not http or https", url.scheme())));
        }
        let port = url.port_or_known_default();
        match url.host() {
            Some(url::Host::Ipv4(a)) => self.check_addr(IpAddr::V4(a), port),
            Some(url::Host::Ipv6(a)) => self.check_addr(IpAddr::V6(a), port),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Blocked("the URL names no host".to_owned())),
        }
    }

    /// Keeps the addresses `name` resolved to that may be reached on `port`
    /// (`None`: unknown). A name on the allow-list keeps them all. None left:
    /// [`Blocked`], naming the first refused address and why.
    pub fn filter_resolved(
        &self,
        name: &str,
        port: Option<u16>,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Blocked> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        if self.allow.iter().any(|e| e.matches_name(&name, port)) {
            return Ok(addrs);
        }
        let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| self.refusal(a.ip(), port).is_none());
        match (kept.is_empty(), refused.first()) {
            (false, _) => Ok(kept),
            (true, Some(first)) => {
                let range = self.refusal(first.ip(), port).unwrap_or("refused");
                Err(Blocked(format!(
                    "{name} resolves only to refused addresses ({} is {range}; policy {})",
                    show(first.ip()),
                    self.policy.as_str()
                )))
            }
            (true, None) => Err(Blocked(format!("{name} resolves to no address"))),
        }
    }
}

/// An address as written in a URL (IPv6 in brackets).
fn show(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn in_block(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix == 0 || (u32::from(a) ^ u32::from(b)) >> (32 - u32::from(prefix)) == 0,
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            prefix == 0 || (u128::from(a) ^ u128::from(b)) >> (128 - u32::from(prefix)) == 0
        }
        // A v4-mapped address is the IPv4 address it carries.
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|m| in_block(IpAddr::V4(m), base, prefix)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Loopback as `local-only` allows it: 127.0.0.0/8, `::1` and IPv4-mapped 127/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// The special-purpose IPv4 blocks (RFC 6890 and later), most specific first.
const V4_BLOCKS: &[([u8; 4], u8, &str)] = &[
    ([255, 255, 255, 255], 32, "broadcast"),
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private (RFC 1918)"),
    ([100, 64, 0, 0], 10, "shared address space (CGNAT, 100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16: instance metadata, container credentials)"),
    ([172, 16, 0, 0], 12, "private (RFC 1918)"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0.0/24)"),
    ([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private (RFC 1918)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    ([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
];

/// The special-purpose IPv6 blocks inside 2000::/3 (everything outside it but
/// the IPv4-carrying forms is refused as reserved).
const V6_GLOBAL_BLOCKS: &[(u128, u8, &str)] = &[
    (0x2001_0000 << 96, 32, "Teredo (2001::/32)"),
    (0x2001_0002 << 96, 48, "benchmarking (2001:2::/48)"),
    (0x2001_0010 << 96, 28, "ORCHID (2001:10::/28)"),
    (0x2001_0020 << 96, 28, "ORCHIDv2 (2001:20::/28)"),
    (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
    (0x2002 << 112, 16, "6to4 (2002::/16)"),
    (0x3fff << 112, 20, "documentation (3fff::/20)"),
];

/// Why `public` refuses `ip`, or `None` when it is globally reachable.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => blocked_v4(a),
        IpAddr::V6(a) => blocked_v6(a),
    }
}

fn blocked_v4(a: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKS
        .iter()
        .find(|(base, prefix, _)| in_block(IpAddr::V4(a), IpAddr::V4(Ipv4Addr::from(*base)), *prefix))
        .map(|(_, _, name)| *name)
}

fn blocked_v6(a: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(a);
    let within = |base: u128, prefix: u32| (bits ^ base) >> (128 - prefix) == 0;
    if a.is_unspecified() {
        return Some("unspecified (::)");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d reaches the IPv4 address itself; ::a.b.c.d (deprecated
    // IPv4-compatible) may be routed to it: judge both as that address.
    if let Some(v4) = a.to_ipv4_mapped() {
        return blocked_v4(v4).map(|_| "an IPv4-mapped form of a refused IPv4 address");
    }
    if within(0, 96) {
        let v4 = Ipv4Addr::from(bits as u32);
        return blocked_v4(v4).map(|_| "an IPv4-compatible form of a refused IPv4 address");
    }
    if within(0x0064_ff9b << 96, 96) || within(0x0064_ff9b_0001 << 80, 48) {
        return Some("NAT64 (64:ff9b::/96)");
    }
    if within(0xfc00 << 112, 7) {
        return Some("unique local (fc00::/7)");
    }
    if within(0xfe80 << 112, 10) {
        return Some("link-local (fe80::/10)");
    }
    if within(0xff00 << 112, 8) {
        return Some("multicast (ff00::/8)");
    }
    if !within(0x2000 << 112, 3) {
        return Some("reserved (outside global unicast 2000::/3)");
    }
    V6_GLOBAL_BLOCKS.iter().find(|(base, prefix, _)| within(*base, u32::from(*prefix))).map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests;
