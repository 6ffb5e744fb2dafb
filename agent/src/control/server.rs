//! The agent side of the control sockets.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::SystemTime};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{CgroupStatus, MAX_LINE, Request, Response, StatusReport, TargetStatus};
use crate::{
    approval::{Approvals, Approver, Choice, DecideError},
    audit::AuditLog,
    identity::OidcValidator,
    intercept::Interceptor,
    proxy::Proxy,
};

/// How long a peer may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the sockets answer from.
pub struct ControlState {
    pub proxy: Arc<Proxy>,
    pub interceptor: Arc<Interceptor>,
    pub approvals: Arc<Approvals>,
    pub oidc: Option<Arc<OidcValidator>>,
    pub audit: AuditLog,
    pub bundle: Option<Arc<crate::policy::bundle::BundleSync>>,
    pub started: SystemTime,
    /// The approvals page's sign-ins and its address, when it is served.
    pub web: Option<(Arc<crate::approval::WebLogins>, std::net::SocketAddr)>,
}

/// Who may connect, and so what a socket answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600 and peer uid 0: every request.
    Root,
    /// Mode 0666: approval requests only, decided by the peer's identity.
    Approvers,
}

/// Binds a control socket at `path` and serves it forever.
pub fn serve(path: &Path, state: Arc<ControlState>, access: Access) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let mode = match access {
        Access::Root => 0o600,
        Access::Approvers => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &state, access).await {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(mut stream: UnixStream, state: &ControlState, access: Access) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let mut line = String::new();
    let mut reader = BufReader::new((&mut stream).take(MAX_LINE as u64));
    // Anyone may connect to the approvals socket: idle peers are dropped.
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line"))??;
    drop(reader);
    // The root socket's file is 0600; the peer check keeps it root-only even
    // if its mode is loosened by hand.
    let response = if access == Access::Root && uid != 0 {
        error("the control socket is root-only")
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status) if access == Access::Root => Response::Status(status(state)),
            Ok(Request::Status) => error("status is served on the root-only control socket"),
            // Names and groups (NSS lookups) only for who decides or lists.
            Ok(request) => approvals(request, Approver::from_peer(&stream)?, state).await,
            Err(e) => error(&format!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await
}

async fn approvals(request: Request, peer: Approver, state: &ControlState) -> Response {
    let token = match &request {
        Request::ApprovalsList { token }
        | Request::ApprovalsShow { token, .. }
        | Request::ApprovalsDecide { token, .. }
        | Request::ApprovalsWeb { token } => token.as_deref(),
        Request::Status => None,
    };
    let who = match token {
        None => peer,
        Some(token) => {
            let Some(oidc) = &state.oidc else {
                return error("this agent has no [identity.oidc]; decide as your unix user instead");
            };
            match oidc
                .validate(token)
                .await
                .and_then(|t| Approver::from_token(oidc, t, Some(&peer)))
            {
                Ok(who) => who,
                Err(e) => return error(&format!("token refused: {e}")),
            }
        }
    };
    let approvals = &state.approvals;
    match request {
        Request::ApprovalsList { .. } => Response::Approvals {
            approvals: approvals.list(&who),
        },
        Request::ApprovalsShow { id, .. } => match approvals.show(&who, &id) {
            Ok(approval) => Response::Approval { approval },
            Err(e) => decide_error(&e),
        },
        Request::ApprovalsDecide {
            id, approve, reason, ..
        } => {
            let choice = if approve {
                Choice::Approve { reason }
            } else {
                Choice::Deny { reason }
            };
            match approvals.decide(&id, &who, choice).await {
                Ok(decided) => Response::Decided {
                    decision: crate::approval::decided_json(&id, &decided),
                },
                Err(e) => decide_error(&e),
            }
        }
        Request::ApprovalsWeb { .. } => match &state.web {
            Some((logins, addr)) => match logins.link(who) {
                Some(token) => Response::WebLink {
                    url: format!("http://{addr}/login?t={token}"),
                },
                None => error("no randomness for a sign-in link"),
            },
            None => error("the approvals page is off: set [approvals] web_listen"),
        },
        Request::Status => error("status is not an approval request"),
    }
}

fn decide_error(e: &DecideError) -> Response {
    error(&e.to_string())
}

fn error(message: &str) -> Response {
    Response::Error {
        message: message.to_owned(),
    }
}

fn status(state: &ControlState) -> StatusReport {
    let (proxy, interceptor) = (&state.proxy, &state.interceptor);
    let config = &proxy.config;
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_unix_ms: state
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        listen_port: config.intercept.listen_port,
        generation: interceptor.generation(),
        protections: interceptor.protections().clone(),
        cgroups: interceptor
            .cgroups()
            .iter()
            .map(|c| CgroupStatus {
                path: c.path.display().to_string(),
                id: c.id,
            })
            .collect(),
        targets: config
            .targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name.clone(),
                protocol: t.protocol.as_str().to_owned(),
                address: t.address.clone(),
                endpoints: t
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .chain(t.unix.iter().cloned())
                    .collect(),
            })
            .collect(),
        sessions: proxy.registry.sessions(),
        worker_sessions: proxy.workers.loads(),
        pending_approvals: state.approvals.pending(),
        counters: proxy.registry.counters(),
        audit: state.audit.health().map(Box::new),
        policy_bundle: state.bundle.as_ref().map(|b| Box::new(b.status())),
    }
}
