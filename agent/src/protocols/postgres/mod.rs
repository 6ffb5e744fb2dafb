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
//! - `upstream`, `scram`, `config`: loopgate's own connection to the server
//!   with the target's stored credential (the automation never sees it),
//!   over TLS when configured (`crate::tls`).
mod backend;
mod cancel;
mod catalog;
pub mod config;
mod copy;
pub mod frame;
mod frontend;
#[cfg(any(test, feature = "fuzzing"))]
pub mod harness;
mod pending;
mod record;
#[cfg(test)]
mod robustness;
mod rows;
pub mod scram;
mod startup;
mod stream;
mod types;
pub mod upstream;
mod wire;

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::mpsc};

use self::{
    backend::Backend,
    cancel::{CancelRegistry, CancelTarget},
    frontend::Frontend,
    startup::Opening,
    upstream::{UpstreamError, UpstreamSettings},
    wire::sqlstate,
};
use crate::{
    approval::Approvals,
    audit::{AuditError, Principal},
    config::Identity,
    identity::OidcValidator,
    mask::Masker,
    policy::{self, PolicyEngine},
    proxy::{Session, SessionEnd},
    sql::AnalysisCache,
};

/// How many answers the client side may queue ahead of the server side
/// (pipelined statements); beyond it the client side waits.
const PIPELINE_DEPTH: usize = 1024;

/// Everything a target's PostgreSQL sessions share; built once at start.
pub struct Service {
    pub analysis: AnalysisCache,
    pub policy: Arc<dyn PolicyEngine>,
    pub masker: Masker,
    pub target: policy::TargetInfo,
    pub upstream: UpstreamSettings,
    /// Host name or IP the upstream certificate must match (verify-full).
    pub server_name: String,
    /// loopgate's TLS server config, when the target offers TLS to clients.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// How callers are identified.
    pub identity: Identity,
    /// Token validation, for `identity = "oidc"`.
    pub oidc: Option<Arc<OidcValidator>>,
    pub cancels: CancelRegistry,
    /// Real names of the tables and columns results come from.
    pub tables: catalog::TableCache,
    /// Where held statements wait for approval.
    pub approvals: Arc<Approvals>,
}

/// Serves one intercepted PostgreSQL connection.
pub async fn serve(svc: &Service, session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    let opening = match startup::open(client, svc.client_tls.as_ref()).await {
        Ok(o) => o,
        Err(SessionError::Closed) => {
            return SessionEnd::failed("closed", "client left during startup");
        }
        Err(e) => return SessionEnd::failed("protocol_error", e.to_string()),
    };
    let (mut stream, parameters, buf) = match opening {
        Opening::Cancel { pid, secret } => {
            let known = svc.cancels.cancel(pid, &secret).await;
            tracing::info!(session = %session.id, known, "cancel request");
            return if known {
                SessionEnd::ok()
            } else {
                SessionEnd::failed("refused", "cancel request with an unknown key")
            };
        }
        Opening::Session {
            stream,
            parameters,
            buf,
        } => (stream, parameters, buf),
    };
    let principal = match authenticate(svc, session, &mut stream).await {
        Ok(p) => p,
        Err(end) => return end,
    };
    let _ = session.principal.set(Arc::new(principal));

    let connected = tokio::time::timeout(
        connect_timeout,
        upstream::connect(session.original, &svc.server_name, &svc.upstream, &parameters),
    )
    .await
    .unwrap_or_else(|_| {
        Err(UpstreamError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )))
    });
    let upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            // The server's own words may name the upstream role or echo
            // values: the client gets the SQLSTATE, the log the details.
            tracing::warn!(session = %session.id, error = %e, "upstream login failed");
            let code = e.sqlstate().unwrap_or(sqlstate::CONNECTION_FAILURE).to_owned();
            let message = format!("loopgate: the database refused or could not be reached (SQLSTATE {code})");
            let _ = stream.write_all(&wire::fatal(&code, &message)).await;
            let status = if matches!(e, UpstreamError::Connect(_)) {
                "unreachable"
            } else {
                "upstream_refused"
            };
            return SessionEnd::failed(status, format!("upstream login failed: SQLSTATE {code}"));
        }
    };

    let cancel = upstream.backend_key.as_ref().map(|(pid, secret)| CancelTarget {
        addr: session.original,
        server_name: svc.server_name.clone(),
        tls: svc.upstream.tls.clone(),
        pid: *pid,
        secret: secret.clone(),
    });
    let key = cancel.clone().map(|target| svc.cancels.register(target));
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&wire::authentication_ok());
    for (name, value) in &upstream.parameters {
        hello.extend_from_slice(&wire::parameter_status(name, value));
    }
    if let Some((pid, secret)) = key {
        hello.extend_from_slice(&wire::backend_key_data(pid, secret));
    }
    hello.extend_from_slice(&wire::ready_for_query(b'I'));
    session.add_to_client(hello.len());
    let end = match stream.write_all(&hello).await {
        Ok(()) => {
            let catalog = tokio::sync::Mutex::new(catalog::Catalog::new(
                session.original,
                &svc.server_name,
                &svc.upstream,
                &parameters,
            ));
            relay(svc, session, stream, buf, upstream, &catalog, cancel).await
        }
        Err(_) => SessionEnd::failed("closed", "client left during startup"),
    };
    if let Some(key) = key {
        svc.cancels.unregister(key);
    }
    end
}

