//! HTTP and HTTPS: a reverse proxy per intercepted connection. loopgate
//! terminates the client's TLS (ALPN h2 and http/1.1) with a certificate
//! for the target's names, serves HTTP/1.1 or HTTP/2 with hyper, decides
//! and records every request, and forwards it over its own verified TLS
//! connection with its own credential; responses come back masked.
//!
//! - `config`: the `[target.http]` table.
//! - `serve` (here): TLS, the HTTP server, the caller's principal.
//! - `request`: one request — the policy's action, the audit record,
//!   decide / hold / refuse, forward, mask, finish.
//! - `canonical`: the one reading of a request target (decoded path,
//!   query pairs) that the policy sees and the server gets; ambiguous
//!   targets refused.
//! - `fhir`, `kubernetes`: what a path means in each API.
//! - `url`: detectors over percent-encoded text; FHIR search URLs.
//! - `headers`: credentials and hop-by-hop headers; content types.
//! - `json`, `text`, `body`: masking of response bodies as they stream.
//! - `exec`: Kubernetes exec / attach / port-forward after the upgrade
//!   (WebSocket frames, channels masked and recorded).
//! - `refusal`: loopgate's own answers in each API's shape.
//! - `upstream`: loopgate's connections to the server.
//! - `local`: the executor that keeps HTTP/2 streams on the session's task.
mod body;
pub mod canonical;
pub mod config;
pub mod exec;
pub mod fhir;
mod headers;
pub mod json;
pub mod kubernetes;
mod local;
mod refusal;
mod request;
mod text;
mod upstream;
mod url;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::{StreamExt as _, stream::FuturesUnordered};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use self::{
    config::{Api, HttpSettings, Token},
    upstream::Dialer,
};
use super::Build;
use crate::{
    audit::cast::Recordings,
    enforce::Enforcer,
    identity::Authenticator,
    mask::Masker,
    session::{EndStatus, Session, SessionEnd},
    tls::{Identity, LocalCa, ServerAuth, client_config_as, server_config_from},
};

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// The client's TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first bytes of an HTTP/2 connection without TLS (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything a target's HTTP sessions share; built once at start.
pub struct Service {
    pub api: Api,
    pub enforcer: Enforcer,
    pub masker: Masker,
    pub identity: Authenticator,
    /// loopgate's TLS server config (`https`), or plaintext (`http`).
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// loopgate's TLS client config upstream (`https`).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the upstream certificate must carry.
    pub server_name: String,
    /// loopgate's bearer token upstream.
    pub token: Option<Token>,
    /// Kubernetes impersonation of the principal.
    pub impersonate: bool,
    /// Where exec/attach recordings go (Kubernetes), if they are made.
    pub recordings: Option<Recordings>,
    /// Recently refused WebSocket exec/attach, for kubectl's SPDY retry.
    pub refusals: exec::fallback::Refusals,
}

impl Service {
    /// The service of an HTTP target: reads its token, certificates and
    /// CA files now, so a bad path stops the agent at start.
    pub fn new(settings: &HttpSettings, build: &Build<'_>) -> anyhow::Result<Service> {
        let c = &settings.config;
        let name = build.name;
        let token = settings
            .load_token()
            .with_context(|| format!("target {name:?}: upstream token"))?;
        let (client_tls, upstream_tls) = if settings.tls {
            let served = match (&c.cert_file, &c.key_file) {
                (Some(cert), Some(key)) => {
                    let identity = Identity::from_files(cert, key)
                        .with_context(|| format!("target {name:?}: http.cert_file / http.key_file"))?;
                    server_config_from(&identity, &ALPN)?
                }
                _ => LocalCa::load_or_create(build.ca_dir)
                    .with_context(|| format!("loopgate's local CA in {}", build.ca_dir.display()))?
                    .server_config(&build.certificate_names, &ALPN)?,
            };
            let auth = match &c.ca_file {
                Some(path) => ServerAuth::CaFile(path.clone()),
                None => ServerAuth::WebRoots,
            };
            let identity = match (&c.client_cert, &c.client_key) {
                (Some(cert), Some(key)) => Some(
                    Identity::from_files(cert, key)
                        .with_context(|| format!("target {name:?}: http.client_cert / http.client_key"))?,
                ),
                _ => None,
            };
            let upstream = client_config_as(&auth, &ALPN, identity.as_ref())
                .with_context(|| format!("target {name:?}: upstream TLS"))?;
            (Some(served), Some(upstream))
        } else {
            (None, None)
        };
        Ok(Service {
            api: c.api,
            enforcer: build.enforcer(if settings.tls { "https" } else { "http" }),
            masker: build.shared.masker.clone(),
            identity: build.identity.clone(),
            client_tls,
            upstream_tls,
            server_name: build.host.to_owned(),
            token,
            impersonate: settings.impersonate,
            recordings: settings.record_max_bytes.map(|max_bytes| Recordings {
                audit_dir: build.audit_dir.to_owned(),
                max_bytes,
            }),
            refusals: exec::fallback::Refusals::default(),
        })
    }
}

