//! The decision interface protocol handlers call for each command, and the
//! built-in policy used when no policy is configured.
//!
//! Handlers depend only on [`PolicyEngine`], so the Rego engine can replace
//! [`BuiltinPolicy`] without touching them. [`PolicyInput`] serializes to the
//! JSON document a Rego policy sees as `input`.
mod builtin;
pub mod bundle;
pub mod cli;
mod handle;
pub mod invariants;
mod rego;

pub use builtin::{BuiltinPolicy, BuiltinPolicyConfig, rule_ids};
pub use handle::{PolicyHandle, PolicyWatcher, watch};
pub use rego::{
    DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL, ENTRY_POINT, POLICY_ERROR_RULE, PolicyError, RegoPolicy,
    RegoPolicyConfig, Summary, TestOutcome, TestReport, check, run_tests,
};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{mask::MaskRule, sql::AnalyzedStatement};

/// Who is asking: the identity from the token the client presented.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub subject: String,
    pub groups: Vec<String>,
}

/// The process the kernel saw open the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    /// systemd unit, when the process runs in one.
    pub unit: Option<String>,
    pub exe: Option<String>,
    pub comm: String,
}

/// The protected service the command goes to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    /// Target name from the config.
    pub name: String,
    /// `postgres`, `ssh`, `http`, `tcp`.
    pub protocol: String,
    /// How the target establishes the caller: `process` (the kernel's
    /// attribution is the identity, no token is asked, the principal is
    /// `unix:<user>`) or `oidc` (a token; an empty subject means nobody
    /// authenticated). Anything but `process` — empty, or the older
    /// `token` — is read as `oidc`, so policies fail towards asking.
    pub identity: String,
}

/// The client session a statement arrives on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// The session id audit records carry.
    pub id: String,
    /// The database the client asked for (PostgreSQL `database`), if known.
    pub database: Option<String>,
    /// The client's `application_name`, if it sent one (client-chosen: do
    /// not grant anything on it).
    pub application_name: Option<String>,
}

/// Everything a policy decides on, for one command.
///
/// Serialized as the Rego `input`: `principal`, `process`, `target`,
/// `action` (tagged by `kind`), `session`, `time` — and, for SQL,
/// `statement` (the same as `action.statement`), so packs written for
/// SQL alone keep working.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub principal: &'a Principal,
    pub process: &'a ProcessInfo,
    pub target: &'a TargetInfo,
    pub action: Action<'a>,
    pub session: Option<&'a SessionInfo>,
    /// When the command arrived; serialized as [`InputTime`] so Rego
    /// rules need no time builtins.
    pub time: SystemTime,
}

impl<'a> PolicyInput<'a> {
    /// The SQL statement, when the action is one.
    pub fn statement(&self) -> Option<&'a AnalyzedStatement> {
        match self.action {
            Action::Sql { statement } => Some(statement),
            _ => None,
        }
    }
}

impl Serialize for PolicyInput<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("principal", self.principal)?;
        m.serialize_entry("process", self.process)?;
        m.serialize_entry("target", self.target)?;
        m.serialize_entry("action", &self.action)?;
        if let Some(statement) = self.statement() {
            m.serialize_entry("statement", statement)?;
        }
        m.serialize_entry("session", &self.session)?;
        m.serialize_entry("time", &InputTime::of(self.time))?;
        m.end()
    }
}

