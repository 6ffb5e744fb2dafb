//! The kernel's socket tables, through `NETLINK_SOCK_DIAG` (what `ss` reads).
//!
//! - [`peer_of`]: the client socket at the other end of an accepted loopback
//!   connection, with its cookie — the proof that a connection is the one
//!   the connect hook redirected (see ARCHITECTURE.md "Binding a connection
//!   to its record").
//! - [`tcp_sockets`] and [`destroy`]: established connections, for those an
//!   intercepted cgroup opened before the programs were attached.
//! - [`unix_listeners`]: bound names of listening unix sockets, so a unix
//!   target is matched under the name its server bound.
use std::{
    cell::RefCell,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// `INET_DIAG_CGROUP_ID`: the socket's cgroup v2 id (Linux ≥ 5.7).
const INET_DIAG_CGROUP_ID: u16 = 21;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;

/// TCP states, as `inet_diag_msg.idiag_state` reports them.
pub const STATE_ESTABLISHED: u8 = TCP_ESTABLISHED as u8;

/// One socket from the kernel's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The socket cookie (`bpf_get_socket_cookie`, `SO_COOKIE`).
    pub cookie: u64,
    /// The socket's owner (the creator's uid) and inode.
    pub uid: u32,
    pub inode: u32,
    /// cgroup v2 id the socket belongs to (0 when the kernel omits it).
    pub cgroup_id: u64,
}

/// A listening unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListener {
    /// The name it was bound to (`sun_path` bytes; an abstract name starts
    /// with NUL).
    pub name: Vec<u8>,
    /// Inode and device (kernel `dev_t`) of its file, for path-bound sockets.
    pub vfs: Option<(u32, u32)>,
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn nlmsg(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(payload);
    msg
}

/// Sends `request` and hands every reply payload to `each` until the
/// kernel is done (a dump's NLMSG_DONE, or the single answer).
fn exchange(fd: &OwnedFd, request: &[u8], dump: bool, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    // SAFETY: request is a valid buffer for the call.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            let payload = &rest[16..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = payload
                        .get(0..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                    return match code {
                        0 => Ok(()),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                SOCK_DIAG_BY_FAMILY => each(payload),
                _ => {}
            }
            rest = rest.get((len + 3) & !3..).unwrap_or_default();
            if !dump && kind == SOCK_DIAG_BY_FAMILY {
                return Ok(());
            }
        }
    }
}

/// `struct inet_diag_sockid` for one socket: local, remote.
fn sockid(local: SocketAddr, remote: SocketAddr) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    id[4..20].copy_from_slice(&ip_words(local.ip()));
    id[20..36].copy_from_slice(&ip_words(remote.ip()));
    // idiag_if = 0, idiag_cookie = none
    id[40..44].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    id[44..48].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    id
}

