//! loopgate's SSH server side (russh): the client's authentication and the
//! channels it opens. The handler decides nothing itself: it turns what
//! the client does into [`Event`]s for the session task (`mod.rs`), which
//! owns the enforcement point and the upstream connection.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use russh::{
    Channel, ChannelId,
    server::{self, Auth, ChannelOpenHandle, Msg, Response},
};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    audit::{Principal, ProcessInfo},
    identity::Authenticator,
};

/// What the client did, for the session task.
pub enum Event {
    /// The client authenticated as this principal.
    Authenticated(Principal),
    /// An authentication attempt was refused, and why (no token contents).
    AuthRefused(String),
    /// A channel the client opened.
    Channel(Opened),
    /// `ssh -R`: the client asked the server to listen for it.
    RemoteForward { address: String, port: u32 },
}

/// A channel the client opened, accepted and waiting for the session task.
pub enum Opened {
    Session(Channel<Msg>),
    /// Not yet accepted: the decision (and the upstream open) comes first,
    /// so a refusal is the client's "open failed".
    DirectTcpip {
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        host: String,
        port: u32,
        originator: String,
        originator_port: u32,
    },
    DirectStreamlocal {
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        path: String,
    },
}

/// Channels one connection may have open at once (OpenSSH's sshd allows
/// 10 sessions by default): a client opening more is refused them, so it
/// cannot queue work, upstream channels and audit records without bound.
pub const MAX_CHANNELS: usize = 64;

/// One client connection's handler.
pub struct ClientHandler {
    pub identity: Authenticator,
    pub process: Arc<ProcessInfo>,
    pub events: UnboundedSender<Event>,
    pub authenticated: bool,
    /// The connection's channels not yet ended (the session task lowers it).
    pub open_channels: Arc<AtomicUsize>,
    /// A channel over the bound was refused (and logged) already.
    pub refused_channels: bool,
}

const TOKEN_PROMPT: &str = "loopgate token: ";

impl ClientHandler {
    /// Accepts the caller when the target's identity allows it: the
    /// process alone (`process`), or a valid token bound to it (`oidc`).
    async fn admit(&mut self, token: Option<&str>) -> Auth {
        if self.authenticated {
            return Auth::Accept;
        }
        match self.identity.principal(&self.process, token).await {
            Ok(principal) => {
                self.authenticated = true;
                let _ = self.events.send(Event::Authenticated(principal));
                Auth::Accept
            }
            Err(reason) => {
                let _ = self.events.send(Event::AuthRefused(reason));
                self.token_methods()
            }
        }
    }

    /// A refusal that tells the client how a token may be given.
    fn token_methods(&self) -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(russh::MethodSet::from(
                &[russh::MethodKind::Password, russh::MethodKind::KeyboardInteractive][..],
            )),
            partial_success: false,
        }
    }

    fn opened(&self, opened: Opened) {
        let _ = self.events.send(Event::Channel(opened));
    }

    /// Takes a channel slot; `false` (the open is refused) when all
    /// [`MAX_CHANNELS`] are in use. Logged once per connection: a client
    /// opening in a loop does not fill the log.
    fn take_slot(&mut self) -> bool {
        let taken = self
            .open_channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CHANNELS).then_some(n + 1)
            })
            .is_ok();
        if !taken && !std::mem::replace(&mut self.refused_channels, true) {
            tracing::warn!(
                limit = MAX_CHANNELS,
                "an SSH client opened more channels than allowed; refused"
            );
        }
        taken
    }
}

/// The refusal of a channel over [`MAX_CHANNELS`].
fn too_many() -> russh::ChannelOpenFailure {
    russh::ChannelOpenFailure::ResourceShortage
}

