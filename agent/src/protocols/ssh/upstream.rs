//! loopgate's own SSH connection to the target (russh client): the host
//! key must be the pinned one, and loopgate logs in with its stored
//! credential — the automation never holds it.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use russh::{
    client,
    keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate, known_hosts},
};
use tokio::sync::Mutex;

use super::config::{Credential, HostKeyPin};

/// The channel window loopgate grants the server (OpenSSH's own is 2 MiB).
const UPSTREAM_WINDOW: u32 = 8 << 20;

/// russh's algorithms with AES-GCM first: loopgate chooses this leg's
/// cipher (the client's offer decides), and AES-GCM with the CPU's AES
/// instructions costs both ends less per byte than ChaCha20-Poly1305,
/// which the client's leg keeps when the client prefers it.
fn upstream_preferred() -> russh::Preferred {
    use russh::cipher;
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::AES_128_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ]),
        ..russh::Preferred::default()
    }
}

/// What loopgate checks and presents upstream.
pub struct UpstreamSettings {
    pub user: String,
    pub credential: Credential,
    pub pin: HostKeyPin,
    /// The name the known_hosts file knows the server by.
    pub host: String,
}

/// Why the upstream session could not be established. The messages are
/// safe for the client: no secret, no key material.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the server: {0}")]
    Connect(String),
    #[error("the server's host key {fingerprint} is not the pinned one")]
    HostKeyMismatch { fingerprint: String },
    #[error("the server refused loopgate's login as {user}")]
    AuthRefused { user: String },
    #[error("SSH error with the server: {0}")]
    Protocol(String),
}

/// An established, authenticated upstream session.
pub type Upstream = client::Handle<Verifier>;

/// Checks the server's host key against the pin, and remembers a mismatch
/// so the error can say so (russh reports only that the key was refused).
pub struct Verifier {
    pin: HostKeyPin,
    host: String,
    port: u16,
    refused: Arc<Mutex<Option<String>>>,
}

impl Verifier {
    fn accepts(&self, key: &PublicKey) -> bool {
        match &self.pin {
            HostKeyPin::Key(pinned) => pinned.key_data() == key.key_data(),
            HostKeyPin::KnownHosts(path) => known_hosts::known_host_keys_path(&self.host, self.port, path)
                .map(|entries| entries.iter().any(|(_, k)| k.key_data() == key.key_data()))
                .unwrap_or(false),
        }
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // Certificates are not requested (no host_key_certificates);
            // should one come, its key must still be the pinned one.
            PublicKeyOrCertificate::Certificate(c) => PublicKey::new(c.public_key().clone(), ""),
        };
        if self.accepts(&key) {
            return Ok(true);
        }
        let fingerprint = key.fingerprint(Default::default()).to_string();
        *self.refused.lock().await = Some(fingerprint);
        Ok(false)
    }
}

/// Whom a login is for, as a user certificate's key id names it.
pub struct Login {
    pub principal: String,
    pub session: uuid::Uuid,
}

/// Connects to `addr`, checks the host key and logs in.
pub async fn connect(
    settings: &UpstreamSettings,
    addr: SocketAddr,
    timeout: Duration,
    login: &Login,
) -> Result<Upstream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Connect("connect timed out".into()))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let refused = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        pin: settings.pin.clone(),
        host: settings.host.clone(),
        port: addr.port(),
        refused: refused.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        nodelay: true,
        preferred: upstream_preferred(),
        // The server may send this far ahead: a download is not paced by
        // loopgate's window adjustments.
        window_size: UPSTREAM_WINDOW,
        ..client::Config::default()
    });
    let handshake = tokio::time::timeout(timeout, client::connect_stream(config, stream, verifier)).await;
    let mut handle = match handshake {
        Err(_) => return Err(UpstreamError::Connect("SSH handshake timed out".into())),
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            if let Some(fingerprint) = refused.lock().await.take() {
                return Err(UpstreamError::HostKeyMismatch { fingerprint });
            }
            return Err(UpstreamError::Protocol(e.to_string()));
        }
    };
    let auth = match &settings.credential {
        Credential::Key(key) => {
            let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
            handle
                .authenticate_publickey(settings.user.clone(), PrivateKeyWithHashAlg::new(key.clone(), hash))
                .await
        }
        Credential::Password(password) => {
            handle
                .authenticate_password(settings.user.clone(), password.clone())
                .await
        }
        Credential::Certificate(ca) => {
            let issued = ca
                .issue(&settings.user, &login.principal, login.session)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            handle
                .authenticate_openssh_cert(settings.user.clone(), Arc::new(issued.key), issued.certificate)
                .await
        }
    };
    match auth {
        Ok(result) if result.success() => Ok(handle),
        Ok(_) => Err(UpstreamError::AuthRefused {
            user: settings.user.clone(),
        }),
        Err(e) => Err(UpstreamError::Protocol(e.to_string())),
    }
}
