//! loopgate: a host agent that makes every connection an automation opens to
//! a protected service pass through one enforcement point. See ARCHITECTURE.md.
pub mod audit;
pub mod mask;
pub mod policy;
pub mod sql;
