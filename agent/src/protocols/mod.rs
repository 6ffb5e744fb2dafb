//! Protocol handlers. The proxy hands each accepted session to the handler
//! of its target; the handler serves it until either side closes and says
//! how it ended.
pub mod postgres;
pub mod tcp;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpStream;

use crate::{
    approval::Approvals,
    config::{Config, Identity, Protocol, Target},
    identity::OidcValidator,
    mask::Masker,
    policy::{self, PolicyEngine},
    session::{Session, SessionEnd},
    sql::{AnalysisCache, Analyzer},
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
}

impl Handler {
    /// Builds the handler of `target`: reads its secrets and prepares what
    /// its sessions share. Fails at agent start, not at the first session.
    pub fn for_target(target: &Target, config: &Config, shared: &Shared) -> anyhow::Result<Handler> {
        let masker = &shared.masker;
        match target.protocol {
            Protocol::Tcp => Ok(Handler::Tcp),
            Protocol::Postgres => {
                let pg = target
                    .postgres
                    .as_ref()
                    .context("postgres target without its settings")?;
                let upstream = postgres::upstream::UpstreamSettings::from_config(&pg.upstream)
                    .with_context(|| format!("target {:?}: upstream credentials", target.name))?;
                let client_tls = if pg.client_tls {
                    let ca = crate::tls::LocalCa::load_or_create(&config.tls.ca_dir)
                        .with_context(|| format!("loopgate's local CA in {}", config.tls.ca_dir.display()))?;
                    Some(ca.server_config(&target.certificate_names(), &[postgres::upstream::ALPN])?)
                } else {
                    None
                };
                Ok(Handler::Postgres(Box::new(postgres::Service {
                    analysis: AnalysisCache::new(Analyzer::new(&config.sql, masker.clone())),
                    policy: shared.policy.clone(),
                    masker: masker.clone(),
                    target: policy::TargetInfo {
                        name: target.name.clone(),
                        protocol: target.protocol.as_str().to_owned(),
                        identity: pg.identity.as_str().to_owned(),
                    },
                    upstream,
                    server_name: target.host().to_owned(),
                    client_tls,
                    identity: pg.identity,
                    oidc: match pg.identity {
                        Identity::Oidc => Some(
                            shared
                                .oidc
                                .clone()
                                .context("identity = \"oidc\" without [identity.oidc]")?,
                        ),
                        Identity::Process => None,
                    },
                    cancels: Default::default(),
                    tables: Default::default(),
                    approvals: shared.approvals.clone(),
                })))
            }
        }
    }
}

/// Serves `client` for `session` with the target's protocol handler.
pub async fn serve(session: &Session, handler: &Handler, client: TcpStream, connect_timeout: Duration) -> SessionEnd {
    match handler {
        Handler::Tcp => tcp::serve(session, client, connect_timeout).await,
        Handler::Postgres(svc) => postgres::serve(svc, session, client, connect_timeout).await,
    }
}
