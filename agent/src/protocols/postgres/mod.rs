//! PostgreSQL: the agent's side of the wire protocol.
//!
//! This part is the upstream half: loopgate connects to the real server with
//! the target's stored credential (the automation never sees it), over TLS
//! when configured, and hands the authenticated connection to the proxy.
pub mod config;
pub mod frame;
pub mod scram;
pub mod tls;
pub mod upstream;