fn ip_words(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn family_of(addr: SocketAddr) -> u8 {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET as u8,
        SocketAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// `struct inet_diag_req_v2` + attributes parsing.
fn inet_request(family: u8, states: u32, id: [u8; 48]) -> Vec<u8> {
    let mut req = Vec::with_capacity(56);
    req.push(family);
    req.push(libc::IPPROTO_TCP as u8);
    req.push(0); // idiag_ext
    req.push(0);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&id);
    req
}

/// Decodes `struct inet_diag_msg` and its attributes.
fn parse_inet(payload: &[u8]) -> Option<InetSocket> {
    if payload.len() < 72 {
        return None;
    }
    let family = payload[0];
    let state = payload[1];
    let id = &payload[4..52];
    let addr = |words: &[u8], port: &[u8]| -> SocketAddr {
        let port = u16::from_be_bytes([port[0], port[1]]);
        let ip = if u32::from(family) == libc::AF_INET as u32 {
            IpAddr::V4(Ipv4Addr::new(words[0], words[1], words[2], words[3]))
        } else {
            let octets: [u8; 16] = words.try_into().unwrap_or_default();
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        SocketAddr::new(ip, port)
    };
    let local = addr(&id[4..20], &id[0..2]);
    let remote = addr(&id[20..36], &id[2..4]);
    let cookie_lo = u32::from_ne_bytes(id[40..44].try_into().ok()?);
    let cookie_hi = u32::from_ne_bytes(id[44..48].try_into().ok()?);
    let uid = u32::from_ne_bytes(payload[64..68].try_into().ok()?);
    let inode = u32::from_ne_bytes(payload[68..72].try_into().ok()?);
    let mut cgroup_id = 0;
    for (kind, value) in attributes(&payload[72..]) {
        if kind == INET_DIAG_CGROUP_ID && value.len() >= 8 {
            cgroup_id = u64::from_ne_bytes(value[..8].try_into().ok()?);
        }
    }
    Some(InetSocket {
        local,
        remote,
        state,
        cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
        uid,
        inode,
        cgroup_id,
    })
}

/// Netlink attributes (`struct nlattr` + value, 4-byte aligned).
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = data.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

thread_local! {
    /// One netlink socket per thread for the per-connection look-up.
    static PEER_SOCKET: RefCell<Option<OwnedFd>> = const { RefCell::new(None) };
}

/// The socket at the other end of an accepted loopback connection: the one
/// whose local address is `peer` and remote address is `local` (our side).
/// A 4-tuple names one socket in the network namespace, and its cookie is
/// unique for the kernel's lifetime, so a socket that merely binds the same
/// source port later gets another cookie.
pub fn peer_of(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<InetSocket>> {
    let request = nlmsg(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST,
        &inet_request(family_of(peer), !0, sockid(peer, local)),
    );
    PEER_SOCKET.with(|cell| {
        let mut slot = cell.borrow_mut();
        let fd = match slot.take() {
            Some(fd) => fd,
            None => netlink()?,
        };
        let mut found = None;
        let result = exchange(&fd, &request, false, |payload| found = parse_inet(payload));
        match result {
            Ok(()) => {
                *slot = Some(fd);
                Ok(found)
            }
            // ENOENT: no such socket (it closed before we looked).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                *slot = Some(fd);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
}

/// TCP sockets in SYN_SENT or ESTABLISHED state, both families.
pub fn tcp_sockets() -> io::Result<Vec<InetSocket>> {
    let fd = netlink()?;
    let mut out = Vec::new();
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let states = 1 << TCP_ESTABLISHED | 1 << TCP_SYN_SENT;
        let request = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            &inet_request(family, states, sockid(any, any)),
        );
        exchange(&fd, &request, true, |payload| out.extend(parse_inet(payload)))?;
    }
    Ok(out)
}

/// Closes a socket from outside (`ss -K`): its owner gets ECONNABORTED.
/// Needs `CONFIG_INET_DIAG_DESTROY`.
pub fn destroy(socket: &InetSocket) -> io::Result<()> {
    let fd = netlink()?;
    let mut id = sockid(socket.local, socket.remote);
    id[40..44].copy_from_slice(&(socket.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((socket.cookie >> 32) as u32).to_ne_bytes());
    let request = nlmsg(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        &inet_request(family_of(socket.local), !0, id),
    );
    exchange(&fd, &request, false, |_| {})
}

/// Every listening unix socket with its bound name.
pub fn unix_listeners() -> io::Result<Vec<UnixListener>> {
    let fd = netlink()?;
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&[0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS).to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    let request = nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req);
    let mut out = Vec::new();
    exchange(&fd, &request, true, |payload| {
        // struct unix_diag_msg is 16 bytes.
        if payload.len() < 16 {
            return;
        }
        let mut name = None;
        let mut vfs = None;
        for (kind, value) in attributes(&payload[16..]) {
            match kind {
                UNIX_DIAG_NAME => name = Some(value.to_vec()),
                UNIX_DIAG_VFS if value.len() >= 8 => {
                    let ino = u32::from_ne_bytes(value[0..4].try_into().unwrap_or_default());
                    let dev = u32::from_ne_bytes(value[4..8].try_into().unwrap_or_default());
                    vfs = Some((ino, dev));
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            out.push(UnixListener { name, vfs });
        }
    })?;
    Ok(out)
}

/// The userspace `st_dev` of a kernel `dev_t` (MAJOR << 20 | MINOR).
pub fn user_dev(kernel_dev: u32) -> u64 {
    let (major, minor) = (kernel_dev >> 20, kernel_dev & 0xfffff);
    libc::makedev(major, minor)
}

const _: () = assert!(size_of::<libc::nlmsghdr>() == 16);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_client_socket_of_an_accepted_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        let found = peer_of(local, peer).unwrap().expect("client socket");
        assert_eq!(found.local, client.local_addr().unwrap());
        assert_eq!(found.remote, local);
        assert_eq!(found.state, STATE_ESTABLISHED);
        assert_ne!(found.cookie, 0);
        // SAFETY: getuid has no preconditions.
        assert_eq!(found.uid, unsafe { libc::getuid() });
        // The cookie is the one the kernel gives the client socket.
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: SO_COOKIE writes a u64 into cookie.
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&client),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(found.cookie, cookie);
        // A port nobody uses has no socket.
        let nobody = SocketAddr::new(peer.ip(), 1);
        assert_eq!(peer_of(local, nobody).unwrap(), None);
    }

    #[test]
    fn ipv6_connections_are_found_too() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this host
        };
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let found = peer_of(server.local_addr().unwrap(), peer).unwrap();
        assert!(found.is_some_and(|s| s.local == peer));
    }

    #[test]
    fn dumps_established_sockets_with_their_cgroup() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let all = tcp_sockets().unwrap();
        let mine = all
            .iter()
            .find(|s| s.local == client.local_addr().unwrap())
            .expect("our client socket in the dump");
        let own_cgroup = std::fs::metadata(
            super::super::cgroup::cgroup2_mount()
                .unwrap()
                .join(super::super::cgroup::cgroup_of("self").unwrap()),
        )
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        assert_eq!(mine.cgroup_id, own_cgroup);
    }

    #[test]
    fn destroy_aborts_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let socket = tcp_sockets()
            .unwrap()
            .into_iter()
            .find(|s| s.local == client.local_addr().unwrap())
            .unwrap();
        destroy(&socket).unwrap();
        let mut buf = [0u8; 1];
        let err = std::io::Read::read(&mut client, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    }

    #[test]
    fn lists_listening_unix_sockets_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let found = unix_listeners().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let me = found
            .iter()
            .find(|l| l.name.starts_with(path.as_os_str().as_encoded_bytes()))
            .expect("our listener");
        let (ino, dev) = me.vfs.unwrap();
        assert_eq!(u64::from(ino), std::os::unix::fs::MetadataExt::ino(&meta));
        assert_eq!(user_dev(dev), std::os::unix::fs::MetadataExt::dev(&meta));
    }
}
