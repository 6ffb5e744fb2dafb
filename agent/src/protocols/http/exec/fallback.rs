//! kubectl 1.30 and later try exec/attach over WebSocket first and, on any
//! answer but a 101, again at once over SPDY, printing only the second
//! answer. loopgate refuses SPDY exec (it cannot mask it), so a WebSocket
//! exec the policy refused, an approver denied or the server itself
//! answered (RBAC forbids it, the pod is gone) would be reported as "SPDY
//! not relayed". That first answer is kept for a few seconds per process
//! and path, and the SPDY retry is answered with it instead.
use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::StatusCode;

use crate::{policy::HttpRequest, session::Session};

/// How long a refusal waits for its retry (kubectl retries at once).
const KEEP: Duration = Duration::from_secs(10);
/// The most refusals kept (the oldest go first).
const MAX: usize = 64;
/// The most of a server's answer read to keep its message (a `Status`).
pub const MAX_ANSWER: usize = 64 * 1024;

/// The message of an answer to keep: a Kubernetes `Status`'s `message`
/// (the client saw it masked; so is `body`), else the body's text, cut.
pub fn message_of(body: &[u8], status: StatusCode) -> String {
    let from_status = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned));
    from_status.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            format!("the server answered {status}")
        } else {
            text.chars().take(1024).collect()
        }
    })
}

/// Which request a retry repeats: the process and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub tgid: u32,
    pub path: String,
}

/// The key of an exec or attach request of `session`'s process.
pub fn key(session: &Session, action: &HttpRequest) -> Option<Key> {
    let verb = action.kubernetes.as_ref()?.verb.as_str();
    let tgid = session.process.tgid.or(session.process.pid)?;
    matches!(verb, "exec" | "attach").then(|| Key {
        tgid,
        path: action.path.clone(),
    })
}

struct Kept {
    key: Key,
    at: Instant,
    status: StatusCode,
    message: String,
}

/// Recent refusals of WebSocket exec/attach, per target.
#[derive(Default)]
pub struct Refusals {
    recent: Mutex<VecDeque<Kept>>,
}

impl Refusals {
    /// Keeps the answer a WebSocket exec/attach was refused with.
    pub fn remember(&self, key: Key, status: StatusCode, message: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|k| k.at.elapsed() < KEEP && k.key != key);
        if recent.len() >= MAX {
            recent.pop_front();
        }
        recent.push_back(Kept {
            key,
            at: Instant::now(),
            status,
            message,
        });
    }

    /// The answer of the refused WebSocket attempt this request retries.
    pub fn take(&self, key: &Key) -> Option<(StatusCode, String)> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|k| k.at.elapsed() < KEEP);
        let i = recent.iter().position(|k| k.key == *key)?;
        recent.remove(i).map(|k| (k.status, k.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, path: &str) -> Key {
        Key {
            tgid,
            path: path.into(),
        }
    }

    #[test]
    fn a_refusal_answers_one_retry_of_the_same_process_and_path() {
        let r = Refusals::default();
        r.remember(key(7, "/p1/exec"), StatusCode::FORBIDDEN, "denied".into());
        assert_eq!(r.take(&key(8, "/p1/exec")), None);
        assert_eq!(r.take(&key(7, "/p2/exec")), None);
        assert_eq!(
            r.take(&key(7, "/p1/exec")),
            Some((StatusCode::FORBIDDEN, "denied".into()))
        );
        assert_eq!(r.take(&key(7, "/p1/exec")), None);
        for i in 0..(MAX as u32 + 5) {
            r.remember(key(i, "/x"), StatusCode::FORBIDDEN, String::new());
        }
        assert!(r.take(&key(0, "/x")).is_none(), "the oldest went first");
        assert!(r.take(&key(MAX as u32 + 4, "/x")).is_some());
    }

    #[test]
    fn the_kept_message_is_the_status_message_or_the_text() {
        let status = br#"{"kind":"Status","status":"Failure","message":"pods \"p1\" is forbidden","code":403}"#;
        assert_eq!(message_of(status, StatusCode::FORBIDDEN), "pods \"p1\" is forbidden");
        assert_eq!(message_of(b" no such pod\n", StatusCode::NOT_FOUND), "no such pod");
        assert_eq!(
            message_of(b"", StatusCode::NOT_FOUND),
            "the server answered 404 Not Found"
        );
    }
}
