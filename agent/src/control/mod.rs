//! The control sockets. `control.sock` (root-only) answers `loopgate
//! status` and everything else; `approvals.sock` (anyone may connect)
//! answers only approval requests, deciding who the caller is from the
//! kernel's peer credentials or an OIDC token. One JSON request line in,
//! one JSON response line out.
pub mod approvals_cli;
mod client;
mod server;

pub use client::request;
pub use server::{Access, ControlState, serve};

use serde::{Deserialize, Serialize};

use crate::{
    approval::ApprovalView,
    audit::Health,
    intercept::Protections,
    proxy::{CounterSnapshot, SessionSummary},
};

/// Requests and responses are capped; anything longer is not ours.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// `token`: decide as this OIDC identity instead of the unix peer.
    ApprovalsList {
        token: Option<String>,
    },
    ApprovalsShow {
        id: String,
        token: Option<String>,
    },
    ApprovalsDecide {
        id: String,
        approve: bool,
        reason: Option<String>,
        token: Option<String>,
    },
    /// A one-time sign-in link to the approvals page for the caller.
    ApprovalsWeb {
        token: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Approvals {
        approvals: Vec<ApprovalView>,
    },
    Approval {
        approval: ApprovalView,
    },
    /// A one-time sign-in link to the approvals page.
    WebLink {
        url: String,
    },
    /// `result`: `released`, `counted` (with `have` of `need`) or `denied`.
    Decided {
        decision: serde_json::Value,
    },
    Error {
        message: String,
    },
}

/// What `loopgate status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    pub listen_port: u16,
    /// Generation of the pinned links this agent attached.
    pub generation: u64,
    /// What the kernel enforces for this agent (absent from older agents).
    #[serde(default)]
    pub protections: Protections,
    pub cgroups: Vec<CgroupStatus>,
    pub targets: Vec<TargetStatus>,
    pub sessions: Vec<SessionSummary>,
    /// Live sessions on each session worker thread.
    #[serde(default)]
    pub worker_sessions: Vec<usize>,
    /// Commands held for approval right now.
    #[serde(default)]
    pub pending_approvals: usize,
    pub counters: CounterSnapshot,
    /// The audit store, and its shipping to object storage.
    #[serde(default)]
    pub audit: Option<Box<Health>>,
    /// The fleet's policy bundle in force, when one is configured.
    #[serde(default)]
    pub policy_bundle: Option<Box<crate::policy::bundle::BundleStatus>>,
}

/// The audit lines of `loopgate status`: a failing store or upload first.
fn write_audit(f: &mut std::fmt::Formatter<'_>, h: &Health) -> std::fmt::Result {
    let state = if h.writable {
        "writable"
    } else {
        "NOT WRITABLE (events refused)"
    };
    writeln!(
        f,
        "audit: {state}, chain at seq {}, {} WAL segments waiting for Parquet",
        h.last_seq, h.pending_segments
    )?;
    for e in [&h.last_error, &h.conversion_error].into_iter().flatten() {
        writeln!(f, "  error: {e}")?;
    }
    let Some(r) = &h.remote else { return Ok(()) };
    let shipped = r
        .shipped_seq
        .map_or("nothing yet".to_owned(), |s| format!("through seq {s}"));
    writeln!(
        f,
        "  shipping to {}: {shipped}; {} file(s) ({} bytes) uploaded since start",
        r.url, r.shipped_files, r.shipped_bytes
    )?;
    if r.backlog_files > 0 {
        writeln!(
            f,
            "  backlog: {} file(s) ({} bytes) waiting, oldest {}{}",
            r.backlog_files,
            r.backlog_bytes,
            r.oldest_waiting.as_deref().unwrap_or("?"),
            if r.refusing_events {
                " — FULL: new events are refused"
            } else {
                ""
            }
        )?;
    }
    if let Some(e) = &r.last_error {
        writeln!(
            f,
            "  UPLOAD FAILING ({} attempts in a row): {e}",
            r.consecutive_failures
        )?;
    }
    match (&r.checkpoint_key_id, r.last_checkpoint_seq) {
        (None, _) => writeln!(f, "  checkpoints: none (no signing key)"),
        (Some(id), Some(seq)) => writeln!(f, "  checkpoints: key {id}, last at seq {seq}"),
        (Some(id), None) => writeln!(f, "  checkpoints: key {id}, none signed yet"),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CgroupStatus {
    pub path: String,
    pub id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub protocol: String,
    pub address: String,
    pub endpoints: Vec<String>,
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loopgate {} (pid {}), proxy on port {}, link generation {}",
            self.version, self.pid, self.listen_port, self.generation
        )?;
        let p = &self.protections;
        writeln!(
            f,
            "egress {}; unix sockets {}; caller's executable {}",
            p.egress,
            if p.unix { "checked" } else { "not checked" },
            if p.exe_identity {
                "from the kernel at connect"
            } else {
                "from /proc only"
            }
        )?;
        writeln!(f, "intercepted cgroups:")?;
        for cg in &self.cgroups {
            writeln!(f, "  {} (id {})", cg.path, cg.id)?;
        }
        writeln!(f, "targets:")?;
        for t in &self.targets {
            writeln!(
                f,
                "  {:<20} {:<8} {} → {}",
                t.name,
                t.protocol,
                t.address,
                t.endpoints.join(", ")
            )?;
        }
        writeln!(
            f,
            "live sessions: {} (per worker thread: {})",
            self.sessions.len(),
            self.worker_sessions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for s in &self.sessions {
            writeln!(
                f,
                "  {} {} {} pid={} comm={} ↑{}B ↓{}B",
                s.id,
                s.target,
                s.address,
                s.pid.map_or("?".into(), |p| p.to_string()),
                s.comm.as_deref().unwrap_or("?"),
                s.bytes_to_server,
                s.bytes_to_client
            )?;
        }
        writeln!(f, "commands held for approval: {}", self.pending_approvals)?;
        if let Some(b) = &self.policy_bundle {
            writeln!(
                f,
                "policy bundle {}: revision {} (sha256 {}, key {}), loaded from the {}{}",
                b.url,
                b.revision.map_or("?".into(), |r| r.to_string()),
                b.digest.as_deref().map_or("?", |d| &d[..d.len().min(16)]),
                b.key_id.as_deref().unwrap_or("?"),
                b.loaded_from.as_deref().unwrap_or("?"),
                b.last_error
                    .as_deref()
                    .map_or(String::new(), |e| format!("; LAST FETCH FAILED: {e}"))
            )?;
        }
        if let Some(audit) = &self.audit {
            write_audit(f, audit)?;
        }
        let c = &self.counters;
        writeln!(f, "counters:")?;
        writeln!(f, "  accepted {}  completed {}", c.accepted, c.completed)?;
        writeln!(
            f,
            "  refused: not redirected {}, by the kernel {}, audit unavailable {}; upstream unreachable {}",
            c.refused_not_redirected, c.refused_by_kernel, c.refused_audit_unavailable, c.upstream_unreachable
        )?;
        write!(
            f,
            "  bytes to servers {}, to clients {}",
            c.bytes_to_server, c.bytes_to_client
        )
    }
}
