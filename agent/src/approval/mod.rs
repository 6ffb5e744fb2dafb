//! Just-in-time approvals: a held command waits in place, its client's
//! connection open, until enough people of the policy's approver group
//! approve it — or one denies it, or it times out, or its client leaves.
//!
//! - `registry`: the pending requests and every transition, each audited
//!   and tied to the command's event.
//! - `approver`: who is deciding (unix peer credentials or an OIDC token).
//! - `journal`: pending requests on disk, so that a request cut short by a
//!   crash or restart is still recorded as cancelled.
//! - `webhook`: the notification (JSON with Slack-compatible text).
//! - `api`: the loopback HTTP API. (`loopgate approvals`, a client of the
//!   approvals socket, is `control::approvals_cli`.)
mod api;
mod approver;
mod config;
mod journal;
mod registry;
mod web;
mod webhook;

pub use api::{decided_json, serve_http};
pub use approver::Approver;
pub use config::{ApprovalsConfig, DEFAULT_SOCKET};
pub use registry::{
    Approvals, Choice, DecideError, Decided, Ended, HoldError, HoldRequest, Origin, Resolution, Ticket,
};
pub use web::{WebLogins, serve_web};

use serde::{Deserialize, Serialize};

/// A pending request as approvers see it. The command and its parameters
/// are masked as in the audit trail: approving never shows raw PHI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub id: String,
    pub requested_unix_ms: u64,
    pub expires_unix_ms: u64,
    /// Who asked: the principal (`unix:<user>` or the token's subject).
    pub requester: String,
    pub process: ProcessView,
    pub target: String,
    pub command: String,
    pub parameters: Vec<String>,
    pub rule_id: String,
    pub reason: String,
    pub approver_group: String,
    pub min_approvals: u32,
    /// Approvers so far.
    pub approvals: Vec<String>,
    /// For a row-threshold gate: the rows the client already received.
    pub rows_sent: Option<u64>,
}

/// The requesting process, as the kernel saw it (no command line: it can
/// carry secrets and the view travels to chat).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
}

impl ApprovalView {
    /// What the waiting client is told (a PostgreSQL notice, which psql
    /// prints as it arrives), and a hint on how it gets decided.
    pub fn notice(&self) -> (String, String) {
        self.notice_for("statement")
    }

    /// [`notice`](Self::notice) in the protocol's own word for what waits
    /// ("statement", "command", "operation").
    pub fn notice_for(&self, noun: &str) -> (String, String) {
        let waiting = match self.rows_sent {
            Some(rows) => format!("the rest of this result (after {rows} rows) waits"),
            None => format!("this {noun} waits"),
        };
        let message = format!(
            "loopgate: {waiting} for approval {} (rule {}: {})",
            self.id, self.rule_id, self.reason
        );
        let seconds = self.expires_unix_ms.saturating_sub(self.requested_unix_ms) / 1000;
        let hint = format!(
            "{} member(s) of {} must run `loopgate approvals approve {}` within {seconds}s; otherwise it is refused",
            self.min_approvals, self.approver_group, self.id
        );
        (message, hint)
    }
}

impl std::fmt::Display for ApprovalView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "approval {}", self.id)?;
        writeln!(f, "  requester  {}", self.requester)?;
        let p = &self.process;
        writeln!(
            f,
            "  process    pid {} user {} comm {} unit {}",
            p.pid.map_or("?".into(), |v| v.to_string()),
            p.user.as_deref().unwrap_or("?"),
            p.comm.as_deref().unwrap_or("?"),
            p.unit.as_deref().unwrap_or("-"),
        )?;
        writeln!(f, "  target     {}", self.target)?;
        writeln!(f, "  rule       {}: {}", self.rule_id, self.reason)?;
        writeln!(f, "  command    {}", self.command)?;
        if !self.parameters.is_empty() {
            writeln!(f, "  parameters {}", self.parameters.join(", "))?;
        }
        if let Some(rows) = self.rows_sent {
            writeln!(f, "  rows sent  {rows} (the rest waits for approval)")?;
        }
        writeln!(
            f,
            "  approvals  {}/{} from group {}{}",
            self.approvals.len(),
            self.min_approvals,
            self.approver_group,
            if self.approvals.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.approvals.join(", "))
            }
        )?;
        write!(f, "  expires    in {}", remaining(self.expires_unix_ms))
    }
}

/// "5m 3s" until `unix_ms`, or "expired".
fn remaining(unix_ms: u64) -> String {
    let left = unix_ms.saturating_sub(now_unix_ms()) / 1000;
    if left == 0 {
        return "expired".to_owned();
    }
    match (left / 60, left % 60) {
        (0, s) => format!("{s}s"),
        (m, s) => format!("{m}m {s}s"),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
