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
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

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
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match auth {
        ServerAuth::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
            .with_no_client_auth(),
        ServerAuth::CaFile(path) => builder.with_root_certificates(roots_from(path)?).with_no_client_auth(),
        ServerAuth::WebRoots => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
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
