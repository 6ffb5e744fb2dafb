//! Cancel requests: each session gets a cancel key of loopgate's; a client's
//! CancelRequest with that key is carried to the right upstream backend
//! with the server's own key, which the client never sees.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use rustls::ClientConfig;

use super::upstream;

/// Where a session's queries can be cancelled.
#[derive(Clone)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub server_name: String,
    pub tls: Option<Arc<ClientConfig>>,
    pub pid: i32,
    pub secret: Vec<u8>,
}

impl CancelTarget {
    /// Asks the server to cancel what this backend is running.
    pub async fn send(&self) -> Result<(), upstream::UpstreamError> {
        upstream::cancel(self.addr, &self.server_name, self.tls.as_ref(), self.pid, &self.secret).await
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session; returns the (pid, secret) to give its client.
    /// The pid is the server's (so `pg_backend_pid()` agrees with it), the
    /// secret is fresh and random.
    pub fn register(&self, target: CancelTarget) -> (i32, i32) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut bytes = [0u8; 4];
            if getrandom::fill(&mut bytes).is_err() {
                // No randomness: hand out a key nobody can use.
                return (target.pid, 0);
            }
            let key = (target.pid, i32::from_ne_bytes(bytes));
            if !sessions.contains_key(&key) && key.1 != 0 {
                sessions.insert(key, target);
                return key;
            }
        }
    }

    pub fn unregister(&self, key: (i32, i32)) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    /// Carries a client's cancel request upstream. Unknown keys are ignored,
    /// as PostgreSQL does. Returns whether the key was known.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return false;
        };
        let key = (pid, i32::from_be_bytes(secret));
        let target = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let Some(t) = target else {
            return false;
        };
        if let Err(e) = t.send().await {
            tracing::warn!(error = %e, "cancel request could not be delivered upstream");
        }
        true
    }
}
