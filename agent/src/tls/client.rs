//! loopgate's side of upstream TLS.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use super::{TlsError, provider};

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAuth {
    /// Not at all: the connection is encrypted, the server not
    /// authenticated (libpq's `sslmode=require`).
    None,
    /// Against the CA certificates in a PEM file, and the name or address
    /// the caller passes as server name.
    CaFile(PathBuf),
    /// Against the public web roots (webpki-roots).
    WebRoots,
}

/// A rustls client config for `auth`, offering `alpn`.
pub fn client_config(auth: &ServerAuth, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_as(auth, alpn, None)
}

/// A rustls client config for `auth`, offering `alpn`, presenting the
/// client certificate `identity` when given (loopgate's own credential
/// upstream, e.g. for a Kubernetes API server).
pub fn client_config_as(
    auth: &ServerAuth,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match auth {
        ServerAuth::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider()))),
        ServerAuth::CaFile(path) => builder.with_root_certificates(roots_from(path)?),
        ServerAuth::WebRoots => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate chain and its private key, read from PEM files: a client
/// certificate loopgate presents upstream, or a serving certificate an
/// operator gives a target.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads the chain from `cert` and the key from `key` (PEM). A key
    /// readable by group or others is refused: it is loopgate's secret.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |path: &Path, reason: String| TlsError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let mode = std::fs::metadata(key)
            .map_err(|e| err(key, e.to_string()))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::Mode {
                path: key.to_path_buf(),
                mode,
            });
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(err(cert, "no certificates in the file".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
        Ok(Identity { chain, key: key_der })
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({} certificates, key <redacted>)", self.chain.len())
    }
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let ca_err = |reason: String| TlsError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca_err(e.to_string()))?)
            .map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificates in the file".into()));
    }
    Ok(roots)
}

/// [`ServerAuth::None`]: any certificate is accepted, but the handshake
/// signatures are still checked, so the session keys are bound to the key in
/// the certificate the server presented.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            client_config(&ServerAuth::CaFile(empty), &[]),
            Err(TlsError::CaFile { .. })
        ));
        assert!(client_config(&ServerAuth::CaFile(dir.path().join("missing.pem")), &[]).is_err());
        let web = client_config(&ServerAuth::WebRoots, &[b"http/1.1"]).unwrap();
        assert_eq!(web.alpn_protocols, [b"http/1.1".to_vec()]);
    }
}
