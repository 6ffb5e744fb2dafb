//! Minimal HTTP/1.1 over tokio, enough for what the agent speaks: a client
//! for OIDC documents and approval webhooks, and the server side of the
//! loopback approvals API. No framework: one request per connection,
//! bounded sizes and times, nothing kept alive.
mod client;
mod server;

pub use client::FetchError;
pub use client::{client_tls, get, post_json};
pub use server::{HttpRequest, MAX_BODY, read_request, respond};
