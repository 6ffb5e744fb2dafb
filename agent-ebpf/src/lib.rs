//! Map keys and values shared by the eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout byte for byte. Addresses are kept as the kernel exposes them in
//! `bpf_sock_addr`: four network-order words, IPv4 stored v4-mapped
//! (`::ffff:a.b.c.d`), so one map serves connect4, connect6 and AF_INET6
//! sockets that connect to v4-mapped addresses.
#![no_std]

/// Bumped whenever a map's key or value layout changes. Pinned maps live under
/// a directory named after it, so an upgraded agent never reinterprets a map
/// written by an older layout.
pub const LAYOUT_VERSION: u32 = 1;

/// Names of the maps, as pinned under `<pin_dir>/v<LAYOUT_VERSION>/maps/`.
pub mod maps {
    pub const TARGETS: &str = "LG_TARGETS";
    pub const BY_COOKIE: &str = "LG_BY_COOKIE";
    pub const BY_SOURCE: &str = "LG_BY_SOURCE";
}

/// Names of the programs (the functions in `main.rs`).
pub mod programs {
    pub const CONNECT4: &str = "lg_connect4";
    pub const CONNECT6: &str = "lg_connect6";
    pub const GETPEERNAME4: &str = "lg_getpeername4";
    pub const GETPEERNAME6: &str = "lg_getpeername6";
    pub const SOCK_OPS: &str = "lg_sock_ops";
    pub const SOCK_RELEASE: &str = "lg_sock_release";
}

/// Capacity of the per-connection maps. LRU: under churn the oldest records
/// go first, and a connection whose record was evicted is refused by the
/// proxy (fail closed), never sent direct.
pub const MAX_CONNECTIONS: u32 = 65_536;
/// Capacity of the target map.
pub const MAX_TARGETS: u32 = 4_096;

/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as stored in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An IP address and TCP port as the kernel shows them to cgroup hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address words in network byte order (IPv4 v4-mapped).
    pub ip: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    pub _pad: u16,
}

impl Endpoint {
    /// Address words of the v4-mapped form of `ip4` (network byte order).
    pub const fn v4_mapped(ip4: u32) -> [u32; 4] {
        [0, 0, V4_MAPPED_WORD, ip4]
    }

    pub const fn is_v4_mapped(ip: &[u32; 4]) -> bool {
        ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
    }
}

/// What connect4/connect6 learned about an intercepted socket: where it meant
/// to go and who the kernel saw asking.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectRecord {
    /// The destination the client asked for.
    pub original: Endpoint,
    /// Process id (thread-group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (inode of the cgroup directory) of the caller.
    pub cgroup_id: u64,
    /// Socket cookie of the client socket.
    pub cookie: u64,
    /// `comm` of the calling thread, NUL padded.
    pub comm: [u8; 16],
}

/// Key of the by-source map: the client socket's local address, which the
/// proxy sees as the peer of the accepted socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Address words in network byte order (IPv4 v4-mapped).
    pub ip: [u32; 4],
    /// Port in HOST byte order (as `bpf_sock_ops.local_port` gives it).
    pub port: u16,
    pub _pad: u16,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::SourceKey {}
}
