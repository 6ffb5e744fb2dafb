//! The connection from loopgate to the real PostgreSQL server: TCP, TLS when
//! configured (never a silent plaintext fallback), StartupMessage with the
//! configured role, and authentication with the stored secret (trust,
//! cleartext, MD5 or SCRAM-SHA-256). What the proxy gets back is a session
//! ready for queries.
use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use md5::{Digest, Md5};
use pgwire::messages::{
    DecodeContext, Message, PgWireBackendMessage, ProtocolVersion,
    cancel::CancelRequest,
    response::ErrorResponse,
    startup::{Authentication, Password, SASLInitialResponse, SASLResponse, SecretKey, SslRequest, Startup},
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    config::{AuthMethod, Secret, TlsMode, UpstreamConfig, UpstreamConfigError},
    frame::{self, FrameError, STARTUP_MAX_LEN},
    scram::{ScramClient, ScramError},
};
use crate::tls::{self, ServerAuth, TlsError};

/// ALPN name PostgreSQL 17+ expects; older servers ignore it.
pub const ALPN: &[u8] = b"postgresql";

/// The client TLS config for a target's `tls` mode: `None` for disable.
/// `require` encrypts without authenticating the server (like libpq's
/// sslmode=require); `verify-full` checks the chain against `ca_file` and
/// the name or address passed as server name.
pub fn tls_config(mode: TlsMode, ca_file: Option<&std::path::Path>) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let auth = match (mode, ca_file) {
        (TlsMode::Disable, _) => return Ok(None),
        (TlsMode::Require, _) => ServerAuth::None,
        (TlsMode::VerifyFull, Some(path)) => ServerAuth::CaFile(path.to_path_buf()),
        (TlsMode::VerifyFull, None) => {
            return Err(TlsError::CaFile {
                path: Default::default(),
                reason: "tls = \"verify-full\" needs ca_file".into(),
            });
        }
    };
    tls::client_config(&auth, &[ALPN]).map(Some)
}

/// What [`connect`] needs, resolved from the target's config once.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// The role loopgate logs in as, whatever the client asked for.
    pub user: String,
    pub secret: Option<Secret>,
    /// `None`: plaintext. `Some`: TLS is mandatory.
    pub tls: Option<Arc<ClientConfig>>,
    /// Forces the database, overriding the client's.
    pub database: Option<String>,
    /// Methods the server may ask for; `None`: any loopgate speaks.
    pub require_auth: Option<Vec<AuthMethod>>,
}

impl UpstreamSettings {
    /// Reads the secret and builds the TLS config for `cfg`.
    pub fn from_config(cfg: &UpstreamConfig) -> Result<UpstreamSettings, UpstreamSettingsError> {
        Ok(UpstreamSettings {
            user: cfg.user.clone(),
            secret: cfg.load_secret()?,
            tls: tls_config(cfg.tls, cfg.ca_file.as_deref())?,
            database: cfg.database.clone(),
            require_auth: cfg.require_auth.clone(),
        })
    }

