//! Live sessions and agent-wide counters, for `loopgate status`.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::session::{Session, Traffic};

/// Agent-wide counters since start.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused_not_redirected: AtomicU64,
    /// Connects the kernel refused (egress, agent down, unix targets, ...)
    /// and the agent recorded.
    pub refused_by_kernel: AtomicU64,
    pub refused_audit_unavailable: AtomicU64,
    pub upstream_unreachable: AtomicU64,
    pub completed: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// Live sessions and counters, for `loopgate status`.
#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Uuid, LiveSession>>,
    pub counters: Counters,
}

struct LiveSession {
    target: String,
    original: SocketAddr,
    tgid: Option<u32>,
    comm: Option<String>,
    started: SystemTime,
    traffic: Arc<Traffic>,
}

/// A live session as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: Uuid,
    pub target: String,
    pub address: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub started_unix_ms: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

/// Counters as `status` shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub accepted: u64,
    pub refused_not_redirected: u64,
    /// Absent from an older agent's status.
    #[serde(default)]
    pub refused_by_kernel: u64,
    pub refused_audit_unavailable: u64,
    pub upstream_unreachable: u64,
    pub completed: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

impl Registry {
    pub fn open(&self, s: &Session) {
        let entry = LiveSession {
            target: s.target.name.clone(),
            original: s.original,
            tgid: s.process.tgid,
            comm: s.process.comm.clone(),
            started: SystemTime::now(),
            traffic: s.traffic.clone(),
        };
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(s.id, entry);
    }

    pub fn close(&self, s: &Session) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&s.id);
        let c = &self.counters;
        c.completed.fetch_add(1, Relaxed);
        c.bytes_to_server.fetch_add(s.traffic.to_server.load(Relaxed), Relaxed);
        c.bytes_to_client.fetch_add(s.traffic.to_client.load(Relaxed), Relaxed);
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn sessions(&self) -> Vec<SessionSummary> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SessionSummary> = live
            .iter()
            .map(|(id, s)| SessionSummary {
                id: *id,
                target: s.target.clone(),
                address: s.original.to_string(),
                pid: s.tgid,
                comm: s.comm.clone(),
                started_unix_ms: s
                    .started
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                bytes_to_server: s.traffic.to_server.load(Relaxed),
                bytes_to_client: s.traffic.to_client.load(Relaxed),
            })
            .collect();
        out.sort_by_key(|s| s.started_unix_ms);
        out
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        CounterSnapshot {
            accepted: c.accepted.load(Relaxed),
            refused_not_redirected: c.refused_not_redirected.load(Relaxed),
            refused_by_kernel: c.refused_by_kernel.load(Relaxed),
            refused_audit_unavailable: c.refused_audit_unavailable.load(Relaxed),
            upstream_unreachable: c.upstream_unreachable.load(Relaxed),
            completed: c.completed.load(Relaxed),
            bytes_to_server: c.bytes_to_server.load(Relaxed),
            bytes_to_client: c.bytes_to_client.load(Relaxed),
        }
    }
}
