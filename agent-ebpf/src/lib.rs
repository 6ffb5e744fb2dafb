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
pub const LAYOUT_VERSION: u32 = 2;

/// Names of the maps, as pinned under `<pin_dir>/v<LAYOUT_VERSION>/maps/`.
pub mod maps {
    pub const RULES: &str = "LG_RULES";
    pub const BY_COOKIE: &str = "LG_BY_COOKIE";
    pub const LISTENERS: &str = "LG_LISTENERS";
    pub const STATE: &str = "LG_STATE";
    pub const EVENTS: &str = "LG_EVENTS";
    pub const UNIX: &str = "LG_UNIX";
}

/// Names of the programs (the functions in `main.rs`).
pub mod programs {
    pub const CONNECT4: &str = "lg_connect4";
    pub const CONNECT6: &str = "lg_connect6";
    pub const SENDMSG4: &str = "lg_sendmsg4";
    pub const SENDMSG6: &str = "lg_sendmsg6";
    pub const GETPEERNAME4: &str = "lg_getpeername4";
    pub const GETPEERNAME6: &str = "lg_getpeername6";
    pub const SOCK_RELEASE: &str = "lg_sock_release";
    pub const SK_LOOKUP: &str = "lg_sk_lookup";
    /// Assembled by the agent (aya cannot load `cgroup/connect_unix`).
    pub const UNIX_CONNECT: &str = "lg_unix_connect";
}

/// Names of the globals the loader sets.
pub mod globals {
    pub const PROXY_PORT: &str = "PROXY_PORT";
    pub const KERNEL: &str = "KERNEL";
}

/// Capacity of the per-connection map. LRU: under churn the oldest records
/// go first, and a connection whose record was evicted is refused by the
/// proxy (fail closed), never sent direct.
pub const MAX_CONNECTIONS: u32 = 65_536;
/// Capacity of the rule map (targets, deny and allow entries).
pub const MAX_RULES: u32 = 16_384;
/// Unix socket paths with a rule (targets, deny and allow entries).
pub const MAX_UNIX_RULES: u32 = 1024;
/// Bytes of the refusal ring buffer: ~1,500 refusals kept while nobody reads.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Bytes of a unix socket path (`sockaddr_un.sun_path`).
pub const UNIX_PATH_MAX: usize = 108;

/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as stored in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Index of the agent's listeners in `LG_LISTENERS`.
pub const LISTENER_V4: u32 = 0;
pub const LISTENER_V6: u32 = 1;

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

/// The data of an `LG_RULES` key: port first, so a rule for one port is a
/// prefix of 16 bits plus the address bits it covers. Port 0 holds the
/// rules for every port (looked up when no rule of the port matches).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleAddr {
    /// Port, network byte order (bytes as on the wire).
    pub port: [u8; 2],
    /// Address bytes, IPv4 v4-mapped.
    pub ip: [u8; 16],
}

/// Bits of a rule key that are the port.
pub const RULE_PORT_BITS: u32 = 16;
/// Bits of a full rule key (port and a /128 address).
pub const RULE_KEY_BITS: u32 = 16 + 128;

/// What a connect to an address matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// One of the `action` constants.
    pub action: u32,
    /// The agent's index of what matched: the target for `REDIRECT`, the
    /// egress entry for `DENY`/`ALLOW` (reported with refusals).
    pub id: u32,
}

pub mod action {
    /// A target: TCP is redirected to the agent, anything else refused.
    pub const REDIRECT: u32 = 1;
    /// Refused (EPERM), reported.
    pub const DENY: u32 = 2;
    /// Left alone.
    pub const ALLOW: u32 = 3;
}

/// `Rule::id` / `Refusal::rule` when nothing matched.
pub const NO_RULE: u32 = u32::MAX;

/// The agent's run state, `LG_STATE[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct State {
    /// Bumped by every agent start before it accepts anything: records
    /// written for an earlier agent are void.
    pub epoch: u64,
    /// What a connect that matches no rule gets: `action::ALLOW` or
    /// `action::DENY` (`[intercept] egress = "deny"`).
    pub default_action: u32,
    pub _pad: u32,
    /// Cookie of the agent's network namespace: a target is redirected only
    /// from it (elsewhere 127.0.0.1 is another host's loopback).
    pub netns_cookie: u64,
}

/// What connect4/connect6 learned about an intercepted socket: where it meant
/// to go and who the kernel saw asking.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectRecord {
    /// Socket cookie of the client socket (the map key).
    pub cookie: u64,
    /// cgroup v2 id (inode of the cgroup directory) of the caller.
    pub cgroup_id: u64,
    /// `LG_STATE.epoch` when the connect was redirected.
    pub epoch: u64,
    /// Inode of the caller's executable at connect time (0 when the kernel
    /// offsets are unknown); `exe_dev` is its device (kernel `dev_t`).
    pub exe_ino: u64,
    /// The caller's start time (ns since boot, `task_struct.start_boottime`):
    /// with the tgid it names the process even after the pid is reused.
    pub start_boottime: u64,
    /// The destination the client asked for.
    pub original: Endpoint,
    /// Process id (thread-group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub exe_dev: u32,
    /// The target (agent's index) the destination matched.
    pub target: u32,
    /// `comm` of the calling thread, NUL padded.
    pub comm: [u8; 16],
    pub _pad: u32,
}

/// Why the kernel refused something, reported through `LG_EVENTS`.
pub mod refusal {
    /// The destination is on the egress deny list, or egress is `deny`
    /// and it is on no list.
    pub const EGRESS: u32 = 1;
    /// A target, but the agent is not listening (down or restarting).
    pub const AGENT_DOWN: u32 = 2;
    /// A target, but its record could not be written (map full).
    pub const NO_RECORD: u32 = 3;
    /// A target reached over a transport loopgate does not proxy (UDP, SCTP).
    pub const TRANSPORT: u32 = 4;
    /// A connect to a unix socket that is a target.
    pub const UNIX_TARGET: u32 = 5;
    /// A target connected to from another network namespace than the
    /// agent's, where its loopback is not the agent's.
    pub const OTHER_NETNS: u32 = 6;
}

/// One refusal, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Refusal {
    /// One of the `refusal` constants.
    pub reason: u32,
    /// The rule or target index that matched, or `NO_RULE`.
    pub rule: u32,
    pub cgroup_id: u64,
    /// The caller's start time (ns since boot), as in `ConnectRecord`.
    pub start_boottime: u64,
    pub original: Endpoint,
    /// `AF_INET6` for IP (addresses are kept v4-mapped) or `AF_UNIX`.
    pub family: u32,
    /// Socket type (`SOCK_STREAM`, `SOCK_DGRAM`) and protocol.
    pub sock_type: u32,
    pub protocol: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// The unix socket path, NUL padded.
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad: u32,
}

/// A unix socket path as an `LG_UNIX` key: `sun_path` bytes, NUL padded
/// (an abstract name keeps its leading NUL). The value is a [`Rule`]: a
/// target's path is refused, a deny entry refused, an allow entry passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixPath {
    pub bytes: [u8; UNIX_PATH_MAX],
}

/// Byte offsets of the kernel struct fields the programs read, found by the
/// agent in the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and set at
/// load. A group whose bit is clear in `valid` is not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub valid: u32,
    pub task_mm: u32,
    pub task_start_boottime: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// Bits of `KernelOffsets::valid`.
pub mod offsets {
    /// task → mm → exe_file → inode (ino, sb → dev), and start_boottime.
    pub const EXE: u32 = 1;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::RuleAddr {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::State {}
    unsafe impl aya::Pod for super::UnixPath {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Refusal {}
}
