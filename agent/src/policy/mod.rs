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
    /// `unix:<user>`) or `token` (OIDC; an empty subject means nobody
    /// authenticated). Empty means `token`, so policies fail towards asking.
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

/// Everything a policy decides on, for one statement.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PolicyInput<'a> {
    pub principal: &'a Principal,
    pub process: &'a ProcessInfo,
    pub target: &'a TargetInfo,
    pub statement: &'a AnalyzedStatement,
    pub session: Option<&'a SessionInfo>,
    /// When the statement arrived; serialized as [`InputTime`] so Rego
    /// rules need no time builtins.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
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

fn serialize_time<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    InputTime::of(*time).serialize(s)
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
    /// handler checks, e.g. with EXPLAIN); `None` holds always.
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
