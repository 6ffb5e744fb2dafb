//! How a session ended, as its `session_end` event records it.

/// The `outcome.status` of a `session_end` event. Auditors filter on these
/// strings, so a variant's string never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndStatus {
    /// Either side closed normally.
    Ok,
    /// The client left before the session was established.
    Closed,
    /// The client broke its protocol.
    ProtocolError,
    /// loopgate refused the session (an unknown cancel key, ...).
    Refused,
    /// The client did not authenticate.
    AuthFailed,
    /// The server could not be reached.
    Unreachable,
    /// The server refused loopgate's own login.
    UpstreamRefused,
    /// The audit trail could not record a command, so the session was ended.
    AuditUnavailable,
    /// Closed by the agent's shutdown after the drain timeout.
    Shutdown,
    /// The relay failed.
    Error,
}

impl EndStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndStatus::Ok => "ok",
            EndStatus::Closed => "closed",
            EndStatus::ProtocolError => "protocol_error",
            EndStatus::Refused => "refused",
            EndStatus::AuthFailed => "auth_failed",
            EndStatus::Unreachable => "unreachable",
            EndStatus::UpstreamRefused => "upstream_refused",
            EndStatus::AuditUnavailable => "audit_unavailable",
            EndStatus::Shutdown => "shutdown",
            EndStatus::Error => "error",
        }
    }
}

/// How a session ended: its status, and what went wrong if anything.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    pub status: EndStatus,
    /// A PHI-free description of what went wrong.
    pub reason: Option<String>,
}

impl SessionEnd {
    pub fn ok() -> Self {
        SessionEnd {
            status: EndStatus::Ok,
            reason: None,
        }
    }

    pub fn failed(status: EndStatus, reason: impl Into<String>) -> Self {
        SessionEnd {
            status,
            reason: Some(reason.into()),
        }
    }
}
