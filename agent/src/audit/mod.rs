//! The audit trail: every protocol handler records through [`AuditLog`].
//!
//! `append` returns only once the event is durable enough to act on (in the
//! write-ahead log), so a handler forwards a command only after it is
//! recorded. An error means the trail cannot take the event: the caller
//! refuses what it was about to do (fail closed).
//!
//! The store behind it is [`AuditStore`]: a WAL, hash-chained Parquet
//! files, retention and `loopgate audit verify|tail|replay` (see README.md
//! in this directory for the schema and the chain rules).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use loopgate::audit::{AuditConfig, AuditLog, AuditStore, Event, EventKind};
//! let log = AuditLog::new(AuditStore::open(AuditConfig::default())?);
//! log.append(Event::new(EventKind::AgentStart)).await?;
//! log.close().await?;
//! # Ok(()) }
//! ```
pub mod cast;
mod chain;
pub mod checkpoint;
pub mod cli;
pub mod config;
mod convert;
mod event;
mod layout;
#[cfg(test)]
pub mod memory;
mod parquet;
pub mod reader;
pub mod recording;
pub mod report;
mod retention;
mod row;
pub mod ship;
mod store;
pub mod typed;
pub mod verify;
pub mod verify_remote;
mod wal;

pub use config::{AuditConfig, FsyncMode, ObjectLockMode, RemoteConfig};
pub use event::*;
pub use layout::{now_us, rfc3339};
pub use retention::Report as RetentionReport;
pub use ship::RemoteHealth;
pub use store::{AuditStore, Health, StoreError};

use std::{future::Future, pin::Pin, sync::Arc, sync::OnceLock};

/// Why an event could not be recorded.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    /// The store cannot write (disk full, I/O error, read-only file system).
    /// It recovers by itself when writes succeed again.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// The store has shut down.
    #[error("audit store closed")]
    Closed,
}

pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send + 'a>>;

/// A destination for audit events.
pub trait AuditSink: Send + Sync + 'static {
    /// Records `event`; resolves once it is in the write-ahead log.
    fn append(&self, event: Event) -> AppendFuture<'_>;
    /// Records `event` right away if the sink can do so without waiting,
    /// and says how that went; otherwise hands it back (`Err`) for
    /// [`AuditLog::submit`] to append from a task.
    fn try_submit(&self, event: Box<Event>) -> Result<Result<(), AuditError>, Box<Event>> {
        Err(event)
    }
    /// Flushes what is buffered; called once at shutdown.
    fn close(&self) -> AppendFuture<'_>;
    /// The sink's state for `loopgate status`, if it has one.
    fn health(&self) -> Option<Health> {
        None
    }
}

/// Cloneable handle to the agent's audit sink.
#[derive(Clone)]
pub struct AuditLog {
    sink: Arc<dyn AuditSink>,
}

impl AuditLog {
    pub fn new(sink: impl AuditSink) -> Self {
        AuditLog { sink: Arc::new(sink) }
    }

    pub async fn append(&self, event: Event) -> Result<(), AuditError> {
        self.sink.append(event).await
    }

    /// Records `event` without waiting for it, for records nothing is held
    /// back for (a command's result: the command itself was recorded before
    /// it ran). A failure is logged, with the event's kind and session only.
    pub fn submit(&self, event: Event) {
        let (kind, session) = (event.kind, event.session_id);
        let failed = move |e: AuditError| {
            tracing::error!(kind = kind.as_str(), session = ?session, error = %e, "could not record an event");
        };
        match self.sink.try_submit(Box::new(event)) {
            Ok(result) => result.unwrap_or_else(failed),
            Err(event) => {
                let log = self.clone();
                tokio::spawn(async move { log.append(*event).await.unwrap_or_else(failed) });
            }
        }
    }

    pub async fn close(&self) -> Result<(), AuditError> {
        self.sink.close().await
    }

    pub fn health(&self) -> Option<Health> {
        self.sink.health()
    }
}

/// This machine's host name, read once.
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates
        // on success when the name fits.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "unknown".to_owned();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}
