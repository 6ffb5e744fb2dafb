//! The loopback HTTP API, for a web page or a reverse proxy in front of it:
//!
//! - `GET  /v1/approvals`              pending requests the caller may decide
//! - `GET  /v1/approvals/{id}`         one request
//! - `POST /v1/approvals/{id}/approve`
//! - `POST /v1/approvals/{id}/deny`    body `{"reason": "..."}` (optional)
//!
//! Every call needs `Authorization: Bearer <OIDC token>`; the token's
//! subject and groups are the approver.
use std::{net::SocketAddr, sync::Arc};

use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Approvals, Approver, Choice, DecideError, Decided};
use crate::{
    http::server::{self, Answer, Ask},
    identity::OidcValidator,
};

/// Binds `addr` and serves the API in the background.
pub async fn serve_http(addr: SocketAddr, approvals: Arc<Approvals>, oidc: Arc<OidcValidator>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    server::spawn(listener, None, move |ask| {
        let (approvals, oidc) = (approvals.clone(), oidc.clone());
        async move {
            let (status, body) = route(ask, &approvals, &oidc).await;
            Answer::json(status, &body)
        }
    });
    Ok(())
}

async fn route(request: Ask, approvals: &Approvals, oidc: &OidcValidator) -> (u16, Value) {
    let Some(token) = request.bearer.as_deref() else {
        return (401, json!({"error": "an OIDC bearer token is required"}));
    };
    // No process to bind to over HTTP: bindings are checked on the socket.
    let who = match oidc
        .validate(token)
        .await
        .and_then(|t| Approver::from_token(oidc, t, None))
    {
        Ok(who) => who,
        Err(e) => return (401, json!({"error": format!("token refused: {e}")})),
    };
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "approvals"]) => (200, json!({"approvals": approvals.list(&who)})),
        ("GET", ["v1", "approvals", id]) => match approvals.show(&who, id) {
            Ok(view) => (200, json!(view)),
            Err(e) => error(&e),
        },
        ("POST", ["v1", "approvals", id, action @ ("approve" | "deny")]) => {
            let reason = serde_json::from_slice::<Value>(&request.body)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned));
            let choice = if *action == "approve" {
                Choice::Approve { reason }
            } else {
                Choice::Deny { reason }
            };
            match approvals.decide(id, &who, choice).await {
                Ok(decided) => (200, decided_json(id, &decided)),
                Err(e) => error(&e),
            }
        }
        (_, ["v1", "approvals", ..]) => (405, json!({"error": "method not allowed"})),
        _ => (404, json!({"error": "no such endpoint"})),
    }
}

/// The JSON answer to a decision (shared with the control socket's CLI output).
pub fn decided_json(id: &str, decided: &Decided) -> Value {
    match decided {
        Decided::Released => json!({"id": id, "result": "released"}),
        Decided::Counted { have, need } => json!({"id": id, "result": "counted", "have": have, "need": need}),
        Decided::Denied => json!({"id": id, "result": "denied"}),
    }
}

/// The HTTP status and JSON of a refused decision (the page answers the same).
pub(super) fn error(e: &DecideError) -> (u16, Value) {
    let status = match e {
        DecideError::NotFound(_) => 404,
        DecideError::NotApprover { .. } | DecideError::SelfApproval(_) => 403,
        DecideError::AlreadyApproved(_) => 409,
        DecideError::Audit(_) => 503,
    };
    (status, json!({"error": e.to_string()}))
}
