//! A session: one intercepted client connection, from accept to close —
//! what every protocol handler knows about it, how it ended, the process
//! behind it, and the audit events built from it.
//!
//! A leaf of the module graph: it imports neither `proxy` nor `protocols`,
//! so the proxy, the protocol handlers, approvals and identity can all use
//! it without reaching into one another.
mod end;
pub mod process;
mod upstream;

pub use end::{EndStatus, SessionEnd};
pub use upstream::connect_upstream;

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{AuditLog, Event, EventKind, Principal, ProcessInfo, TargetRef};

/// Everything a protocol handler knows about its session.
pub struct Session {
    pub id: Uuid,
    /// The client's socket address (loopback) as accepted.
    pub client: SocketAddr,
    /// Where the client meant to connect; the handler connects here.
    pub original: SocketAddr,
    /// The target as events record it (name, protocol, address), built once.
    pub target: Arc<TargetRef>,
    pub process: Arc<ProcessInfo>,
    /// Who the client authenticated as; set once by the protocol handler.
    pub principal: OnceLock<Arc<Principal>>,
    pub audit: AuditLog,
    pub traffic: Arc<Traffic>,
    pub started: Instant,
    /// `client` as events record it, formatted once: every statement
    /// records it twice (command and result).
    pub client_address: Arc<str>,
}

impl Session {
    /// A new session (fresh id, no principal yet, started now) to the
    /// target named `target` speaking `protocol`.
    pub fn new(
        client: SocketAddr,
        original: SocketAddr,
        target: &str,
        protocol: &str,
        process: ProcessInfo,
        audit: AuditLog,
    ) -> Self {
        Session {
            id: Uuid::now_v7(),
            client,
            original,
            target: Arc::new(TargetRef {
                name: target.to_owned(),
                protocol: protocol.to_owned(),
                address: original.to_string(),
            }),
            process: Arc::new(process),
            principal: OnceLock::new(),
            audit,
            traffic: Arc::default(),
            started: Instant::now(),
            client_address: client.to_string().into(),
        }
    }

    /// Counts bytes sent to the server (for `status` and the session record).
    pub fn add_to_server(&self, n: usize) {
        self.traffic.to_server.fetch_add(n as u64, Relaxed);
    }

    /// Counts bytes sent to the client.
    pub fn add_to_client(&self, n: usize) {
        self.traffic.to_client.fetch_add(n as u64, Relaxed);
    }

    /// The target as audit events name it.
    pub fn target_ref(&self) -> Arc<TargetRef> {
        Arc::clone(&self.target)
    }

    /// What every event of this session carries, as of now (the principal
    /// once known).
    pub fn context(&self) -> Context {
        Context {
            session_id: self.id,
            client_address: Some(Arc::clone(&self.client_address)),
            principal: self.principal.get().cloned(),
            process: Arc::clone(&self.process),
            target: self.target_ref(),
        }
    }

    /// An audit event of this session, its context filled in.
    pub fn event(&self, kind: EventKind) -> Event {
        self.context().event(kind)
    }
}

/// A session's context as its audit events carry it: kept by whatever
/// outlives the session's task (a held command's approval request, which
/// is journalled and may end after a restart).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Context {
    pub session_id: Uuid,
    pub client_address: Option<Arc<str>>,
    pub principal: Option<Arc<Principal>>,
    pub process: Arc<ProcessInfo>,
    pub target: Arc<TargetRef>,
}

impl Context {
    /// An audit event with this context filled in: the one place events
    /// get a session's id, client address, principal, process and target.
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(kind).session(self.session_id);
        e.client_address = self.client_address.clone();
        e.principal = self.principal.clone();
        e.process = Some(Arc::clone(&self.process));
        e.target = Some(Arc::clone(&self.target));
        e
    }
}

/// Bytes relayed so far, updated as they flow so `status` shows live numbers.
#[derive(Debug, Default)]
pub struct Traffic {
    pub to_server: AtomicU64,
    pub to_client: AtomicU64,
}
