//! loopgate's eBPF programs.
//!
//! On every intercepted cgroup:
//! - `connect4`/`connect6`: a connect is looked up in `LG_RULES` (targets,
//!   egress deny and allow entries, longest prefix). A TCP connect to a
//!   target is rewritten to the agent's loopback port and the caller is
//!   recorded by socket cookie — only while the agent listens, and only if
//!   the record can be written; otherwise, and for denied destinations, the
//!   connect fails (EPERM) and the refusal is reported on `LG_EVENTS`.
//! - `sendmsg4`/`sendmsg6`: UDP datagrams get the same rules (a target is
//!   never reached over UDP).
//! - `getpeername4`/`getpeername6`: the client sees the address it asked for.
//! - `sock_release`: the record goes with the socket.
//! (The unix socket hook, `cgroup/connect_unix`, is not here: aya cannot
//! load that attach type, so the agent assembles it itself —
//! `agent/src/intercept/unix.rs`.)
//!
//! On the agent's network namespace:
//! - `sk_lookup`: connections to the agent's port on 127.0.0.1 and [::1]
//!   reach only the agent's own listeners (`LG_LISTENERS`), and nothing
//!   when it is down — whoever else binds the port.
#![no_std]
#![no_main]

use agent_ebpf::{
    ConnectRecord, EVENTS_BYTES, Endpoint, KernelOffsets, LISTENER_V4, LISTENER_V6, MAX_CONNECTIONS, MAX_RULES,
    MAX_UNIX_RULES, NO_RULE, RULE_KEY_BITS, Refusal, Rule, RuleAddr, State, UNIX_PATH_MAX, UnixPath, action, offsets,
    refusal,
};
use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{bpf_sock_addr, sk_action},
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_map_lookup_elem, bpf_probe_read_kernel, bpf_sk_release,
        },
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sk_lookup},
    maps::{Array, HashMap, LruHashMap, RingBuf, SockMap, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{SkLookupContext, SockAddrContext, SockContext},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// MPTCP's own socket: its TCP subflows go through connect4/6 themselves.
const IPPROTO_MPTCP: u32 = 262;

/// Return values of cgroup sock_addr hooks.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// The agent's redirect port, host byte order; set by the loader.
#[unsafe(no_mangle)]
static PROXY_PORT: Global<u16> = Global::new(0);

/// Kernel struct offsets from BTF; set by the loader.
#[unsafe(no_mangle)]
static KERNEL: Global<KernelOffsets> = Global::new(KernelOffsets {
    valid: 0,
    task_mm: 0,
    task_start_boottime: 0,
    mm_exe_file: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
});

/// Targets, egress deny and allow entries by port and address prefix.
#[map]
static LG_RULES: LpmTrie<RuleAddr, Rule> = LpmTrie::pinned(MAX_RULES, 0);
/// Socket cookie → record; written at connect, removed at sock_release.
#[map]
static LG_BY_COOKIE: LruHashMap<u64, ConnectRecord> = LruHashMap::pinned(MAX_CONNECTIONS, 0);
/// The agent's listening sockets; the kernel removes them when they close.
#[map]
static LG_LISTENERS: SockMap = SockMap::pinned(2, 0);
/// `LG_STATE[0]`: the agent's epoch and the default egress action.
#[map]
static LG_STATE: Array<State> = Array::pinned(1, 0);
/// Refusals, for the agent to record (kept while it is down).
#[map]
static LG_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
/// Unix socket path → rule; read by the agent-assembled connect_unix
/// program (`agent/src/intercept/unix.rs`).
#[map]
static LG_UNIX: HashMap<UnixPath, Rule> = HashMap::pinned(MAX_UNIX_RULES, 0);

/// The rule for `original`: the longest prefix among the rules of its
/// port, else among the rules for every port (stored under port 0).
#[inline(always)]
fn rule_for(original: &Endpoint) -> Option<Rule> {
    let ip: [u8; 16] = unsafe { core::mem::transmute(original.ip) };
    let port = original.port.to_ne_bytes();
    let key = Key::new(RULE_KEY_BITS, RuleAddr { port, ip });
    if let Some(rule) = LG_RULES.get(&key) {
        return Some(*rule);
    }
    let any_port = Key::new(RULE_KEY_BITS, RuleAddr { port: [0, 0], ip });
    LG_RULES.get(&any_port).copied()
}

fn state() -> State {
    LG_STATE.get(0).copied().unwrap_or_default()
}

/// Whether the agent's listener for `index` is open.
#[inline(always)]
fn agent_listening(index: u32) -> bool {
    let map = (&raw const LG_LISTENERS).cast_mut().cast::<c_void>();
    let key = index;
    // SAFETY: a sockmap lookup returns a referenced socket or null; the
    // reference is released at once.
    unsafe {
        let sk = bpf_map_lookup_elem(map, (&raw const key).cast());
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk);
    }
    true
}

