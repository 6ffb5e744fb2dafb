//! SSH: loopgate terminates the client's SSH connection (russh server,
//! presenting a host certificate from its own SSH host CA), logs in to the
//! real server with the target's stored credential (russh client, host key
//! pinned), and decides, records and relays every channel request.
//!
//! - `config`: the `[target.ssh]` table.
//! - `hostca`: loopgate's SSH host CA and the targets' host certificates;
//!   `userca`: its user CA and per-session login certificates.
//! - `server`: the client's authentication and channel opens, as events.
//! - `upstream`: loopgate's own connection to the server.
//! - `command`: requests as policy actions and audit records.
//! - `channel`: a session channel's request, decided and relayed;
//!   `forward`: forward channels; `sftp_relay` with `sftp` and `sftp_path`:
//!   SFTP operation by operation, on resolved paths. Exec and shell output is
//!   masked as it streams (`mask::stream`) and recorded as asciicast
//!   (`audit::cast`), as Kubernetes exec is.
mod channel;
mod command;
pub mod config;
mod forward;
pub mod hostca;
mod server;
pub mod sftp;
pub mod sftp_path;
mod sftp_relay;
mod sftp_resolver;
mod upstream;
pub mod userca;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{StreamExt as _, stream::FuturesUnordered};
use russh::Disconnect;
use tokio::{net::TcpStream, sync::mpsc};

use self::{
    channel::{ChannelEnd, Ctx},
    config::{HostKeyPin, SshSettings},
    hostca::HostCa,
    server::{ClientHandler, Event, Opened},
    upstream::{UpstreamError, UpstreamSettings},
};
use super::Build;
use crate::{
    audit::cast::Recordings,
    enforce::{Caller, Enforcer},
    identity::Authenticator,
    mask::Masker,
    session::{EndStatus, Session, SessionEnd},
};

/// How long a session's channels may take to record their ends once the
/// client is gone.
const DRAIN: Duration = Duration::from_secs(5);

/// Everything a target's SSH sessions share; built once at start.
pub struct Service {
    pub enforcer: Enforcer,
    pub masker: Masker,
    pub identity: Authenticator,
    pub upstream: UpstreamSettings,
    pub mask_output: bool,
    /// Where exec and shell recordings go, if they are made.
    pub recordings: Option<Recordings>,
    /// The server side: the host key and its certificate, auth methods.
    pub server: Arc<russh::server::Config>,
}

impl Service {
    /// The service of an SSH target: reads its credential, checks its pin
    /// and signs its host certificate. Fails at agent start, not at the
    /// first session.
    pub fn new(settings: &SshSettings, build: &Build<'_>) -> anyhow::Result<Service> {
        let credential = settings
            .credential
            .load(build.ca_dir)
            .with_context(|| format!("target {:?}: upstream credential", build.name))?;
        if let HostKeyPin::KnownHosts(path) = &settings.host_key {
            std::fs::metadata(path)
                .with_context(|| format!("target {:?}: ssh.known_hosts {}", build.name, path.display()))?;
        }
        // The host key clients see: one the operator gives, or a fresh key
        // with a certificate of loopgate's host CA for the target's names.
        let (keys, certificates) = match &settings.presented_key_file {
            Some(path) => {
                let key = config::private_key(path)
                    .with_context(|| format!("target {:?}: ssh.presented_key_file", build.name))?;
                (vec![key], Vec::new())
            }
            None => {
                let ca = HostCa::load_or_create(build.ca_dir)?;
                let mut names = build.certificate_names.clone();
                names.extend(settings.names.iter().cloned());
                names.sort();
                names.dedup();
                let identity = ca.issue(&names, build.name)?;
                (vec![identity.key], vec![identity.certificate])
            }
        };
        let server = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-loopgate".into()),
            keys,
            certificates,
            auth_rejection_time: Duration::from_millis(200),
            auth_rejection_time_initial: Some(Duration::ZERO),
            // A held request may wait long without traffic; keepalives
            // find dead clients instead.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..russh::server::Config::default()
        };
        Ok(Service {
            enforcer: build.enforcer("ssh"),
            masker: build.shared.masker.clone(),
            identity: build.identity.clone(),
            upstream: UpstreamSettings {
                user: settings.user.clone(),
                credential,
                pin: settings.host_key.clone(),
                host: build.host.to_owned(),
            },
            mask_output: settings.mask_output,
            recordings: settings.record_max_bytes.map(|max_bytes| Recordings {
                audit_dir: build.audit_dir.to_owned(),
                max_bytes,
            }),
            server: Arc::new(server),
        })
    }
}

/// The principal as a user certificate's key id names it.
fn principal_name(session: &Session) -> String {
    let principal = session.principal.get();
    let subject = principal.and_then(|p| p.subject.clone());
    subject.unwrap_or_else(|| "unknown".to_owned())
}

/// Ends the client's SSH session when the session task goes away (agent
/// shutdown): russh runs it on a task of its own.
struct DisconnectOnDrop(russh::server::Handle);

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        let handle = self.0.clone();
        tokio::spawn(async move {
            let _ = handle
                .disconnect(
                    Disconnect::ByApplication,
                    "loopgate: session closed".into(),
                    String::new(),
                )
                .await;
        });
    }
}

type ChannelTask<'s> = Pin<Box<dyn Future<Output = ChannelEnd> + Send + 's>>;

