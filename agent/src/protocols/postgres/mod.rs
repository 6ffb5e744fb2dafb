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
mod statements;
mod stream;
mod types;
pub mod upstream;
mod wire;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
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
use super::Build;
use crate::{
    audit::{AuditError, Principal},
    enforce::Enforcer,
    identity::Authenticator,
    mask::Masker,
    protocols::postgres::config::PostgresSettings,
    session::{EndStatus, Session, SessionEnd},
    sql::{AnalysisCache, Analyzer},
};

/// How many answers the client side may queue ahead of the server side
/// (pipelined statements); beyond it the client side waits.
const PIPELINE_DEPTH: usize = 1024;

/// Everything a target's PostgreSQL sessions share; built once at start.
pub struct Service {
    pub analysis: AnalysisCache,
    /// Decide, record, refuse or hold each statement.
    pub enforcer: Enforcer,
    pub masker: Masker,
    pub upstream: UpstreamSettings,
    /// Host name or IP the upstream certificate must match (verify-full).
    pub server_name: String,
    /// loopgate's TLS server config, when the target offers TLS to clients.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// How callers are identified.
    pub identity: Authenticator,
    pub cancels: CancelRegistry,
    /// Real names of the tables and columns results come from.
    pub tables: catalog::TableCache,
}

impl Service {
    /// The service of a PostgreSQL target: reads its secrets and prepares
    /// what its sessions share. Fails at agent start, not at the first
    /// session.
    pub fn new(settings: &PostgresSettings, build: &Build<'_>) -> anyhow::Result<Service> {
        let masker = &build.shared.masker;
        let upstream = UpstreamSettings::from_config(&settings.upstream)
            .with_context(|| format!("target {:?}: upstream credentials", build.name))?;
        let client_tls = if settings.client_tls {
            let ca = crate::tls::LocalCa::load_or_create(build.ca_dir)
                .with_context(|| format!("loopgate's local CA in {}", build.ca_dir.display()))?;
            Some(ca.server_config(&build.certificate_names, &[upstream::ALPN])?)
        } else {
            None
        };
        Ok(Service {
            analysis: AnalysisCache::new(Analyzer::new(build.sql, masker.clone())),
            enforcer: build.enforcer("postgres"),
            masker: masker.clone(),
            upstream,
            server_name: build.host.to_owned(),
            client_tls,
            identity: build.identity.clone(),
            cancels: Default::default(),
            tables: Default::default(),
        })
    }
}

/// Serves one intercepted PostgreSQL connection.
pub async fn serve(svc: &Service, session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    let opening = match startup::open(client, svc.client_tls.as_ref()).await {
        Ok(o) => o,
        Err(SessionError::Closed) => {
            return SessionEnd::failed(EndStatus::Closed, "client left during startup");
        }
        Err(e) => return SessionEnd::failed(EndStatus::ProtocolError, e.to_string()),
    };
    let (mut stream, parameters, buf) = match opening {
        Opening::Cancel { pid, secret } => {
            let known = svc.cancels.cancel(pid, &secret).await;
            tracing::info!(session = %session.id, known, "cancel request");
            return if known {
                SessionEnd::ok()
            } else {
                SessionEnd::failed(EndStatus::Refused, "cancel request with an unknown key")
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
                EndStatus::Unreachable
            } else {
                EndStatus::UpstreamRefused
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
        Err(_) => SessionEnd::failed(EndStatus::Closed, "client left during startup"),
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
    let refuse = async |stream: &mut stream::PgStream, reason: String| {
        tracing::warn!(session = %session.id, %reason, "authentication refused");
        let message = format!("loopgate: authentication failed: {reason}");
        let _ = stream
            .write_all(&wire::fatal(sqlstate::INVALID_AUTHORIZATION, &message))
            .await;
        SessionEnd::failed(EndStatus::AuthFailed, reason)
    };
    let token = if svc.identity.wants_token() {
        let closed = || SessionEnd::failed(EndStatus::Closed, "client left during authentication");
        stream
            .write_all(&wire::authentication_cleartext())
            .await
            .map_err(|_| closed())?;
        let mut buf = BytesMut::new();
        let message = frame::read_frame(stream, &mut buf, true, frame::MAX_STARTUP_MESSAGE).await;
        match message {
            Ok(Some(f)) if f.tag == Some(b'p') => frame::cstr(f.body())
                .and_then(|(t, _)| std::str::from_utf8(t).ok())
                .map(str::to_owned),
            Ok(None) => return Err(closed()),
            _ => None,
        }
    } else {
        None
    };
    match svc.identity.principal(&session.process, token.as_deref()).await {
        Ok(principal) => Ok(principal),
        Err(reason) if token.as_deref().is_none_or(str::is_empty) => {
            Err(refuse(stream, format!("{reason} as the password")).await)
        }
        Err(reason) => Err(refuse(stream, reason).await),
    }
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
            SessionEnd::failed(EndStatus::ProtocolError, reason)
        }
        Err(SessionError::Frame(e)) => {
            let _ = client_tx
                .write_all(&wire::fatal(sqlstate::PROTOCOL_VIOLATION, &format!("loopgate: {e}")))
                .await;
            SessionEnd::failed(EndStatus::ProtocolError, e.to_string())
        }
        Err(SessionError::Audit(e)) => {
            let _ = client_tx
                .write_all(&wire::fatal(
                    sqlstate::SYSTEM_ERROR,
                    "loopgate: the audit trail is unavailable; the session is closed",
                ))
                .await;
            SessionEnd::failed(EndStatus::AuditUnavailable, e.to_string())
        }
        Err(SessionError::Io(e)) => SessionEnd::failed(EndStatus::Closed, format!("connection error: {e}")),
        Err(SessionError::Closed) => SessionEnd::ok(),
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Service {
    /// A service with the built-in policy, default masking and no upstream
    /// secret, for the tests and fuzz harnesses that drive the frontend and
    /// backend directly.
    pub(crate) fn for_tests(audit: crate::audit::AuditLog) -> Service {
        use crate::{
            mask::MaskConfig,
            policy::{BuiltinPolicy, BuiltinPolicyConfig, TargetInfo},
            sql::SqlConfig,
        };
        let masker = Masker::new(&MaskConfig::default(), None).expect("the default masking config is valid");
        let target = TargetInfo {
            name: "db".into(),
            protocol: "postgres".into(),
            identity: "process".into(),
        };
        Service {
            analysis: AnalysisCache::new(Analyzer::new(&SqlConfig::default(), masker.clone())),
            enforcer: Enforcer::new(
                Arc::new(BuiltinPolicy::new(BuiltinPolicyConfig::default())),
                crate::approval::Approvals::new(audit, None, None),
                target,
            ),
            masker,
            upstream: UpstreamSettings {
                user: "app".into(),
                secret: None,
                tls: None,
                database: None,
                require_auth: None,
            },
            server_name: "127.0.0.1".into(),
            client_tls: None,
            identity: Authenticator::Process,
            cancels: Default::default(),
            tables: Default::default(),
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
