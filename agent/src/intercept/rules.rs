//! What an intercepted connect may reach: targets (redirected), egress deny
//! and allow entries, as address patterns, and the table the kernel looks
//! them up in (`LG_RULES`, longest prefix).
//!
//! A pattern is `ADDRESS:PORT`:
//! - `10.0.0.5:5432`, `[2001:db8::5]:5432`, `db.internal:5432` (every
//!   address the name resolves to at start);
//! - `10.0.0.0/24:5432`, `[fd00::/8]:5432` (a prefix);
//! - `*:5432` (any address, IPv4 and IPv6);
//! - `local:5432` (any address of this host: 127.0.0.0/8, ::1, 0.0.0.0,
//!   ::, and every interface address — a server on this host listens on
//!   all of them);
//! - egress entries may name every port: `10.0.0.0/8:*`.
//!
//! Precedence, as the kernel applies it: rules for the destination's port
//! before rules for every port; among those the longest address prefix;
//! at an equal prefix, the proxy's own address, then a target, then deny,
//! then allow.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
};

use agent_ebpf::{NO_RULE, RULE_PORT_BITS, Rule, RuleAddr, action};

/// An address prefix in the 128-bit space the kernel shows (IPv4
/// v4-mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub ip: Ipv6Addr,
    /// Significant bits of `ip`, 0..=128.
    pub len: u8,
}

impl Prefix {
    pub fn host(ip: IpAddr) -> Prefix {
        Prefix {
            ip: mapped(ip),
            len: 128,
        }
    }

    fn v4(ip: Ipv4Addr, len: u8) -> Prefix {
        Prefix {
            ip: ip.to_ipv6_mapped(),
            len: 96 + len,
        }
        .normalized()
    }

    fn v6(ip: Ipv6Addr, len: u8) -> Prefix {
        Prefix { ip, len }.normalized()
    }

    /// The whole address space, IPv4 and IPv6.
    const ANY: Prefix = Prefix {
        ip: Ipv6Addr::UNSPECIFIED,
        len: 0,
    };

    fn normalized(self) -> Prefix {
        let bits = u128::from(self.ip);
        let mask = if self.len == 0 {
            0
        } else {
            !0u128 << (128 - u32::from(self.len))
        };
        Prefix {
            ip: Ipv6Addr::from(bits & mask),
            len: self.len,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            !0u128 << (128 - u32::from(self.len))
        };
        u128::from(mapped(ip)) & mask == u128::from(self.ip)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{}/{}", self.ip, self.len),
        }
    }
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The address part of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Prefixes (a single address is a /32 or /128).
    Prefixes(Vec<Prefix>),
    /// A host name, resolved when the rules are built.
    Host(String),
    /// Every address of this host.
    Local,
}

/// `ADDRESS:PORT` as written in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub addresses: Addresses,
    /// `None`: every port.
    pub port: Option<u16>,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pattern {
    /// Parses a pattern; `any_port` allows `:*`.
    pub fn parse(text: &str, any_port: bool) -> Result<Pattern, String> {
        let text = text.trim();
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not ADDRESS:PORT"))?;
        let port = match port {
            "*" if any_port => None,
            "*" => return Err(format!("{text:?}: a target needs a port, not *")),
            p => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{text:?}: {p:?} is not a port (1-65535)")),
                Ok(n) => Some(n),
            },
        };
        let addresses = if host == "*" {
            Addresses::Prefixes(vec![Prefix::ANY])
        } else if host == "local" {
            Addresses::Local
        } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Addresses::Prefixes(vec![parse_prefix_v6(inner, text)?])
        } else if host.contains(':') {
            return Err(format!("{text:?}: write IPv6 addresses in brackets, e.g. [::1]:5432"));
        } else if let Some((ip, len)) = host.split_once('/') {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("{text:?}: {ip:?} is not an IPv4 address"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{text:?}: /{len} is not a prefix length (0-32)"))?;
            Addresses::Prefixes(vec![Prefix::v4(ip, len)])
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Addresses::Prefixes(vec![Prefix::host(IpAddr::V4(ip))])
        } else if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            Addresses::Host(host.to_owned())
        } else {
            return Err(format!("{text:?}: {host:?} is not an address, prefix or host name"));
        };
        Ok(Pattern {
            text: text.to_owned(),
            addresses,
            port,
        })
    }

    /// The prefixes this pattern covers now; `local` is this host's
    /// addresses as `local_addresses` lists them.
    pub fn prefixes(&self, local_addresses: &[IpAddr]) -> Result<Vec<Prefix>, String> {
        let mut out = match &self.addresses {
            Addresses::Prefixes(p) => p.clone(),
            Addresses::Host(host) => {
                let port = self.port.unwrap_or(1);
                let found: Vec<Prefix> = (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
                    .map(|sa| Prefix::host(sa.ip()))
                    .collect();
                if found.is_empty() {
                    return Err(format!("{host:?} resolved to no address"));
                }
                found
            }
            Addresses::Local => {
                let mut p = vec![
                    Prefix::v4(Ipv4Addr::new(127, 0, 0, 0), 8),
                    Prefix::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                    Prefix::host(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    Prefix::host(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                ];
                p.extend(local_addresses.iter().map(|ip| Prefix::host(*ip)));
                p
            }
        };
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whether `addr` matches (with the prefixes as resolved).
    pub fn matches(&self, prefixes: &[Prefix], addr: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == addr.port()) && prefixes.iter().any(|p| p.contains(addr.ip()))
    }
}

fn parse_prefix_v6(inner: &str, text: &str) -> Result<Prefix, String> {
    let (ip, len) = match inner.split_once('/') {
        Some((ip, len)) => {
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 128)
                .ok_or_else(|| format!("{text:?}: /{len} is not a prefix length (0-128)"))?;
            (ip, len)
        }
        None => (inner, 128),
    };
    let ip: Ipv6Addr = ip
        .parse()
        .map_err(|_| format!("{text:?}: {ip:?} is not an IPv6 address"))?;
    Ok(match ip.to_ipv4_mapped() {
        // [::ffff:a.b.c.d] is that IPv4 address.
        Some(v4) if len == 128 => Prefix::host(IpAddr::V4(v4)),
        _ => Prefix::v6(ip, len),
    })
}

/// Which kind of rule an entry is, in order of precedence at equal keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The agent's own address: always reachable (a second generation of
    /// programs sees connects the first already redirected).
    Proxy,
    /// `id` is the target's index.
    Target,
    /// `id` is the deny entry's index.
    Deny,
    /// `id` is the allow entry's index.
    Allow,
}

