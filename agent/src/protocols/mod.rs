//! Protocol handlers. The proxy hands each accepted session to the handler
//! of its target; the handler serves it until either side closes and says
//! how it ended.
pub mod http;
pub mod postgres;
pub mod ssh;
pub mod tcp;

use std::{path::Path, sync::Arc, time::Duration};

use tokio::net::TcpStream;

use crate::{
    approval::Approvals,
    enforce::Enforcer,
    identity::{Authenticator, OidcValidator},
    mask::Masker,
    policy::{self, PolicyEngine},
    session::{Session, SessionEnd},
    sql::SqlConfig,
};

/// What every target's handler shares: built once by the agent.
#[derive(Clone)]
pub struct Shared {
    pub masker: Masker,
    /// The policy engine (a reloadable handle).
    pub policy: Arc<dyn PolicyEngine>,
    /// OIDC token validation, when `[identity.oidc]` is configured.
    pub oidc: Option<Arc<OidcValidator>>,
    /// Where held commands wait for people.
    pub approvals: Arc<Approvals>,
}

/// A target's handler, with the state its sessions share.
pub enum Handler {
    Tcp,
    Postgres(Box<postgres::Service>),
    Ssh(Box<ssh::Service>),
    Http(Box<http::Service>),
}

/// What a protocol builds its handler from: the target's protocol-neutral
/// facts and the agent's shared parts. Each protocol adds its own settings.
pub struct Build<'a> {
    pub name: &'a str,
    /// The host name or IP a server certificate must match.
    pub host: &'a str,
    /// Names a client may have used to reach the target, for certificates
    /// loopgate shows it.
    pub certificate_names: Vec<String>,
    /// How callers are identified.
    pub identity: Authenticator,
    pub sql: &'a SqlConfig,
    /// loopgate's local CA.
    pub ca_dir: &'a Path,
    /// The audit store's directory (recordings are kept beside it).
    pub audit_dir: &'a Path,
    pub shared: &'a Shared,
}

impl Build<'_> {
    /// The enforcement point of this target, speaking `protocol`.
    pub fn enforcer(&self, protocol: &str) -> Enforcer {
        let target = policy::TargetInfo {
            name: self.name.to_owned(),
            protocol: protocol.to_owned(),
            identity: self.identity.mode().as_str().to_owned(),
        };
        Enforcer::new(self.shared.policy.clone(), self.shared.approvals.clone(), target)
    }
}

/// Serves `client` for `session` with the target's protocol handler.
pub async fn serve(session: &Session, handler: &Handler, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    match handler {
        Handler::Tcp => tcp::serve(session, client, connect_timeout).await,
        Handler::Postgres(svc) => postgres::serve(svc, session, client, connect_timeout).await,
        Handler::Ssh(svc) => ssh::serve(svc, session, client, connect_timeout).await,
        Handler::Http(svc) => http::serve(svc, session, client, connect_timeout).await,
    }
}
