//! One HTTP stack for the agent, hyper 1.x over tokio and rustls (ring):
//! the client (OIDC documents, approval webhooks, object storage) and the
//! server (the loopback approvals API). The HTTPS protocol handler
//! (`protocols::http`) builds on the same crates (hyper with HTTP/2).
pub mod client;
pub mod server;

pub use client::{FetchError, HttpClient, MAX_DOCUMENT_BYTES, Timeouts, client_tls};