    /// Refuses a method the configuration does not allow, before anything
    /// of the secret is sent.
    fn allow(&self, method: AuthMethod) -> Result<(), UpstreamError> {
        match &self.require_auth {
            Some(allowed) if !allowed.contains(&method) => Err(UpstreamError::AuthNotAllowed(method.as_str())),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSettingsError {
    #[error(transparent)]
    Config(#[from] UpstreamConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A started, authenticated upstream session.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// ParameterStatus values in the order the server sent them (the proxy
    /// replays them to the client).
    pub parameters: Vec<(String, String)>,
    /// The server's (pid, secret) for cancelling queries on this session.
    pub backend_key: Option<(i32, Vec<u8>)>,
    /// Bytes read past ReadyForQuery; they belong to the next messages.
    pub leftover: BytesMut,
}

/// The upstream byte stream, plaintext or TLS.
pub use super::stream::PgStream as UpstreamStream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream server: {0}")]
    Connect(io::Error),
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the upstream server does not accept TLS; refusing to continue in plaintext (tls is required for this target)"
    )]
    TlsRefused,
    #[error("unexpected answer {0:#04x} to SSLRequest from the upstream server")]
    BadSslResponse(u8),
    #[error("\"{0}\" is not a valid TLS server name for the upstream server")]
    ServerName(String),
    #[error("TLS handshake with the upstream server failed: {0}")]
    Handshake(io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error(
        "the upstream server asks for {0} authentication, which loopgate does not support (use scram-sha-256, md5, password or trust for loopgate's role)"
    )]
    UnsupportedAuth(String),
    #[error("the server asked for {0} authentication, which upstream.require_auth does not allow; nothing was sent")]
    AuthNotAllowed(&'static str),
    #[error(
        "the upstream server asks for a password but none is configured (set upstream.password_file or upstream.credential)"
    )]
    NoPassword,
    #[error("SCRAM authentication with the upstream server failed: {0}")]
    Scram(#[from] ScramError),
    /// The server refused with an ErrorResponse. `message` is the server's
    /// text, which may echo values: it is not part of Display, keep it out
    /// of logs.
    #[error("the upstream server refused the connection (SQLSTATE {code})")]
    Server { code: String, message: String },
}

impl UpstreamError {
    /// SQLSTATE when the server refused, for relaying to the client.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            UpstreamError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Startup parameters never forwarded: the role is loopgate's, replication
/// connections are not proxied, and `_pq_.` protocol extensions would not
/// match the 3.0 protocol loopgate speaks upstream.
fn forwardable(name: &str) -> bool {
    !matches!(name, "user" | "replication") && !name.starts_with("_pq_.")
}

/// Opens an authenticated session on the server at `addr`. `server_name` is
/// the DNS name or IP the certificate must match with tls = verify-full.
/// `startup_params` are the client's (database, application_name,
/// client_encoding, options, ...); `user` among them is replaced.
/// There is no timeout inside: the caller bounds the whole call with its
/// connect timeout (a silent server would otherwise hold the session).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    cfg: &UpstreamSettings,
    startup_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut stream = open(addr, server_name, cfg.tls.as_ref()).await?;

    let mut startup = Startup::new();
    for (name, value) in startup_params.iter().filter(|(n, _)| forwardable(n)) {
        startup.parameters.insert(name.clone(), value.clone());
    }
    startup.parameters.insert("user".into(), cfg.user.clone());
    if let Some(db) = &cfg.database {
        startup.parameters.insert("database".into(), db.clone());
    }
    send(&mut stream, &startup).await?;

    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    authenticate(&mut stream, &mut buf, &ctx, cfg).await?;

