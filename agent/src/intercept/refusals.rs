//! What the kernel refused on its own — egress denials, connects while the
//! agent was down, UDP to a target, unix targets, sockets passed in from
//! outside — read from the pinned ring buffer and recorded. The buffer
//! outlives the agent, so refusals made while it was down are recorded by
//! the next start.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use agent_ebpf::{NO_RULE, Refusal, refusal};

use super::endpoint;

/// One refusal, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRefusal {
    pub reason: u32,
    /// Target or egress entry index, as the rule table numbered it.
    pub rule: Option<u32>,
    pub destination: Option<SocketAddr>,
    pub transport: &'static str,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub start_boottime: u64,
    pub comm: String,
    pub unix_path: Option<String>,
}

impl KernelRefusal {
    /// Decodes a ring buffer record; None if it is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<KernelRefusal> {
        if bytes.len() < size_of::<Refusal>() {
            return None;
        }
        // SAFETY: the buffer holds at least one Refusal, written by the
        // program; read_unaligned copies it out whatever the alignment.
        let r: Refusal = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let unix = r.family == libc::AF_UNIX as u32;
        let transport = match (unix, r.sock_type, r.protocol) {
            (true, _, _) => "unix",
            (_, 2, _) => "udp",
            (_, _, 6) => "tcp",
            (_, _, 132) => "sctp",
            _ => "ip",
        };
        let path_end = r.path.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Some(KernelRefusal {
            reason: r.reason,
            rule: (r.rule != NO_RULE).then_some(r.rule),
            destination: (!unix).then(|| endpoint::from_endpoint(&r.original)),
            transport,
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            start_boottime: r.start_boottime,
            comm: c_string(&r.comm),
            unix_path: unix.then(|| unix_path(&r.path[..path_end])),
        })
    }

    /// The audit rule id of this refusal.
    pub fn rule_id(&self) -> &'static str {
        match self.reason {
            refusal::EGRESS => "intercept.egress_denied",
            refusal::AGENT_DOWN => "intercept.agent_down",
            refusal::NO_RECORD => "intercept.record_unavailable",
            refusal::TRANSPORT => "intercept.transport_not_proxied",
            refusal::UNIX_TARGET => "intercept.unix_target",
            refusal::OTHER_NETNS => "intercept.other_network_namespace",
            _ => "intercept.refused",
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A unix path as written in the config: an abstract name as `@name`.
pub fn unix_path(bytes: &[u8]) -> String {
    match bytes.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => c_string(bytes),
    }
}

/// Caps how many refusals are recorded one by one, so a process spinning
/// on a denied destination cannot flood the audit trail; the rest are
/// counted and recorded as one summary per window.
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    started: Instant,
    seen: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            started: Instant::now(),
            seen: 0,
            suppressed: 0,
        }
    }

    /// Whether to record this refusal by itself; `Some(n)` also asks for a
    /// summary of `n` suppressed ones from the window that just ended.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut summary = None;
        if now.duration_since(self.started) >= self.window {
            if self.suppressed > 0 {
                summary = Some(self.suppressed);
            }
            self.started = now;
            self.seen = 0;
            self.suppressed = 0;
        }
        if self.seen < self.per_window {
            self.seen += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            (false, summary)
        }
    }

    /// Suppressed refusals not yet summarised (at shutdown or on a timer).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::{Endpoint, UNIX_PATH_MAX};

    fn raw(reason: u32) -> Refusal {
        Refusal {
            reason,
            rule: 3,
            cgroup_id: 77,
            start_boottime: 5,
            original: endpoint::to_endpoint("127.0.0.151:5432".parse().unwrap()),
            family: libc::AF_INET6 as u32,
            sock_type: 1,
            protocol: 6,
            tgid: 10,
            pid: 11,
            uid: 65534,
            gid: 65534,
            comm: *b"psql\0\0\0\0\0\0\0\0\0\0\0\0",
            path: [0; UNIX_PATH_MAX],
            _pad: 0,
        }
    }

    fn bytes(r: &Refusal) -> Vec<u8> {
        // SAFETY: Refusal is plain data without hidden padding.
        unsafe { std::slice::from_raw_parts((r as *const Refusal).cast::<u8>(), size_of::<Refusal>()) }.to_vec()
    }

    #[test]
    fn decodes_an_egress_refusal() {
        let r = KernelRefusal::decode(&bytes(&raw(refusal::EGRESS))).unwrap();
        assert_eq!(r.destination, Some("127.0.0.151:5432".parse().unwrap()));
        assert_eq!(
            (r.transport, r.comm.as_str(), r.uid, r.rule),
            ("tcp", "psql", 65534, Some(3))
        );
        assert_eq!(r.rule_id(), "intercept.egress_denied");
        assert!(KernelRefusal::decode(&[0; 8]).is_none());
    }

    #[test]
    fn decodes_a_unix_refusal_with_its_path() {
        let mut r = raw(refusal::UNIX_TARGET);
        r.family = libc::AF_UNIX as u32;
        r.original = Endpoint {
            ip: [0; 4],
            port: 0,
            _pad: 0,
        };
        let path = b"/run/postgresql/.s.PGSQL.5432";
        r.path[..path.len()].copy_from_slice(path);
        let r = KernelRefusal::decode(&bytes(&r)).unwrap();
        assert_eq!(r.unix_path.as_deref(), Some("/run/postgresql/.s.PGSQL.5432"));
        assert_eq!((r.destination, r.transport), (None, "unix"));
        assert_eq!(unix_path(b"\0abstract"), "@abstract");
    }

    #[test]
    fn rate_limit_summarises_the_excess() {
        let mut limit = RateLimit::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), (true, None));
        assert_eq!(limit.admit(t0), (true, None));
        assert_eq!(limit.admit(t0), (false, None));
        assert_eq!(limit.admit(t0), (false, None));
        assert_eq!(limit.admit(t0 + Duration::from_secs(2)), (true, Some(2)));
        assert_eq!(limit.take_suppressed(), 0);
    }
}
