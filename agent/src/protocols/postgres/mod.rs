//! PostgreSQL: a transparent wire-protocol proxy. The client (psql,
//! pgbench, psycopg) believes it talks to the database; loopgate answers
//! its startup, logs in upstream with the target's stored credential, and
//! relays the session, deciding, recording and masking every statement.
//!
//! - `startup`: the client's side of connection start (SSL/GSS requests,
//!   cancel requests, protocol version, authentication).
//! - `frontend`: client → server; `backend`: server → client; `pending`:
//!   the ordered queue that ties the two.
//! - `rows`: masking of results, COPY data and server messages.
//! - `record`: the audit events of commands.
//! - `upstream`, `scram`, `tls`, `config`: loopgate's own connection to the
//!   server with the target's stored credential (the automation never sees
//!   it), over TLS when configured.
mod backend;
pub mod config;
pub mod frame;
mod frontend;
mod pending;
mod record;
mod rows;
pub mod scram;
pub mod tls;
pub mod upstream;
mod wire;

use crate::{
    audit::AuditError,
    mask::Masker,
    policy::{self, PolicyEngine},
    proxy::Session,
    sql::AnalysisCache,
};
use std::sync::Arc;

/// Everything a target's PostgreSQL sessions share; built once at start.
pub struct Service {
    pub analysis: AnalysisCache,
    pub policy: Arc<dyn PolicyEngine>,
    pub masker: Masker,
    pub target: policy::TargetInfo,
}

impl Service {
    /// The caller as the policy sees it.
    pub fn principal_of(&self, session: &Session) -> policy::Principal {
        match session.principal.get() {
            Some(p) => policy::Principal {
                subject: p.subject.clone().unwrap_or_default(),
                groups: p.groups.clone(),
            },
            None => policy::Principal::default(),
        }
    }

    pub fn process_of(&self, session: &Session) -> policy::ProcessInfo {
        let p = &session.process;
        policy::ProcessInfo {
            pid: p.tgid.unwrap_or(0),
            uid: p.uid.unwrap_or(u32::MAX),
            user: p.user.clone(),
            unit: p.unit.clone(),
            exe: p.exe.clone(),
            comm: p.comm.clone().unwrap_or_default(),
        }
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Audit(AuditError),
    #[error("session closed")]
    Closed,
}