/// Reads a `T` at kernel address `addr`; zero when it cannot be read.
#[inline(always)]
fn read<T: Copy + Default>(addr: u64) -> T {
    let mut out = T::default();
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    let rc = unsafe { bpf_probe_read_kernel((&raw mut out).cast(), size_of::<T>() as u32, addr as *const c_void) };
    if rc != 0 { T::default() } else { out }
}

/// The caller's executable (inode, device) and start time, from the
/// kernel's task, as of this connect.
#[inline(always)]
fn caller_identity(k: &KernelOffsets) -> (u64, u32, u64) {
    if k.valid & offsets::EXE == 0 {
        return (0, 0, 0);
    }
    let task = unsafe { bpf_get_current_task() };
    let start: u64 = read(task + u64::from(k.task_start_boottime));
    let mm: u64 = read(task + u64::from(k.task_mm));
    if mm == 0 {
        return (0, 0, start);
    }
    let file: u64 = read(mm + u64::from(k.mm_exe_file));
    if file == 0 {
        return (0, 0, start);
    }
    let inode: u64 = read(file + u64::from(k.file_inode));
    if inode == 0 {
        return (0, 0, start);
    }
    let ino: u64 = read(inode + u64::from(k.inode_ino));
    let sb: u64 = read(inode + u64::from(k.inode_sb));
    let dev: u32 = if sb == 0 { 0 } else { read(sb + u64::from(k.sb_dev)) };
    (ino, dev, start)
}

/// Reports a refusal; a full ring buffer loses the report, never the refusal.
#[inline(always)]
fn report(reason: u32, rule: u32, original: Endpoint, sock_type: u32, protocol: u32) {
    let Some(mut entry) = LG_EVENTS.reserve::<Refusal>(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let (_, _, start_boottime) = caller_identity(&KERNEL.load());
    let event = Refusal {
        reason,
        rule,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        start_boottime,
        original,
        family: AF_INET6,
        sock_type,
        protocol,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        path: [0; UNIX_PATH_MAX],
        _pad: 0,
    };
    entry.write(event);
    entry.submit(0);
}

enum Verdict {
    /// Leave the connect alone.
    Pass,
    /// A target, recorded: rewrite to the agent.
    Redirect,
    /// Fail the connect (EPERM); reported.
    Refuse,
}

/// Decides a connect (or a datagram) to `original` and, for a TCP connect
/// to a target, writes its record.
#[inline(always)]
fn decide(ctx: &SockAddrContext, original: Endpoint, sock_type: u32, protocol: u32, listener: u32) -> Verdict {
    let state = state();
    let rule = rule_for(&original).unwrap_or(Rule {
        action: state.default_action,
        id: NO_RULE,
    });
    match rule.action {
        action::REDIRECT => {}
        action::DENY => {
            report(refusal::EGRESS, rule.id, original, sock_type, protocol);
            return Verdict::Refuse;
        }
        _ => return Verdict::Pass,
    }
    if protocol == IPPROTO_MPTCP {
        // Its TCP subflow connects next and is redirected itself.
        return Verdict::Pass;
    }
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        report(refusal::TRANSPORT, rule.id, original, sock_type, protocol);
        return Verdict::Refuse;
    }
    if state.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != state.netns_cookie {
        report(refusal::OTHER_NETNS, rule.id, original, sock_type, protocol);
        return Verdict::Refuse;
    }
    if !agent_listening(listener) {
        report(refusal::AGENT_DOWN, rule.id, original, sock_type, protocol);
        return Verdict::Refuse;
    }
    let k = KERNEL.load();
    let (exe_ino, exe_dev, start_boottime) = caller_identity(&k);
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let record = ConnectRecord {
        cookie,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        epoch: state.epoch,
        exe_ino,
        start_boottime,
        original,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        exe_dev,
        target: rule.id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    match LG_BY_COOKIE.insert(&cookie, &record, 0) {
        Ok(()) => Verdict::Redirect,
        Err(_) => {
            report(refusal::NO_RECORD, rule.id, original, sock_type, protocol);
            Verdict::Refuse
        }
    }
}

/// Writes `user_ip6` word by word: a whole-array store becomes a byte copy
/// loop through a moving ctx pointer, which the verifier rejects.
#[inline(always)]
fn set_user_ip6(sa: &mut bpf_sock_addr, ip: [u32; 4]) {
    unsafe {
        use core::ptr::write_volatile as wv;
        wv(&raw mut sa.user_ip6[0], ip[0]);
        wv(&raw mut sa.user_ip6[1], ip[1]);
        wv(&raw mut sa.user_ip6[2], ip[2]);
        wv(&raw mut sa.user_ip6[3], ip[3]);
    }
}

/// The fields of a v4 sock_addr ctx, read before any branch (LLVM would
/// otherwise merge the loads of two branches through a moved ctx pointer,
/// which the verifier rejects).
#[inline(always)]
fn read_v4(sa: &bpf_sock_addr) -> (Endpoint, u32, u32) {
    unsafe {
        use core::ptr::read_volatile as rv;
        let ip = rv(&raw const sa.user_ip4);
        let port = rv(&raw const sa.user_port);
        let ty = rv(&raw const sa.type_);
        let protocol = rv(&raw const sa.protocol);
        let original = Endpoint {
            ip: Endpoint::v4_mapped(ip),
            port: port as u16,
            _pad: 0,
        };
        (original, ty, protocol)
    }
}

#[inline(always)]
fn read_v6(sa: &bpf_sock_addr) -> (Endpoint, u32, u32) {
    unsafe {
        use core::ptr::read_volatile as rv;
        let ip = [
            rv(&raw const sa.user_ip6[0]),
            rv(&raw const sa.user_ip6[1]),
            rv(&raw const sa.user_ip6[2]),
            rv(&raw const sa.user_ip6[3]),
        ];
        let port = rv(&raw const sa.user_port);
        let ty = rv(&raw const sa.type_);
        let protocol = rv(&raw const sa.protocol);
        (
            Endpoint {
                ip,
                port: port as u16,
                _pad: 0,
            },
            ty,
            protocol,
        )
    }
}

#[cgroup_sock_addr(connect4)]
pub fn lg_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let (original, ty, protocol) = read_v4(sa);
    match decide(&ctx, original, ty, protocol, LISTENER_V4) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect => {
            let port = PROXY_PORT.load();
            sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
            sa.user_port = u32::from(port.to_be());
            ALLOW
        }
    }
}