/// What a command does, as `input.action`: tagged by `kind`, one kind per
/// thing a protocol lets a client do. The policy README documents each.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action<'a> {
    /// A SQL statement (PostgreSQL targets).
    Sql { statement: &'a AnalyzedStatement },
    /// `ssh host command`: one command run without a terminal.
    SshExec { command: &'a str },
    /// An interactive shell; `term` is the terminal the client asked for
    /// (`null` without a pty).
    SshShell { pty: bool, term: Option<&'a str> },
    /// An SFTP operation (`read`, `write`, `list`, `remove`, `rename`,
    /// `mkdir`, `rmdir`, `setstat`, `symlink`) on a path, `to` the second
    /// path of a rename or symlink; `session` (path empty) when the sftp
    /// subsystem starts.
    SshSftp {
        operation: &'a str,
        path: &'a str,
        to: Option<&'a str>,
    },
    /// A forward: `channel` is `direct-tcpip` (`ssh -L`, host:port as the
    /// target sees it), `direct-streamlocal` (a unix socket path in `host`,
    /// port 0), `tcpip-forward` (`ssh -R`), `agent` or `x11`.
    SshForward { channel: &'a str, host: &'a str, port: u16 },
    /// One HTTP request (HTTPS and HTTP targets: the Kubernetes API, FHIR).
    HttpRequest(&'a HttpRequest),
}

impl Action<'_> {
    /// What identifies this action for the decision cache, or `None` when
    /// its decision must not be cached (an unparsed statement: its reason
    /// carries the parser's position; a statement whose classification its
    /// literals or the session decide, see below). For SQL: the normalized
    /// text plus the literal LIMIT — the classification is a function of
    /// those, except for [`Classification::depends_on_literals`] and
    /// [`Classification::is_executed_prepared`], which are not cached — and
    /// text (unlike a 64-bit fingerprint) cannot be made to collide.
    pub fn cache_key(&self, field: &mut impl FnMut(&str)) -> Option<()> {
        match self {
            Action::Sql { statement } => {
                let c = statement.classification.as_ref().ok()?;
                // A function body or COPY option changes what the statement
                // does, and `EXECUTE name` runs whatever the session
                // prepared: the normalized text does not determine these.
                if c.depends_on_literals() || c.is_executed_prepared() {
                    return None;
                }
                field("sql");
                field(&c.limit.map_or_else(|| "-".to_string(), |l| l.to_string()));
                field(&statement.normalized_text);
            }
            Action::SshExec { command } => {
                field("ssh_exec");
                field(command);
            }
            Action::SshShell { pty, term } => {
                field("ssh_shell");
                field(if *pty { "pty" } else { "-" });
                field(term.unwrap_or("-"));
            }
            Action::SshSftp { operation, path, to } => {
                field("ssh_sftp");
                field(operation);
                field(path);
                field(to.unwrap_or("\0"));
            }
            Action::SshForward { channel, host, port } => {
                field("ssh_forward");
                field(channel);
                field(host);
                field(&port.to_string());
            }
            Action::HttpRequest(r) => {
                // A write's body makes it one of a kind, and a big key.
                if r.kubernetes.as_ref().is_some_and(|k| k.body.is_some()) {
                    return None;
                }
                field("http_request");
                // Serialized whole: every field a rule may read is in the key.
                field(&serde_json::to_string(r).ok()?);
            }
        }
        Some(())
    }

    /// A short, PHI-free name of the action for logs: the statement's
    /// fingerprint, or the kind.
    pub fn log_name(&self) -> String {
        match self {
            Action::Sql { statement } => statement.fingerprint.to_string(),
            Action::SshExec { .. } => "ssh_exec".into(),
            Action::SshShell { .. } => "ssh_shell".into(),
            Action::SshSftp { operation, .. } => format!("ssh_sftp {operation}"),
            Action::SshForward { .. } => "ssh_forward".into(),
            Action::HttpRequest(r) => format!("http_request {}", r.method),
        }
    }
}

/// `input.action` of kind `http_request`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    /// The request as the Kubernetes API conventions read it, for a
    /// Kubernetes target.
    pub kubernetes: Option<KubernetesRequest>,
    /// The request as FHIR's RESTful API reads it, for a FHIR target.
    pub fhir: Option<FhirRequest>,
}

/// A FHIR REST request's parts (`input.action.fhir`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FhirRequest {
    /// read, vread, update, patch, delete, history, create, search,
    /// capabilities, batch (batch or transaction), operation.
    pub interaction: String,
    /// `Patient`, `Observation`, ...; `null` for system-level requests.
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// The operation for `interaction = "operation"`, with its `$`
    /// (`$export`, `$everything`).
    pub operation: Option<String>,
    /// Search parameter names (with modifiers, `name:exact`), sorted; never
    /// their values.
    pub search_params: Vec<String>,
    /// The compartment of a compartment search (`Patient/p1` for
    /// `GET Patient/p1/Observation`, whose `resource_type` is `Observation`).
    pub compartment: Option<String>,
    /// A batch or transaction: the Bundle's `type` (`batch`, `transaction`).
    pub bundle_type: Option<String>,
    /// A batch's or transaction's entries, in order, each request read as
    /// if it came alone (read before the decision from the body).
    pub entries: Vec<FhirRequest>,
}