impl server::Handler for ClientHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        if self.identity.wants_token() {
            return Ok(self.token_methods());
        }
        Ok(self.admit(None).await)
    }

    async fn auth_password(&mut self, _user: &str, password: &str) -> Result<Auth, Self::Error> {
        let token = self.identity.wants_token().then_some(password);
        Ok(self.admit(token).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.identity.wants_token() {
            return Ok(self.token_methods());
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(&mut self, _user: &str, _key: server::VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.identity.wants_token() {
            return Ok(self.token_methods());
        }
        Ok(self.admit(None).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if !self.identity.wants_token() {
            return Ok(self.admit(None).await);
        }
        let answer = response.and_then(|mut r| r.next());
        match answer {
            None => Ok(Auth::Partial {
                name: "loopgate".into(),
                instructions: "This host is reached through loopgate: give your OIDC token.".into(),
                prompts: vec![(TOKEN_PROMPT.into(), false)].into(),
            }),
            Some(bytes) => {
                let token = String::from_utf8_lossy(&bytes).trim().to_owned();
                Ok(self.admit(Some(&token)).await)
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.take_slot() {
            reply.reject(too_many()).await;
            return Ok(());
        }
        reply.accept().await;
        self.opened(Opened::Session(channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.take_slot() {
            reply.reject(too_many()).await;
            return Ok(());
        }
        self.opened(Opened::DirectTcpip {
            channel,
            reply,
            host: host.to_owned(),
            port,
            originator: originator.to_owned(),
            originator_port,
        });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if !self.take_slot() {
            reply.reject(too_many()).await;
            return Ok(());
        }
        self.opened(Opened::DirectStreamlocal {
            channel,
            reply,
            path: path.to_owned(),
        });
        Ok(())
    }

    // Requests on a session channel also reach the channel's task (as
    // `ChannelMsg`s), which decides them; here they are only answered.
    // A refused command is reported on the channel itself (stderr and
    // exit status 126), so the request is acknowledged.

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut server::Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        // Never relayed (the channel's task records the request).
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        let _ = self.events.send(Event::RemoteForward {
            address: address.to_owned(),
            port: *port,
        });
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, path: &str, _session: &mut server::Session) -> Result<bool, Self::Error> {
        let _ = self.events.send(Event::RemoteForward {
            address: path.to_owned(),
            port: 0,
        });
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use russh::server::Handler as _;
    use tokio::sync::mpsc;

    use super::*;

    fn handler(identity: Authenticator) -> (ClientHandler, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let process = ProcessInfo {
            uid: Some(1000),
            user: Some("etl".into()),
            ..ProcessInfo::default()
        };
        let handler = ClientHandler {
            identity,
            process: Arc::new(process),
            events,
            authenticated: false,
            open_channels: Arc::new(AtomicUsize::new(0)),
            refused_channels: false,
        };
        (handler, rx)
    }

    #[tokio::test]
    async fn process_identity_accepts_any_method_and_names_the_process() {
        let (mut h, mut rx) = handler(Authenticator::Process);
        assert!(matches!(h.auth_none("anyone").await.unwrap(), Auth::Accept));
        let Some(Event::Authenticated(principal)) = rx.recv().await else {
            panic!("no principal")
        };
        assert_eq!(principal.subject.as_deref(), Some("unix:etl"));
        // Later attempts (a second method) are accepted without a new principal.
        assert!(matches!(h.auth_password("x", "y").await.unwrap(), Auth::Accept));
        assert!(rx.try_recv().is_err());
        let (mut h, _rx) = handler(Authenticator::Process);
        assert!(matches!(h.auth_password("x", "anything").await.unwrap(), Auth::Accept));
    }

    #[cfg(feature = "test-issuer")]
    #[tokio::test]
    async fn oidc_identity_asks_for_a_token_and_refuses_without_one() {
        let issuer = crate::identity::test_issuer::TestIssuer::start().await.unwrap();
        let oidc = crate::identity::OidcValidator::new(issuer.oidc_config("loopgate"), vec![]).unwrap();
        oidc.refresh().await.unwrap();
        let (mut h, mut rx) = handler(Authenticator::Oidc(Arc::new(oidc)));
        let Auth::Reject {
            proceed_with_methods: Some(methods),
            ..
        } = h.auth_none("u").await.unwrap()
        else {
            panic!("none was not refused with the token methods")
        };
        assert!(methods.contains(&russh::MethodKind::KeyboardInteractive));
        let Auth::Partial { prompts, .. } = h.auth_keyboard_interactive("u", "", None).await.unwrap() else {
            panic!("no token prompt")
        };
        assert_eq!(prompts[0].0, TOKEN_PROMPT);
        assert!(matches!(
            h.auth_password("u", "not-a-token").await.unwrap(),
            Auth::Reject { .. }
        ));
        let Some(Event::AuthRefused(reason)) = rx.recv().await else {
            panic!("the refusal was not reported")
        };
        assert!(reason.contains("token refused"), "{reason}");
        let token = issuer.mint(&issuer.claims("ci-bot", "loopgate"));
        assert!(matches!(h.auth_password("u", &token).await.unwrap(), Auth::Accept));
        let Some(Event::Authenticated(principal)) = rx.recv().await else {
            panic!("no principal")
        };
        assert_eq!(principal.subject.as_deref(), Some("ci-bot"));
    }

    #[test]
    fn channels_beyond_the_limit_are_refused_until_one_ends() {
        let (mut h, _rx) = handler(Authenticator::Process);
        h.open_channels.store(MAX_CHANNELS - 1, Ordering::SeqCst);
        assert!(h.take_slot());
        assert!(!h.take_slot());
        assert_eq!(h.open_channels.load(Ordering::SeqCst), MAX_CHANNELS);
        h.open_channels.fetch_sub(1, Ordering::SeqCst);
        assert!(h.take_slot());
    }
}