    let mut parameters = Vec::new();
    let mut backend_key = None;
    loop {
        match read(&mut stream, &mut buf, &ctx).await? {
            PgWireBackendMessage::ParameterStatus(p) => parameters.push((p.name, p.value)),
            PgWireBackendMessage::BackendKeyData(k) => backend_key = Some((k.pid, k.secret_key.to_bytes().to_vec())),
            PgWireBackendMessage::ReadyForQuery(_) => break,
            PgWireBackendMessage::NoticeResponse(_) => {}
            PgWireBackendMessage::ErrorResponse(e) => return Err(server_error(e)),
            other => return Err(unexpected("after authentication", &other)),
        }
    }
    tracing::debug!(
        upstream = %addr,
        tls = stream.is_tls(),
        parameters = parameters.len(),
        "upstream session ready"
    );
    Ok(Upstream {
        stream,
        parameters,
        backend_key,
        leftover: buf,
    })
}

/// TCP connect, then TLS if configured.
async fn open(
    addr: SocketAddr,
    server_name: &str,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<UpstreamStream, UpstreamError> {
    let mut tcp = TcpStream::connect(addr).await.map_err(UpstreamError::Connect)?;
    tcp.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| UpstreamError::ServerName(server_name.to_owned()))?;
    let mut req = BytesMut::new();
    encode(&SslRequest::new(), &mut req)?;
    tcp.write_all(&req).await?;
    // Exactly one byte: anything the server sends after 'S' must go through
    // TLS, never be read as plaintext (CVE-2021-23222).
    match tcp.read_u8().await {
        Ok(b'S') => {}
        Ok(b'N') => return Err(UpstreamError::TlsRefused),
        Ok(other) => return Err(UpstreamError::BadSslResponse(other)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(UpstreamError::Frame(FrameError::Closed));
        }
        Err(e) => return Err(e.into()),
    }
    let tls = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(UpstreamError::Handshake)?;
    Ok(UpstreamStream::TlsClient(Box::new(tls)))
}

/// Which step of the exchange we are in; the server may only move forward.
enum AuthState {
    Start,
    Scram(ScramClient),
    ScramFinal(super::scram::ScramClientFinal),
    /// SCRAM done and the server proved it knows the password.
    ScramVerified,
    PasswordSent,
}

async fn authenticate(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    ctx: &DecodeContext,
    cfg: &UpstreamSettings,
) -> Result<(), UpstreamError> {
    let mut state = AuthState::Start;
    loop {
        let frame = frame::read_backend(stream, buf, STARTUP_MAX_LEN).await?;
        if let Some(method) = unsupported_auth(&frame) {
            return Err(UpstreamError::UnsupportedAuth(method.into()));
        }
        let auth = match frame::decode(frame, ctx)? {
            PgWireBackendMessage::Authentication(a) => a,
            PgWireBackendMessage::ErrorResponse(e) => return Err(server_error(e)),
            PgWireBackendMessage::NoticeResponse(_) => continue,
            // We asked for 3.0, which every server since 7.4 speaks; this can
            // only report startup options it ignored.
            PgWireBackendMessage::NegotiateProtocolVersion(_) => continue,
            other => return Err(unexpected("during authentication", &other)),
        };
        state = match (auth, state) {
            (Authentication::Ok, AuthState::Scram(_) | AuthState::ScramFinal(_)) => {
                // Success without the server's proof: it may not be the real
                // server, so its word is not taken.
                return Err(ScramError::BadServerFinal("server skipped its signature").into());
            }
            (Authentication::Ok, state) => {
                if matches!(state, AuthState::Start) {
                    cfg.allow(AuthMethod::None)?;
                }
                tracing::debug!("upstream authentication succeeded");
                return Ok(());
            }
            (Authentication::CleartextPassword, AuthState::Start) => {
                cfg.allow(AuthMethod::Password)?;
                let secret = cfg.secret.as_ref().ok_or(UpstreamError::NoPassword)?;
                send(stream, &Password::new(secret.expose().to_owned())).await?;
                AuthState::PasswordSent
            }
            (Authentication::MD5Password(salt), AuthState::Start) => {
                cfg.allow(AuthMethod::Md5)?;
                let secret = cfg.secret.as_ref().ok_or(UpstreamError::NoPassword)?;
                let hashed = md5_password(&cfg.user, secret.expose(), &salt);
                send(stream, &Password::new(hashed)).await?;
                AuthState::PasswordSent
            }
            (Authentication::SASL(mechanisms), AuthState::Start) => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(UpstreamError::UnsupportedAuth(format!(
                        "SASL ({})",
                        mechanisms.join(", ")
                    )));
                }
                cfg.allow(AuthMethod::ScramSha256)?;
                let secret = cfg.secret.as_ref().ok_or(UpstreamError::NoPassword)?;
                let client = ScramClient::new(secret.expose())?;
                let first = client.client_first();
                send(
                    stream,
                    &SASLInitialResponse::new("SCRAM-SHA-256".into(), Some(first.into())),
                )
                .await?;
                AuthState::Scram(client)
            }
            (Authentication::SASLContinue(data), AuthState::Scram(client)) => {
                // PBKDF2 is deliberately slow: keep it off the executor.
                let (fin, reply) = tokio::task::spawn_blocking(move || client.handle_server_first(&data))
                    .await
                    .map_err(|e| UpstreamError::Protocol(format!("SCRAM task: {e}")))??;
                send(stream, &SASLResponse::new(reply.into())).await?;
                AuthState::ScramFinal(fin)
            }
            (Authentication::SASLFinal(data), AuthState::ScramFinal(fin)) => {
                fin.verify_server_final(&data)?;
                AuthState::ScramVerified
            }
            (other, _) => {
                return Err(UpstreamError::Protocol(format!(
                    "authentication request {} out of order",
                    auth_name(&other)
                )));
            }
        };
    }
}