/// Fires for AF_INET6 sockets, including those connecting to v4-mapped
/// addresses, which connect4 never sees.
#[cgroup_sock_addr(connect6)]
pub fn lg_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let (original, ty, protocol) = read_v6(sa);
    let mapped = Endpoint::is_v4_mapped(&original.ip);
    let listener = if mapped { LISTENER_V4 } else { LISTENER_V6 };
    match decide(&ctx, original, ty, protocol, listener) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect => {
            let port = PROXY_PORT.load();
            // A v4-mapped destination goes to ::ffff:127.0.0.1 (the IPv4
            // listener); a native IPv6 one to [::1].
            let proxy = if mapped {
                Endpoint::v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
            } else {
                [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
            };
            set_user_ip6(sa, proxy);
            sa.user_port = u32::from(port.to_be());
            ALLOW
        }
    }
}

/// A datagram to a target or a denied destination is refused; UDP is never
/// redirected.
#[cgroup_sock_addr(sendmsg4)]
pub fn lg_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let (original, ty, protocol) = read_v4(sa);
    match decide(&ctx, original, ty, protocol, LISTENER_V4) {
        Verdict::Pass => ALLOW,
        _ => REFUSE,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lg_sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let (original, ty, protocol) = read_v6(sa);
    match decide(&ctx, original, ty, protocol, LISTENER_V6) {
        Verdict::Pass => ALLOW,
        _ => REFUSE,
    }
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
        set_user_ip6(sa, record.original.ip);
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

/// Steers connections to the agent's port to the agent's own listener,
/// or drops them while it has none: no other socket bound to the port
/// ever receives one.
#[sk_lookup]
pub fn lg_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    let (family, protocol, local_port, ip4, ip6_0, ip6_1, ip6_2, ip6_3) = unsafe {
        use core::ptr::read_volatile as rv;
        (
            rv(&raw const (*l).family),
            rv(&raw const (*l).protocol),
            rv(&raw const (*l).local_port),
            rv(&raw const (*l).local_ip4),
            rv(&raw const (*l).local_ip6[0]),
            rv(&raw const (*l).local_ip6[1]),
            rv(&raw const (*l).local_ip6[2]),
            rv(&raw const (*l).local_ip6[3]),
        )
    };
    if protocol != IPPROTO_TCP || local_port != u32::from(PROXY_PORT.load()) {
        return sk_action::SK_PASS;
    }
    let index = match family {
        AF_INET if ip4 == u32::from_ne_bytes([127, 0, 0, 1]) => LISTENER_V4,
        AF_INET6 if ip6_0 == 0 && ip6_1 == 0 && ip6_2 == 0 && ip6_3 == u32::from_ne_bytes([0, 0, 0, 1]) => LISTENER_V6,
        _ => return sk_action::SK_PASS,
    };
    match LG_LISTENERS.redirect_sk_lookup(&ctx, index, 0) {
        Ok(()) => sk_action::SK_PASS,
        Err(_) => sk_action::SK_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