/// Serves one intercepted HTTP(S) connection until the client closes it.
pub async fn serve(svc: &Service, session: &Session, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    if !svc.identity.wants_token() {
        // The kernel's attribution is the principal of every request.
        match svc.identity.principal(&session.process, None).await {
            Ok(p) => {
                let _ = session.principal.set(Arc::new(p));
            }
            Err(reason) => return SessionEnd::failed(EndStatus::AuthFailed, reason),
        }
    }
    let dialer = Dialer {
        addr: session.original,
        server_name: svc.server_name.clone(),
        tls: svc.upstream_tls.clone(),
        timeout: connect_timeout,
    };
    let conn = request::Conn::new(svc, session, dialer);
    let result = match &svc.client_tls {
        Some(tls) => {
            let accepted = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsAcceptor::from(tls.clone()).accept(client),
            )
            .await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return SessionEnd::failed(EndStatus::ProtocolError, format!("TLS handshake: {e}")),
                Err(_) => return SessionEnd::failed(EndStatus::Closed, "TLS handshake timed out"),
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            http(&conn, TokioIo::new(stream), h2).await
        }
        None => {
            let h2 = prior_knowledge(&client).await;
            http(&conn, TokioIo::new(client), h2).await
        }
    };
    match (result, conn.fatal()) {
        (_, Some(end)) => end,
        (Ok(()), None) => SessionEnd::ok(),
        (Err(e), None) if e.is_incomplete_message() || e.is_canceled() => SessionEnd::ok(),
        (Err(e), None) => SessionEnd::failed(EndStatus::ProtocolError, format!("HTTP: {e}")),
    }
}

/// Whether a plaintext client starts with the HTTP/2 preface.
async fn prior_knowledge(client: &TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let peek = async {
        loop {
            match client.peek(&mut buf).await {
                Ok(n) if n >= H2_PREFACE.len() || n == 0 || !H2_PREFACE.starts_with(&buf[..n]) => {
                    return n >= H2_PREFACE.len() && buf[..] == *H2_PREFACE;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, peek).await.unwrap_or(false)
}

/// Runs hyper's HTTP/1.1 or HTTP/2 server over `io` with `conn` answering
/// each request. HTTP/2 streams and the requests' audit results run as
/// futures of this session's task ([`local`]), so they may borrow it.
async fn http<I>(conn: &request::Conn<'_>, io: I, h2: bool) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (exec, mut spawned) = local::channel();
    let service_exec = exec.clone();
    let service = hyper::service::service_fn(move |req| {
        let exec = service_exec.clone();
        async move { Ok::<_, std::convert::Infallible>(conn.handle(req, &exec).await) }
    });
    let mut tasks = FuturesUnordered::new();
    let served = if h2 {
        futures_util::future::Either::Left(
            http2::Builder::new(exec.clone())
                .timer(TokioTimer::new())
                .serve_connection(io, service),
        )
    } else {
        futures_util::future::Either::Right(
            http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(io, service)
                // exec / attach / port-forward take the connection over.
                .with_upgrades(),
        )
    };
    // Boxed so it can be dropped (closing the connection) before the
    // remaining tasks are drained.
    let mut served = Box::pin(served);
    let result = loop {
        tokio::select! {
            r = &mut served => break r,
            Some(task) = spawned.recv() => tasks.push(task),
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
        }
    };
    drop(served);
    drop(exec);
    // What is left: results of requests whose bodies just ended.
    while let Ok(task) = spawned.try_recv() {
        tasks.push(task);
    }
    while tasks.next().await.is_some() {}
    result
}
