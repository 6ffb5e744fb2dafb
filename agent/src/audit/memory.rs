//! An audit sink in memory, for unit tests of whatever records events
//! (the enforcement pipeline, approvals): it keeps every event and can be
//! told to fail, as a full disk would.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use super::{AppendFuture, AuditError, AuditLog, AuditSink, Event};

/// Keeps events in memory; fails appends while failing is set.
#[derive(Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<Event>>>,
    failing: Arc<AtomicBool>,
}

impl MemorySink {
    /// An `AuditLog` over this sink.
    pub fn log(&self) -> AuditLog {
        AuditLog::new(self.clone())
    }

    /// Every event appended so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each event's decision verdict, in order (events without one skipped).
    pub fn verdicts(&self) -> Vec<&'static str> {
        self.events()
            .iter()
            .filter_map(|e| e.decision.as_ref().map(|d| d.verdict.as_str()))
            .collect()
    }

    /// From now on appends fail (`true`) or succeed again (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl AuditSink for MemorySink {
    fn append(&self, event: Event) -> AppendFuture<'_> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(AuditError::Unavailable("disk full".into()));
            }
            self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
            Ok(())
        })
    }

    fn close(&self) -> AppendFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