/// Serves one intercepted SSH connection.
pub async fn serve(svc: &Service, session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    let _ = client.set_nodelay(true);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let open_channels = Arc::new(AtomicUsize::new(0));
    let handler = ClientHandler {
        identity: svc.identity.clone(),
        process: session.process.clone(),
        events: events_tx,
        authenticated: false,
        open_channels: open_channels.clone(),
        refused_channels: false,
    };
    let running = match russh::server::run_stream(svc.server.clone(), client, handler).await {
        Ok(r) => r,
        Err(e) => return SessionEnd::failed(EndStatus::ProtocolError, format!("ssh handshake: {e}")),
    };
    let handle = running.handle();
    let _guard = DisconnectOnDrop(handle.clone());
    tokio::pin!(running);

    let mut ctx: Option<Ctx<'_>> = None;
    let mut channels: FuturesUnordered<ChannelTask<'_>> = FuturesUnordered::new();
    let mut end: Option<SessionEnd> = None;
    let mut refused: Option<String> = None;
    let mut handler_alive = true;
    let result = loop {
        tokio::select! {
            event = events.recv(), if handler_alive => match event {
                Some(Event::Authenticated(principal)) => {
                    let _ = session.principal.set(Arc::new(principal));
                    let login = upstream::Login {
                        principal: principal_name(session),
                        session: session.id,
                    };
                    match upstream::connect(&svc.upstream, session.original, connect_timeout, &login).await {
                        Ok(up) => {
                            ctx = Some(Ctx {
                                svc,
                                session,
                                caller: Caller::of(session, None, None),
                                upstream: Arc::new(up),
                                client: handle.clone(),
                            });
                        }
                        Err(e) => {
                            end = Some(upstream_failed(session, &e));
                            let message = format!("loopgate: {e}; the session is refused");
                            let _ = handle.disconnect(Disconnect::ByApplication, message, String::new()).await;
                        }
                    }
                }
                Some(Event::AuthRefused(reason)) => {
                    tracing::info!(session = %session.id, %reason, "SSH authentication refused");
                    refused = Some(reason);
                }
                Some(Event::Channel(opened)) => match &ctx {
                    Some(c) => channels.push(channel_task(c.clone(), opened, Slot(open_channels.clone()))),
                    // Authenticated but no upstream: the client is being
                    // disconnected; its channel is dropped (closed).
                    None => {
                        drop(opened);
                        open_channels.fetch_sub(1, Ordering::AcqRel);
                    }
                },
                Some(Event::RemoteForward { address, port }) => {
                    if let Some(c) = &ctx {
                        let c = c.clone();
                        let port = u16::try_from(port).unwrap_or(0);
                        channels.push(Box::pin(async move { forward::unrelayed(&c, "tcpip-forward", &address, port).await }));
                    }
                }
                // The handler is gone: the session is ending.
                None => handler_alive = false,
            },
            Some(channel_end) = channels.next(), if !channels.is_empty() => {
                if channel_end == ChannelEnd::AuditUnavailable {
                    end = Some(SessionEnd::failed(EndStatus::AuditUnavailable, "a request could not be recorded"));
                    let message = "loopgate: the audit trail is unavailable; the session is closed".to_owned();
                    let _ = handle.disconnect(Disconnect::ByApplication, message, String::new()).await;
                }
            }
            result = &mut running => break result,
        }
    };
    // The client is gone: its channels see their ends and record results.
    let _ = tokio::time::timeout(DRAIN, async { while channels.next().await.is_some() {} }).await;
    if let Some(end) = end {
        return end;
    }
    match (session.principal.get(), refused, result) {
        (Some(_), _, _) => SessionEnd::ok(),
        (None, Some(reason), _) => SessionEnd::failed(EndStatus::AuthFailed, reason),
        (None, None, Err(e)) => SessionEnd::failed(
            EndStatus::Closed,
            format!("client left before authenticating ({e}; does it trust loopgate's SSH host CA?)"),
        ),
        (None, None, Ok(())) => SessionEnd::failed(EndStatus::Closed, "client left before authenticating"),
    }
}

/// A channel's place in [`server::MAX_CHANNELS`], given back when its task
/// ends or is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn channel_task<'s>(ctx: Ctx<'s>, opened: Opened, slot: Slot) -> ChannelTask<'s> {
    Box::pin(async move {
        let _slot = slot;
        match opened {
            Opened::Session(channel) => channel::session_channel(&ctx, channel).await,
            Opened::DirectTcpip {
                channel,
                reply,
                host,
                port,
                originator,
                originator_port,
            } => {
                let port = u16::try_from(port).unwrap_or(0);
                let forward = forward::Forward {
                    kind: "direct-tcpip",
                    host: &host,
                    port,
                    originator: (&originator, originator_port),
                };
                forward::forward_channel(&ctx, channel, reply, forward).await
            }
            Opened::DirectStreamlocal { channel, reply, path } => {
                let forward = forward::Forward {
                    kind: "direct-streamlocal",
                    host: &path,
                    port: 0,
                    originator: ("", 0),
                };
                forward::forward_channel(&ctx, channel, reply, forward).await
            }
        }
    })
}

/// The session's end when loopgate could not log in upstream.
fn upstream_failed(session: &Session, e: &UpstreamError) -> SessionEnd {
    tracing::warn!(session = %session.id, error = %e, "SSH upstream refused");
    let status = match e {
        UpstreamError::Connect(_) => EndStatus::Unreachable,
        UpstreamError::HostKeyMismatch { .. } => EndStatus::Refused,
        UpstreamError::AuthRefused { .. } | UpstreamError::Protocol(_) => EndStatus::UpstreamRefused,
    };
    SessionEnd::failed(status, format!("upstream: {e}"))
}