/// What the kernel holds: key (port or every port, prefix) → rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleTable {
    entries: BTreeMap<(Option<u16>, Prefix), (Kind, u32)>,
}

impl RuleTable {
    /// Adds `kind`/`id` for every prefix of a pattern; at an equal key the
    /// entry of higher precedence stays. Returns the other entries found at
    /// equal keys, for conflict reports.
    pub fn add(&mut self, port: Option<u16>, prefixes: &[Prefix], kind: Kind, id: u32) -> Vec<(Kind, u32)> {
        let mut clashes = Vec::new();
        for prefix in prefixes {
            let entry = self.entries.entry((port, *prefix)).or_insert((kind, id));
            if *entry != (kind, id) {
                clashes.push(*entry);
                *entry = (*entry).min((kind, id));
            }
        }
        clashes
    }

    /// The rule the kernel would apply to a connect to `addr`.
    pub fn lookup(&self, addr: SocketAddr) -> Option<(Kind, u32)> {
        let best = |port: Option<u16>| {
            self.entries
                .iter()
                .filter(|((p, prefix), _)| *p == port && prefix.contains(addr.ip()))
                .max_by_key(|((_, prefix), _)| prefix.len)
                .map(|(_, v)| *v)
        };
        best(Some(addr.port())).or_else(|| best(None))
    }

