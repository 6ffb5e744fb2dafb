//! loopgate's eBPF programs, attached to every intercepted cgroup.
//!
//! - `connect4`/`connect6`: a TCP connect to a target is rewritten to the
//!   agent's loopback listener, and the original destination and the caller
//!   are recorded by socket cookie. If the record cannot be written the
//!   connect fails (EPERM): never sent direct, never unattributed.
//! - `sock_ops` (ACTIVE_ESTABLISHED): the record is copied under the client's
//!   source address:port, the key the agent sees on accept().
//! - `getpeername4`/`getpeername6`: the client sees the address it asked for.
//! - `sock_release`: the cookie record goes with the socket.
#![no_std]
#![no_main]

use agent_ebpf::{ConnectRecord, Endpoint, MAX_CONNECTIONS, MAX_TARGETS, SourceKey};
use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::debug;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// Return value of a cgroup sock_addr hook that lets the call proceed; 0
/// fails it with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// The agent's listen port, host byte order; set by the loader.
#[unsafe(no_mangle)]
static PROXY_PORT: Global<u16> = Global::new(0);

/// Destinations to intercept. Pinned, so a restarted agent takes it over.
#[map]
static LG_TARGETS: HashMap<Endpoint, u8> = HashMap::pinned(MAX_TARGETS, 0);
/// Socket cookie → record; written at connect, removed at sock_release.
#[map]
static LG_BY_COOKIE: LruHashMap<u64, ConnectRecord> = LruHashMap::pinned(MAX_CONNECTIONS, 0);
/// Client source address:port → record; written at ACTIVE_ESTABLISHED, taken
/// by the agent on accept().
#[map]
static LG_BY_SOURCE: LruHashMap<SourceKey, ConnectRecord> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

enum Verdict {
    /// Not a target: leave the connect alone.
    Pass,
    /// A target, recorded: rewrite to the proxy.
    Redirect,
    /// A target that could not be recorded: fail the connect.
    Refuse,
}

#[inline(always)]
fn intercept(ctx: &SockAddrContext, sa: &bpf_sock_addr, original: Endpoint) -> Verdict {
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return Verdict::Pass;
    }
    if unsafe { LG_TARGETS.get(&original) }.is_none() {
        return Verdict::Pass;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let record = ConnectRecord {
        original,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cookie,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    match LG_BY_COOKIE.insert(&cookie, &record, 0) {
        Ok(()) => Verdict::Redirect,
        Err(_) => Verdict::Refuse,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn lg_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let original = Endpoint {
        ip: Endpoint::v4_mapped(sa.user_ip4),
        port: sa.user_port as u16,
        _pad: 0,
    };
    match intercept(&ctx, sa, original) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect => {
            let port = PROXY_PORT.load();
            sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.user_port = u32::from(port.to_be());
            debug!(&ctx, "connect4 redirected to port {}", port);
            ALLOW
        }
    }
}

/// Fires for AF_INET6 sockets, including those connecting to v4-mapped
/// addresses, which connect4 never sees.
#[cgroup_sock_addr(connect6)]
pub fn lg_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let original = Endpoint {
        ip: sa.user_ip6,
        port: sa.user_port as u16,
        _pad: 0,
    };
    match intercept(&ctx, sa, original) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect => {
            let port = PROXY_PORT.load();
            // A v4-mapped destination goes to ::ffff:127.0.0.1 (the IPv4
            // listener); a native IPv6 one to [::1].
            sa.user_ip6 = if Endpoint::is_v4_mapped(&original.ip) {
                Endpoint::v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
            } else {
                [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
            };
            sa.user_port = u32::from(port.to_be());
            debug!(&ctx, "connect6 redirected to port {}", port);
            ALLOW
        }
    }
}

// Not named `sockops`: that clashes with the ELF section symbol.
#[sock_ops]
pub fn lg_sock_ops(ctx: SockOpsContext) -> u32 {
    // Read every ctx field before branching: LLVM otherwise merges the loads
    // of the two branches into one through a modified ctx pointer, which the
    // verifier rejects ("dereference of modified ctx ptr").
    let ops = ctx.ops;
    let (op, family, local_port, ip4, ip6) = unsafe {
        use core::ptr::read_volatile as rv;
        (
            rv(&raw const (*ops).op),
            rv(&raw const (*ops).family),
            rv(&raw const (*ops).local_port),
            rv(&raw const (*ops).local_ip4),
            [
                rv(&raw const (*ops).local_ip6[0]),
                rv(&raw const (*ops).local_ip6[1]),
                rv(&raw const (*ops).local_ip6[2]),
                rv(&raw const (*ops).local_ip6[3]),
            ],
        )
    };
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    let ip = match family {
        AF_INET => Endpoint::v4_mapped(ip4),
        // An AF_INET6 socket talking IPv4 already shows ::ffff:a.b.c.d.
        AF_INET6 => ip6,
        _ => return 1,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = unsafe { LG_BY_COOKIE.get(&cookie) } {
        let key = SourceKey {
            ip,
            port: local_port as u16,
            _pad: 0,
        };
        // A failed insert leaves no record: the agent then refuses the
        // connection, so nothing goes unattributed.
        let _ = LG_BY_SOURCE.insert(&key, record, 0);
    }
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn lg_getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = unsafe { LG_BY_COOKIE.get(&cookie) } {
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = record.original.ip[3];
        sa.user_port = u32::from(record.original.port);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn lg_getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(record) = unsafe { LG_BY_COOKIE.get(&cookie) } {
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip6 = record.original.ip;
        sa.user_port = u32::from(record.original.port);
    }
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn lg_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = LG_BY_COOKIE.remove(&cookie);
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