/// A Kubernetes API request's parts (`input.action.kubernetes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KubernetesRequest {
    /// get, list, watch, create, update, patch, delete, deletecollection,
    /// or the subresource verb (exec, attach, portforward, log, ...).
    pub verb: String,
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// exec: the command's words (`command` parameters, in order); empty
    /// for other requests.
    pub command: Vec<String>,
    /// exec, attach, log: the `container` parameter.
    pub container: Option<String>,
    /// create, update, patch, delete: the JSON the request sends (the
    /// object, the patch, or DeleteOptions), read whole before the
    /// decision as the API server decodes it; `null` without a body.
    pub body: Option<serde_json::Value>,
    /// The body's media type without parameters (`application/json`,
    /// `application/json-patch+json`, ...); `null` without a body.
    pub content_type: Option<String>,
}

/// `input.time`: UTC, so working-hours rules read the same on every host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InputTime {
    pub unix_secs: u64,
    /// 0 = Sunday ... 6 = Saturday.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
}

impl InputTime {
    pub fn of(time: SystemTime) -> Self {
        // Before 1970 cannot happen on a sane host; clamp rather than fail.
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let of_day = secs % 86_400;
        InputTime {
            unix_secs: secs,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4) % 7) as u8,
            hour: (of_day / 3600) as u8,
            minute: (of_day % 3600 / 60) as u8,
        }
    }
}

/// Human approval needed before the statement runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub rule_id: String,
    pub reason: String,
    /// Group whose members may approve.
    pub approver_group: String,
    pub min_approvals: u32,
    /// Denied when not approved within this time.
    pub timeout: Duration,
    /// Hold only if the statement would touch more rows than this (the
    /// handler pauses the results there until approved); `None` holds before
    /// the command runs.
    pub row_threshold: Option<u64>,
    /// Mask rules applied to the results if approved, before the configured ones.
    pub mask: Vec<MaskRule>,
}

/// What to do with a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Run it; `mask` rules go before the configured mask rules.
    Allow {
        mask: Vec<MaskRule>,
    },
    /// Refuse it. `reason` goes to the client and the audit record: it must
    /// not quote data values.
    Deny {
        rule_id: String,
        reason: String,
    },
    Hold(Hold),
}

impl PolicyDecision {
    pub fn allow() -> Self {
        PolicyDecision::Allow { mask: Vec::new() }
    }

    pub fn deny(rule_id: &str, reason: impl Into<String>) -> Self {
        PolicyDecision::Deny {
            rule_id: rule_id.to_string(),
            reason: reason.into(),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, PolicyDecision::Allow { .. })
    }

    /// The rule that decided, for Deny and Hold.
    pub fn rule_id(&self) -> Option<&str> {
        match self {
            PolicyDecision::Allow { .. } => None,
            PolicyDecision::Deny { rule_id, .. } => Some(rule_id),
            PolicyDecision::Hold(hold) => Some(&hold.rule_id),
        }
    }

    /// Mask rules the decision adds for this statement's results.
    pub fn mask_overrides(&self) -> &[MaskRule] {
        match self {
            PolicyDecision::Allow { mask } => mask,
            PolicyDecision::Hold(hold) => &hold.mask,
            PolicyDecision::Deny { .. } => &[],
        }
    }

    /// `allow`, `deny` or `hold`, for audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyDecision::Allow { .. } => "allow",
            PolicyDecision::Deny { .. } => "deny",
            PolicyDecision::Hold(_) => "hold",
        }
    }
}

/// Decides per statement. Implementations must be fast (called on the
/// command path) and must not panic; an engine that fails internally returns
/// `Deny` (fail closed).
pub trait PolicyEngine: Send + Sync {
    fn decide(&self, input: &PolicyInput<'_>) -> PolicyDecision;
}
