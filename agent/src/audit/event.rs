//! The audit event, schema v1: one shape for every protocol and every kind
//! of event, so auditors query one table.
//!
//! Handlers fill what they know and leave the rest `None`; the store assigns
//! `seq`, `prev_hash` and `hash` when it appends.
use std::{borrow::Cow, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the event schema written into every file's metadata.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AgentStart,
    AgentStop,
    SessionStart,
    Command,
    CommandResult,
    Approval,
    PolicyReload,
    SessionEnd,
    Retention,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentStart => "agent_start",
            EventKind::AgentStop => "agent_stop",
            EventKind::SessionStart => "session_start",
            EventKind::Command => "command",
            EventKind::CommandResult => "command_result",
            EventKind::Approval => "approval",
            EventKind::PolicyReload => "policy_reload",
            EventKind::SessionEnd => "session_end",
            EventKind::Retention => "retention",
        }
    }

    /// The inverse of [`EventKind::as_str`]; `None` for unknown names.
    pub fn parse(name: &str) -> Option<Self> {
        [
            EventKind::AgentStart,
            EventKind::AgentStop,
            EventKind::SessionStart,
            EventKind::Command,
            EventKind::CommandResult,
            EventKind::Approval,
            EventKind::PolicyReload,
            EventKind::SessionEnd,
            EventKind::Retention,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// Who asked, as established by the token the client presented.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// The process the kernel saw open the connection, enriched from /proc.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Thread id of the caller of connect().
    pub pid: Option<u32>,
    /// Process (thread-group) id.
    pub tgid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// The command line's shape: program and option names, values as `?`
    /// (arguments carry tokens and PHI), cut short.
    pub cmdline: Option<String>,
    /// cgroup v2 path relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// systemd unit (service or scope) taken from the cgroup path.
    pub unit: Option<String>,
}

/// The protected service the session was for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetRef {
    pub name: String,
    pub protocol: String,
    /// The address the client asked for (ip:port).
    pub address: String,
}

/// A command as recorded: literals masked, never raw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command text with PHI literals masked.
    pub text: Option<String>,
    /// Stable hash of the command's shape (literals removed).
    pub fingerprint: Option<String>,
    /// Statement kind, e.g. "select", "drop_table", "exec".
    pub kind: Option<String>,
    pub tables: Vec<String>,
    pub columns: Vec<String>,
    /// Bound parameter values, masked with the PHI detectors.
    pub parameters: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Block,
    /// Held for human approval (a command, or an approval request).
    Hold,
    Approved,
    Denied,
    TimedOut,
    /// An approval request that ended undecided: its client left, or the
    /// agent stopped or restarted while it was pending.
    Cancelled,
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Block => "block",
            Verdict::Hold => "hold",
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
            Verdict::TimedOut => "timed_out",
            Verdict::Cancelled => "cancelled",
            Verdict::Error => "error",
        }
    }

    /// The inverse of [`Verdict::as_str`]; `None` for unknown names.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Verdict::Allow,
            Verdict::Block,
            Verdict::Hold,
            Verdict::Approved,
            Verdict::Denied,
            Verdict::TimedOut,
            Verdict::Cancelled,
            Verdict::Error,
        ]
        .into_iter()
        .find(|v| v.as_str() == name)
    }
}

/// What was decided about a session or command, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule_id: Option<String>,
    pub reason: Option<String>,
    pub approver: Option<String>,
    /// Time spent waiting for approval, µs.
    pub wait_us: Option<u64>,
    /// The approval request a hold created (`loopgate approvals show ID`).
    pub approval_id: Option<String>,
}

impl Decision {
    /// A decision with only its verdict set.
    pub fn new(verdict: Verdict) -> Self {
        Decision {
            verdict,
            rule_id: None,
            reason: None,
            approver: None,
            wait_us: None,
            approval_id: None,
        }
    }

    pub fn rule(mut self, rule_id: impl Into<String>) -> Self {
        self.rule_id = Some(rule_id.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// What came of a session or command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// "ok", "error", "refused", "unreachable", ...
    pub status: Option<String>,
    pub rows: Option<u64>,
    /// Bytes sent to the client.
    pub bytes_to_client: Option<u64>,
    /// Bytes sent to the backend.
    pub bytes_to_server: Option<u64>,
    /// Protocol error code (e.g. a SQLSTATE).
    pub error_code: Option<String>,
    /// Names of the fields that were masked.
    pub masked_fields: Vec<String>,
    pub masked_count: Option<u64>,
}

/// One audit record. Build it with [`Event::new`] and the `with_*` setters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: Uuid,
    pub session_id: Option<Uuid>,
    /// Position in the hash chain; assigned by the store.
    pub seq: u64,
    pub kind: EventKind,
    /// For a command's result or approval, the event id of the command.
    pub command_id: Option<Uuid>,
    /// µs since the Unix epoch, UTC.
    pub time_us: i64,
    // The parts every event of a session repeats are shared, not copied:
    // a statement records two events.
    pub host: Cow<'static, str>,
    pub agent_version: Cow<'static, str>,
    /// Client socket address as the agent saw it (loopback ip:port).
    pub client_address: Option<Arc<str>>,
    pub principal: Option<Arc<Principal>>,
    pub process: Option<Arc<ProcessInfo>>,
    pub target: Option<Arc<TargetRef>>,
    pub command: Option<CommandInfo>,
    pub decision: Option<Decision>,
    pub outcome: Option<Outcome>,
    /// Duration of the session or command, µs.
    pub duration_us: Option<u64>,
    /// Hash of the previous event in the chain (hex); assigned by the store.
    pub prev_hash: String,
    /// SHA-256 over the canonical encoding of this event and `prev_hash`
    /// (hex); assigned by the store.
    pub hash: String,
}

impl Event {
    /// A new event of `kind`, stamped now, with a fresh UUIDv7.
    pub fn new(kind: EventKind) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Event {
            event_id: Uuid::now_v7(),
            session_id: None,
            seq: 0,
            kind,
            command_id: None,
            time_us: i64::try_from(now.as_micros()).unwrap_or(i64::MAX),
            host: Cow::Borrowed(super::host_name()),
            agent_version: Cow::Borrowed(env!("CARGO_PKG_VERSION")),
            client_address: None,
            principal: None,
            process: None,
            target: None,
            command: None,
            decision: None,
            outcome: None,
            duration_us: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    pub fn session(mut self, id: Uuid) -> Self {
        self.session_id = Some(id);
        self
    }
}