    /// The map entries: LPM key (prefix length, data) → value.
    pub fn kernel_entries(&self) -> impl Iterator<Item = (u32, RuleAddr, Rule)> + '_ {
        self.entries.iter().map(|((port, prefix), (kind, id))| {
            let data = RuleAddr {
                port: port.unwrap_or(0).to_be_bytes(),
                ip: prefix.ip.octets(),
            };
            let action = match kind {
                Kind::Proxy | Kind::Allow => action::ALLOW,
                Kind::Target => action::REDIRECT,
                Kind::Deny => action::DENY,
            };
            let id = if *kind == Kind::Proxy { NO_RULE } else { *id };
            (RULE_PORT_BITS + u32::from(prefix.len), data, Rule { action, id })
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// This host's interface addresses (getifaddrs).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text, true).unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            p("10.0.0.5:5432").addresses,
            Addresses::Prefixes(vec![Prefix::host("10.0.0.5".parse().unwrap())])
        );
        assert_eq!(p("10.0.0.0/8:*").port, None);
        assert_eq!(
            p("[::1]:5432").addresses,
            Addresses::Prefixes(vec![Prefix::host("::1".parse().unwrap())])
        );
        assert_eq!(
            p("[fd00::/8]:1").addresses,
            Addresses::Prefixes(vec![Prefix::v6("fd00::".parse().unwrap(), 8)])
        );
        assert_eq!(
            p("[::ffff:10.0.0.5]:1").addresses,
            p("10.0.0.5:1").addresses,
            "a v4-mapped address is its IPv4 address"
        );
        assert_eq!(p("local:5432").addresses, Addresses::Local);
        assert_eq!(p("db.internal:5432").addresses, Addresses::Host("db.internal".into()));
        assert_eq!(p("*:5432").addresses, Addresses::Prefixes(vec![Prefix::ANY]));
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:x",
            "::1:5432",
            "10.0.0.0/33:1",
            "[::1/129]:1",
            "a b:1",
        ] {
            assert!(Pattern::parse(bad, true).is_err(), "{bad}");
        }
        assert!(Pattern::parse("10.0.0.5:*", false).is_err(), "targets need a port");
        // Host bits beyond the prefix are dropped.
        assert_eq!(p("10.1.2.3/8:1").addresses, p("10.0.0.0/8:1").addresses);
    }

    #[test]
    fn local_covers_loopback_unspecified_and_interfaces() {
        let local = p("local:5432");
        let prefixes = local.prefixes(&["192.0.2.7".parse().unwrap()]).unwrap();
        for hit in [
            "127.0.0.150:5432",
            "127.9.9.9:5432",
            "[::1]:5432",
            "0.0.0.0:5432",
            "[::]:5432",
            "192.0.2.7:5432",
            "[::ffff:127.0.0.151]:5432",
        ] {
            assert!(local.matches(&prefixes, sa(hit)), "{hit}");
        }
        for miss in ["192.0.2.8:5432", "127.0.0.1:5433", "[::2]:5432"] {
            assert!(!local.matches(&prefixes, sa(miss)), "{miss}");
        }
    }

    #[test]
    fn longest_prefix_and_port_first_win() {
        let mut t = RuleTable::default();
        let any = p("*:5432");
        t.add(any.port, &any.prefixes(&[]).unwrap(), Kind::Deny, 0);
        let target = p("127.0.0.150:5432");
        t.add(target.port, &target.prefixes(&[]).unwrap(), Kind::Target, 0);
        let wide = p("10.0.0.0/8:*");
        t.add(wide.port, &wide.prefixes(&[]).unwrap(), Kind::Deny, 1);
        let web = p("10.0.0.0/8:443");
        t.add(web.port, &web.prefixes(&[]).unwrap(), Kind::Allow, 0);

        assert_eq!(t.lookup(sa("127.0.0.150:5432")), Some((Kind::Target, 0)));
        assert_eq!(t.lookup(sa("[::ffff:127.0.0.150]:5432")), Some((Kind::Target, 0)));
        assert_eq!(t.lookup(sa("127.0.0.151:5432")), Some((Kind::Deny, 0)));
        assert_eq!(t.lookup(sa("[::1]:5432")), Some((Kind::Deny, 0)));
        assert_eq!(t.lookup(sa("10.1.1.1:22")), Some((Kind::Deny, 1)));
        assert_eq!(
            t.lookup(sa("10.1.1.1:443")),
            Some((Kind::Allow, 0)),
            "a port's rules come first"
        );
        assert_eq!(t.lookup(sa("192.0.2.1:22")), None);
    }

    #[test]
    fn equal_keys_keep_the_stronger_rule() {
        let mut t = RuleTable::default();
        let prefixes = [Prefix::host("10.0.0.5".parse().unwrap())];
        assert_eq!(t.add(Some(1), &prefixes, Kind::Allow, 3), []);
        assert_eq!(t.add(Some(1), &prefixes, Kind::Target, 1), [(Kind::Allow, 3)]);
        assert_eq!(t.add(Some(1), &prefixes, Kind::Deny, 0), [(Kind::Target, 1)]);
        assert_eq!(t.add(Some(1), &prefixes, Kind::Target, 1), []);
        assert_eq!(t.lookup(sa("10.0.0.5:1")), Some((Kind::Target, 1)));
    }

    #[test]
    fn kernel_keys_put_the_port_first() {
        let mut t = RuleTable::default();
        t.add(
            Some(5432),
            &[Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 8)],
            Kind::Target,
            2,
        );
        t.add(None, &[Prefix::ANY], Kind::Deny, 0);
        let entries: Vec<_> = t.kernel_entries().collect();
        let (len, data, rule) = entries.iter().find(|e| e.2.action == action::REDIRECT).unwrap();
        assert_eq!(*len, 16 + 104);
        assert_eq!(data.port, 5432u16.to_be_bytes());
        assert_eq!(&data.ip[10..13], &[0xff, 0xff, 10]);
        assert_eq!(rule.id, 2);
        let (len, data, _) = entries.iter().find(|e| e.2.action == action::DENY).unwrap();
        assert_eq!((*len, data.port), (16, [0, 0]));
    }

    #[test]
    fn this_host_has_addresses() {
        assert!(local_addresses().iter().any(IpAddr::is_loopback));
    }
}
