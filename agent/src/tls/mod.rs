//! TLS for every protocol, with rustls (ring provider).
//!
//! - [`LocalCa`]: loopgate's own CA, which issues the certificates loopgate
//!   shows clients (PostgreSQL `sslmode=require`, later HTTPS targets);
//!   clients that verify trust the CA file operators distribute.
//! - [`client_config`]: loopgate's side of upstream TLS — authenticated
//!   against a CA file or the public web roots, or encrypted only.
mod ca;
mod client;

use std::{io, path::PathBuf, sync::Arc};

use rustls::crypto::{CryptoProvider, ring};

pub use ca::LocalCa;
pub use client::{ServerAuth, client_config};

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}
