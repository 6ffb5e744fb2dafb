//! loopgate: a host agent that makes every connection an automation opens to
//! a protected service pass through one enforcement point. See ARCHITECTURE.md.
pub mod agent;
pub mod approval;
pub mod audit;
pub mod config;
pub mod control;
pub mod enforce;
pub mod exec;
pub mod http;
pub mod identity;
pub mod intercept;
pub mod mask;
pub mod notify;
pub mod objstore;
pub mod policy;
pub mod protocols;
pub mod proxy;
pub mod session;
pub mod signing;
pub mod sql;
pub mod tls;