/// Names the methods pgwire cannot decode, so the operator sees which one
/// the server wants instead of a decoding error.
fn unsupported_auth(frame: &[u8]) -> Option<&'static str> {
    if frame.first() != Some(&b'R') || frame.len() < 9 {
        return None;
    }
    match i32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) {
        2 => Some("Kerberos V5"),
        6 => Some("SCM credential"),
        7 | 8 => Some("GSSAPI"),
        9 => Some("SSPI"),
        _ => None,
    }
}

fn auth_name(a: &Authentication) -> &'static str {
    match a {
        Authentication::Ok => "Ok",
        Authentication::CleartextPassword => "CleartextPassword",
        Authentication::MD5Password(_) => "MD5Password",
        Authentication::SASL(_) => "SASL",
        Authentication::SASLContinue(_) => "SASLContinue",
        Authentication::SASLFinal(_) => "SASLFinal",
        _ => "other",
    }
}

/// PostgreSQL's MD5 scheme: "md5" + md5(md5(password + user) + salt).
fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    let inner = hex(&Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize());
    let outer = Md5::new().chain_update(inner.as_bytes()).chain_update(salt).finalize();
    format!("md5{}", hex(&outer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn server_error(e: ErrorResponse) -> UpstreamError {
    let field = |code: u8| {
        e.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let code = field(b'C');
    tracing::debug!(sqlstate = %code, "upstream server refused the session");
    UpstreamError::Server {
        code,
        message: field(b'M'),
    }
}

fn unexpected(when: &str, msg: &PgWireBackendMessage) -> UpstreamError {
    // The variant name only: never the content.
    let name = format!("{msg:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or("message");
    UpstreamError::Protocol(format!("unexpected {name} {when}"))
}

async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    ctx: &DecodeContext,
) -> Result<PgWireBackendMessage, UpstreamError> {
    let frame = frame::read_backend(stream, buf, STARTUP_MAX_LEN).await?;
    Ok(frame::decode(frame, ctx)?)
}

fn encode<M: Message>(msg: &M, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    msg.encode(buf)
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode message: {e}")))
}

async fn send<M: Message>(stream: &mut UpstreamStream, msg: &M) -> Result<(), UpstreamError> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// How long [`cancel`] waits for the server to close after the request.
const CANCEL_LINGER: Duration = Duration::from_secs(5);

/// Asks the server to cancel the query running on the session `(pid,
/// secret)`, over TLS when `tls` is set (PostgreSQL accepts a CancelRequest
/// after SSLRequest). The server answers by closing the connection; whether
/// a query was actually cancelled shows on the session itself.
pub async fn cancel(
    addr: SocketAddr,
    server_name: &str,
    tls: Option<&Arc<ClientConfig>>,
    pid: i32,
    secret: &[u8],
) -> Result<(), UpstreamError> {
    let mut stream = open(addr, server_name, tls).await?;
    let secret = match <[u8; 4]>::try_from(secret) {
        Ok(b) => SecretKey::I32(i32::from_be_bytes(b)),
        Err(_) => SecretKey::Bytes(bytes::Bytes::copy_from_slice(secret)),
    };
    send(&mut stream, &CancelRequest::new(pid, secret)).await?;
    // Wait for the server to close, so the cancel has been delivered when we
    // return; errors here (e.g. no TLS close_notify) do not matter.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CANCEL_LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    tracing::debug!(upstream = %addr, pid, "cancel request sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'app') || 'ABCD') in psql.
        let inner = hex(&Md5::digest(b"secretapp"));
        let expected = format!("md5{}", hex(&Md5::digest([inner.as_bytes(), b"ABCD"].concat())));
        assert_eq!(md5_password("app", "secret", b"ABCD"), expected);
        assert_eq!(md5_password("app", "secret", b"ABCD").len(), 35);
    }

    #[test]
    fn user_and_replication_are_not_forwarded() {
        assert!(!forwardable("user"));
        assert!(!forwardable("replication"));
        assert!(!forwardable("_pq_.x"));
        assert!(forwardable("application_name"));
        assert!(forwardable("database"));
    }

    /// A fake server: its answers for each step, as raw bytes.
    async fn fake_server(script: Vec<Vec<u8>>) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut chunk = [0u8; 4096];
            for answer in script {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                received.extend_from_slice(&chunk[..n]);
                if s.write_all(&answer).await.is_err() {
                    break;
                }
            }
            let _ = s.read(&mut chunk).await;
            received
        });
        (addr, task)
    }

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn settings(secret: Option<&str>) -> UpstreamSettings {
        UpstreamSettings {
            user: "app".into(),
            secret: secret.map(|s| Secret::new(s.into())),
            tls: None,
            database: None,
            require_auth: None,
        }
    }

    #[tokio::test]
    async fn scram_server_that_skips_its_proof_is_refused() {
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        // SASL request, then straight to AuthenticationOk.
        let (addr, _t) = fake_server(vec![msg(b'R', &sasl), msg(b'R', &0i32.to_be_bytes())]).await;
        let err = connect(addr, "localhost", &settings(Some("pw")), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Scram(_)), "{err}");
    }

    #[tokio::test]
    async fn password_needed_but_not_configured() {
        let (addr, _t) = fake_server(vec![msg(b'R', &3i32.to_be_bytes())]).await;
        let err = connect(addr, "localhost", &settings(None), &[]).await.unwrap_err();
        assert!(matches!(err, UpstreamError::NoPassword), "{err}");
    }

    #[tokio::test]
    async fn gssapi_is_named() {
        let (addr, _t) = fake_server(vec![msg(b'R', &7i32.to_be_bytes())]).await;
        let err = connect(addr, "localhost", &settings(Some("pw")), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, UpstreamError::UnsupportedAuth(m) if m == "GSSAPI"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn startup_replaces_user_and_forwards_the_rest() {
        let mut ready = msg(b'R', &0i32.to_be_bytes());
        ready.extend(msg(b'S', b"server_version\x0015.0\0"));
        ready.extend(msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
        ready.extend(msg(b'Z', b"I"));
        let (addr, task) = fake_server(vec![ready]).await;
        let params = vec![
            ("user".to_string(), "mallory".to_string()),
            ("database".to_string(), "clinic".to_string()),
            ("application_name".to_string(), "bot".to_string()),
        ];
        let up = connect(addr, "localhost", &settings(None), &params).await.unwrap();
        assert_eq!(up.parameters, vec![("server_version".into(), "15.0".into())]);
        assert_eq!(up.backend_key, Some((42, vec![1, 2, 3, 4])));
        drop(up);
        let sent = task.await.unwrap();
        let text = String::from_utf8_lossy(&sent);
        assert!(text.contains("user\0app\0"), "{text:?}");
        assert!(text.contains("database\0clinic\0") && text.contains("application_name\0bot\0"));
        assert!(!text.contains("mallory"));
    }

    #[tokio::test]
    async fn server_error_keeps_message_out_of_display() {
        let err_body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"app\"\0\0";
        let (addr, _t) = fake_server(vec![msg(b'E', err_body)]).await;
        let err = connect(addr, "localhost", &settings(Some("pw")), &[])
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"));
        assert!(!err.to_string().contains("password authentication failed"));
        assert!(
            matches!(err, UpstreamError::Server { message, .. } if message.contains("password authentication failed"))
        );
    }

    #[tokio::test]
    async fn tls_required_but_server_says_no() {
        let (addr, _t) = fake_server(vec![b"N".to_vec()]).await;
        let mut s = settings(Some("pw"));
        s.tls = tls_config(TlsMode::Require, None).unwrap();
        let err = connect(addr, "localhost", &s, &[]).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TlsRefused), "{err}");
    }
}
