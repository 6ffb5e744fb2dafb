//! TLS for every protocol, with rustls (ring provider).
//!
//! - [`LocalCa`]: loopgate's own CA, which issues the certificates loopgate
//!   shows clients (PostgreSQL `sslmode=require`, HTTPS targets);
//!   clients that verify trust the CA file operators distribute.
//! - [`client_config`]: loopgate's side of upstream TLS — authenticated
//!   against a CA file or the public web roots, or encrypted only; with a
//!   client certificate ([`Identity`]) where the upstream asks for one.
//! - [`server_config_from`]: an operator-given serving certificate.
mod ca;
mod client;

use std::{io, path::PathBuf, sync::Arc};

use rustls::crypto::{CryptoProvider, ring};

pub use ca::LocalCa;
pub use client::{Identity, ServerAuth, client_config, client_config_as};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} has mode {mode:04o}; loopgate's CA key must be 0600 in a 0700 directory")]
    Mode { path: PathBuf, mode: u32 },
    #[error("loopgate's CA in {dir}: {reason}")]
    Ca { dir: PathBuf, reason: String },
    #[error("cannot issue a certificate for {names:?}: {reason}")]
    Issue { names: Vec<String>, reason: String },
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server config presenting an operator-given certificate chain and key
/// (a Kubernetes serving certificate signed by the cluster CA), offering
/// `alpn`.
pub fn server_config_from(identity: &Identity, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}
