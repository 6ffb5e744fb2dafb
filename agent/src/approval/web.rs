//! The approvals page: a small web page over the approvals registry, on
//! loopback (`[approvals] web_listen`), for approvers who would rather
//! click than type. It shows what `loopgate approvals list` shows —
//! pending requests with their masked command, principal, process, rule
//! and time left — lets the approver approve or deny with a reason, and
//! lists the recent decisions.
//!
//! Sign-in is the kernel's word: `loopgate approvals web` asks the
//! approvals socket (which knows its caller from SO_PEERCRED and
//! SO_PEERGROUPS) for a one-time link; opening it within a minute turns it
//! into a session cookie for that approver (HttpOnly, SameSite=Strict).
//! Requests must name the page's own host (no DNS rebinding), writes must
//! carry a header a cross-site form cannot set, and the page loads nothing
//! but its own script and style (a strict CSP).
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Approvals, Approver, Choice, api::error, decided_json};
use crate::http::server::{self, Answer, Ask};

/// How long a one-time link may wait to be opened.
const LINK_TTL: Duration = Duration::from_secs(60);
/// How long a signed-in page stays signed in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The session cookie.
const COOKIE: &str = "loopgate_session";
/// Writes must carry this header (a cross-site form cannot).
const WRITE_HEADER: &str = "x-loopgate-request";

const PAGE: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One-time links and the sessions they became.
#[derive(Default)]
pub struct WebLogins {
    inner: Mutex<Logins>,
}

#[derive(Default)]
struct Logins {
    links: HashMap<String, (Approver, Instant)>,
    sessions: HashMap<String, (Approver, Instant)>,
}

impl WebLogins {
    /// A one-time sign-in token for `who`, valid for a minute.
    pub fn link(&self, who: Approver) -> Option<String> {
        let token = random_token()?;
        let mut inner = self.lock();
        inner.expire();
        inner.links.insert(token.clone(), (who, Instant::now() + LINK_TTL));
        Some(token)
    }

    /// Turns a one-time token into a session (the token is spent).
    fn redeem(&self, token: &str) -> Option<String> {
        let mut inner = self.lock();
        inner.expire();
        let (who, _) = inner.links.remove(token)?;
        let session = random_token()?;
        inner
            .sessions
            .insert(session.clone(), (who, Instant::now() + SESSION_TTL));
        Some(session)
    }

    fn session(&self, id: &str) -> Option<Approver> {
        let mut inner = self.lock();
        inner.expire();
        inner.sessions.get(id).map(|(who, _)| who.clone())
    }

    fn end(&self, id: &str) {
        self.lock().sessions.remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logins> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Logins {
    fn expire(&mut self) {
        let now = Instant::now();
        self.links.retain(|_, (_, until)| *until > now);
        self.sessions.retain(|_, (_, until)| *until > now);
    }
}

/// 32 random bytes, hex.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Binds `addr` (loopback) and serves the page in the background; the
/// address it is served on.
pub async fn serve_web(
    addr: SocketAddr,
    approvals: Arc<Approvals>,
    logins: Arc<WebLogins>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let port = bound.port();
    let hosts: Arc<[String]> = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]
    .into_iter()
    .collect();
    server::spawn(listener, None, move |ask| {
        let (approvals, logins, hosts) = (approvals.clone(), logins.clone(), hosts.clone());
        async move { route(ask, &approvals, &logins, &hosts).await }
    });
    Ok(bound)
}

async fn route(ask: Ask, approvals: &Approvals, logins: &WebLogins, hosts: &[String]) -> Answer {
    let host = ask.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| hosts.iter().any(|ok| ok == h)) {
        return Answer::json(421, &json!({"error": "open the page at its loopback address"}));
    }
    let method = ask.method.as_str();
    match (method, ask.path.as_str()) {
        ("GET", "/") => Answer::html(PAGE).with(http::header::CONTENT_SECURITY_POLICY, CSP),
        ("GET", "/app.js") => static_file(SCRIPT, "text/javascript; charset=utf-8"),
        ("GET", "/app.css") => static_file(STYLE, "text/css; charset=utf-8"),
        ("GET", "/login") => match ask.query_value("t").and_then(|t| logins.redeem(t)) {
            Some(session) => Answer::redirect("/").with(
                http::header::SET_COOKIE,
                &format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"),
            ),
            None => Answer::json(
                403,
                &json!({"error": "this sign-in link was used, has expired or never existed: run `loopgate approvals web` again"}),
            ),
        },
        _ => api(&ask, approvals, logins).await,
    }
}

fn static_file(body: &'static str, content_type: &'static str) -> Answer {
    let mut answer = Answer::html(body);
    answer.content_type = content_type;
    answer
}

/// The page's JSON calls, for a signed-in approver.
async fn api(ask: &Ask, approvals: &Approvals, logins: &WebLogins) -> Answer {
    let session = ask.cookie(COOKIE);
    let Some(who) = session.and_then(|s| logins.session(s)) else {
        return Answer::json(
            401,
            &json!({"error": "not signed in: run `loopgate approvals web` for a link"}),
        );
    };
    let writes = ask.method == http::Method::POST;
    if writes && !ask.headers.contains_key(WRITE_HEADER) {
        return Answer::json(403, &json!({"error": "missing the page's request header"}));
    }
    let segments: Vec<&str> = ask.path.trim_matches('/').split('/').collect();
    let (status, body) = match (ask.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "me"]) => (200, json!({"name": who.name, "groups": who.groups})),
        ("GET", ["api", "pending"]) => (200, json!({"approvals": approvals.list(&who)})),
        ("GET", ["api", "history"]) => (200, json!({"ended": approvals.history(&who)})),
        ("POST", ["api", "logout"]) => {
            if let Some(s) = session {
                logins.end(s);
            }
            (200, json!({"signed_out": true}))
        }
        ("POST", ["api", "approvals", id, action @ ("approve" | "deny")]) => {
            let reason = serde_json::from_slice::<Value>(&ask.body)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                .filter(|r| !r.trim().is_empty());
            let choice = match *action {
                "approve" => Choice::Approve { reason },
                _ => Choice::Deny { reason },
            };
            match approvals.decide(id, &who, choice).await {
                Ok(decided) => (200, decided_json(id, &decided)),
                Err(e) => error(&e),
            }
        }
        _ => (404, json!({"error": "no such endpoint"})),
    };
    Answer::json(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approver() -> Approver {
        Approver {
            name: "unix:alice".into(),
            uid: Some(1000),
            email: None,
            groups: vec!["oncall".into()],
            unit: None,
        }
    }

    #[test]
    fn a_link_signs_in_once_and_sessions_name_their_approver() {
        let logins = WebLogins::default();
        let token = logins.link(approver()).unwrap();
        let session = logins.redeem(&token).expect("first use");
        assert!(logins.redeem(&token).is_none(), "a link is spent once used");
        assert_eq!(logins.session(&session).unwrap().name, "unix:alice");
        assert!(logins.session("made-up").is_none());
        logins.end(&session);
        assert!(logins.session(&session).is_none());
    }
}
