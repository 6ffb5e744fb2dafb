//! Conversions between socket addresses and the kernel-shaped map types.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use agent_ebpf::Endpoint;

/// Address words as `bpf_sock_addr` holds them: network byte order in
/// memory, IPv4 as v4-mapped IPv6.
fn words(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut out = [0u32; 4];
    for (word, chunk) in out.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

fn ip_from_words(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The target-map key for a destination.
pub fn to_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        ip: words(addr.ip()),
        port: addr.port().to_be(),
        _pad: 0,
    }
}

/// The destination an endpoint stands for (v4-mapped shown as IPv4).
pub fn from_endpoint(ep: &Endpoint) -> SocketAddr {
    SocketAddr::new(ip_from_words(ep.ip), u16::from_be(ep.port))
}

/// A v4-mapped IPv6 address shown as the IPv4 address it maps.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip() {
        for s in ["127.0.0.77:7777", "[::1]:9000", "[2001:db8::5]:5432", "10.0.0.5:5432"] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(from_endpoint(&to_endpoint(addr)), addr);
        }
    }

    #[test]
    fn ipv4_is_stored_v4_mapped_like_the_kernel_does() {
        let ep = to_endpoint("10.0.0.5:5432".parse().unwrap());
        assert!(Endpoint::is_v4_mapped(&ep.ip));
        // user_ip4 holds the address in network byte order: 10.0.0.5 → bytes 0a 00 00 05.
        assert_eq!(ep.ip[3].to_ne_bytes(), [10, 0, 0, 5]);
        assert_eq!(ep.port, 5432u16.to_be());
        let v4_mapped: SocketAddr = "[::ffff:10.0.0.5]:5432".parse().unwrap();
        assert_eq!(to_endpoint(v4_mapped), ep);
    }

    #[test]
    fn canonical_unmaps() {
        let a: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(canonical(a), "127.0.0.1:5".parse::<SocketAddr>().unwrap());
    }
}
