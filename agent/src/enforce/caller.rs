//! The caller as the policy sees it: built once per session, after
//! authentication, from the session's principal and the process the
//! kernel saw.
use crate::{
    policy::{Principal, ProcessInfo, SessionInfo},
    session::Session,
};

/// Who sends a session's commands, in the policy's terms.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub principal: Principal,
    pub process: ProcessInfo,
    pub session: SessionInfo,
}

impl Caller {
    /// The caller of `session`: its principal (empty if nobody
    /// authenticated: policies refuse that) and its process, with the
    /// protocol's `database` and `application_name` where it has them.
    pub fn of(session: &Session, database: Option<String>, application_name: Option<String>) -> Caller {
        let principal = match session.principal.get() {
            Some(p) => Principal {
                subject: p.subject.clone().unwrap_or_default(),
                groups: p.groups.clone(),
            },
            None => Principal::default(),
        };
        let p = &session.process;
        Caller {
            principal,
            process: ProcessInfo {
                pid: p.tgid.unwrap_or(0),
                // Unknown is nobody, never root.
                uid: p.uid.unwrap_or(u32::MAX),
                user: p.user.clone(),
                unit: p.unit.clone(),
                exe: p.exe.clone(),
                comm: p.comm.clone().unwrap_or_default(),
            },
            session: SessionInfo {
                id: session.id.to_string(),
                database,
                application_name,
            },
        }
    }
}