/// Establishes who the caller is. `process`: the kernel's attribution.
/// `oidc`: the password message carries a token, which must validate and
/// be bound to the process the kernel saw; a refusal is a FATAL 28000.
async fn authenticate(
    svc: &Service,
    session: &Session,
    stream: &mut stream::PgStream,
) -> Result<Principal, SessionEnd> {
    let process = &session.process;
    let Some(oidc) = svc.oidc.as_ref().filter(|_| svc.identity == Identity::Oidc) else {
        let user = process
            .user
            .clone()
            .unwrap_or_else(|| process.uid.map_or_else(|| "?".to_owned(), |u| u.to_string()));
        return Ok(Principal {
            subject: Some(format!("unix:{user}")),
            issuer: Some("kernel".to_owned()),
            email: None,
            groups: Vec::new(),
        });
    };
    let closed = || SessionEnd::failed("closed", "client left during authentication");
    stream
        .write_all(&wire::authentication_cleartext())
        .await
        .map_err(|_| closed())?;
    let mut buf = BytesMut::new();
    let message = frame::read_frame(stream, &mut buf, true, frame::MAX_STARTUP_MESSAGE).await;
    let token = match message {
        Ok(Some(f)) if f.tag == Some(b'p') => frame::cstr(f.body())
            .and_then(|(t, _)| std::str::from_utf8(t).ok())
            .map(str::to_owned),
        Ok(None) => return Err(closed()),
        _ => None,
    };
    let refuse = async |stream: &mut stream::PgStream, reason: String| {
        tracing::warn!(session = %session.id, %reason, "authentication refused");
        let message = format!("loopgate: authentication failed: {reason}");
        let _ = stream
            .write_all(&wire::fatal(sqlstate::INVALID_AUTHORIZATION, &message))
            .await;
        SessionEnd::failed("auth_failed", reason)
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(refuse(stream, "expected a token as the password".to_owned()).await);
    };
    let validated = match oidc.validate(&token).await {
        Ok(v) => v,
        Err(e) => return Err(refuse(stream, format!("token refused: {e}")).await),
    };
    if let Err(e) = oidc.check_binding(&validated, process.uid.unwrap_or(u32::MAX), process.unit.as_deref()) {
        return Err(refuse(stream, format!("token refused: {e}")).await);
    }
    Ok(Principal {
        subject: Some(validated.subject),
        issuer: Some(validated.issuer),
        email: validated.email,
        groups: validated.groups,
    })
}

/// Runs the two directions until either side ends the session.
async fn relay(
    svc: &Service,
    session: &Session,
    client: stream::PgStream,
    client_buf: BytesMut,
    upstream: upstream::Upstream,
    catalog: &tokio::sync::Mutex<catalog::Catalog>,
    cancel: Option<CancelTarget>,
) -> SessionEnd {
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(upstream.stream);
    let (pending_tx, pending_rx) = mpsc::channel(PIPELINE_DEPTH);
    let result = {
        let frontend = Frontend::new(svc, session, catalog, pending_tx).run(&mut client_rx, client_buf, &mut server_tx);
        let backend = Backend::new(svc, session, catalog, cancel).run(
            &mut server_rx,
            upstream.leftover,
            &mut client_tx,
            pending_rx,
        );
        tokio::select! {
            r = frontend => r,
            r = backend => r,
        }
    };
    match result {
        Ok(()) => SessionEnd::ok(),
        Err(SessionError::Protocol(reason)) => {
            tracing::warn!(session = %session.id, %reason, "ending session on a protocol error");
            let message = format!("loopgate: {reason}");
            let _ = client_tx
                .write_all(&wire::fatal(sqlstate::PROTOCOL_VIOLATION, &message))
                .await;
            SessionEnd::failed("protocol_error", reason)
        }
        Err(SessionError::Frame(e)) => {
            let _ = client_tx
                .write_all(&wire::fatal(sqlstate::PROTOCOL_VIOLATION, &format!("loopgate: {e}")))
                .await;
            SessionEnd::failed("protocol_error", e.to_string())
        }
        Err(SessionError::Audit(e)) => {
            let _ = client_tx
                .write_all(&wire::fatal(
                    sqlstate::SYSTEM_ERROR,
                    "loopgate: the audit trail is unavailable; the session is closed",
                ))
                .await;
            SessionEnd::failed("audit_unavailable", e.to_string())
        }
        Err(SessionError::Io(e)) => SessionEnd::failed("closed", format!("connection error: {e}")),
        Err(SessionError::Closed) => SessionEnd::ok(),
    }
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
