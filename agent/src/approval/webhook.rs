//! The notification of a new request: a JSON POST whose `text` field is a
//! Slack-compatible message and whose `approval` field is the request as
//! `loopgate approvals show --json` prints it. Everything interpolated into
//! the text is escaped, so a command cannot forge mentions, links or
//! formatting in the message.
use std::time::Duration;

use serde_json::json;
use url::Url;

use super::{ApprovalView, Resolution};
use crate::http::{HttpClient, Timeouts};

const TIMEOUT: Duration = Duration::from_secs(10);
/// The command is cut in the message; the full masked text is in `approval`.
const COMMAND_IN_TEXT: usize = 500;

pub struct Webhook {
    url: Url,
    http: HttpClient,
    link_base: Option<String>,
}

impl Webhook {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>, link_base: Option<String>) -> Result<Webhook, String> {
        Ok(Webhook {
            url: Url::parse(url).map_err(|e| e.to_string())?,
            http: HttpClient::new(crate::http::client_tls(ca_file)?, Timeouts::total(TIMEOUT)),
            link_base,
        })
    }

    /// Posts the announcement of a new request in the background; a
    /// failure is logged (the request stands: approvers can still list it).
    pub fn announce(&self, view: &ApprovalView) {
        self.post(&view.id, payload(view, self.link_base.as_deref()));
    }

    /// Posts how a request ended, so the channel shows the outcome.
    pub fn conclude(&self, view: &ApprovalView, resolution: &Resolution) {
        self.post(&view.id, outcome_payload(view, resolution));
    }

    fn post(&self, id: &str, payload: serde_json::Value) {
        let body = payload.to_string().into_bytes();
        let (url, http, id) = (self.url.clone(), self.http.clone(), id.to_owned());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            match http.post_json(&url, body).await {
                Ok(_) => tracing::debug!(approval = %id, "approval webhook delivered"),
                Err(e) => tracing::warn!(approval = %id, error = %e, "approval webhook failed"),
            }
        });
    }
}

fn payload(view: &ApprovalView, link_base: Option<&str>) -> serde_json::Value {
    json!({ "text": text(view, link_base), "approval": for_chat(view) })
}

/// The view as it leaves the host: bound parameter values are replaced by
/// `?` (their count stays). The detectors mask what they recognise, but a
/// value such as a patient's name passes them; approvers read the values
/// with `loopgate approvals show` on the host instead.
fn for_chat(view: &ApprovalView) -> ApprovalView {
    ApprovalView {
        parameters: vec!["?".to_owned(); view.parameters.len()],
        ..view.clone()
    }
}

fn outcome_payload(view: &ApprovalView, resolution: &Resolution) -> serde_json::Value {
    let id = escape(&view.id);
    let (outcome, text) = match resolution {
        Resolution::Approved { approvers } => (
            "approved",
            format!(
                "loopgate approval *{id}* approved by {}: the command runs",
                escape(&approvers.join(", "))
            ),
        ),
        Resolution::Denied { approver, reason } => (
            "denied",
            format!(
                "loopgate approval *{id}* denied by {}{}",
                escape(approver),
                reason
                    .as_deref()
                    .map(|r| format!(": {}", escape(r)))
                    .unwrap_or_default()
            ),
        ),
        Resolution::TimedOut { after } => (
            "timed_out",
            format!(
                "loopgate approval *{id}* timed out after {}s: the command was refused",
                after.as_secs()
            ),
        ),
        Resolution::Withdrawn { reason } => (
            "cancelled",
            format!("loopgate approval *{id}* cancelled: {}", escape(reason)),
        ),
    };
    json!({ "text": text, "outcome": outcome, "approval": for_chat(view) })
}

/// The Slack-compatible message.
fn text(view: &ApprovalView, link_base: Option<&str>) -> String {
    let mut command: String = view.command.chars().take(COMMAND_IN_TEXT).collect();
    if view.command.chars().count() > COMMAND_IN_TEXT {
        command.push('…');
    }
    let mut text = format!(
        "loopgate approval *{id}* requested by {who} on {target}\nrule {rule}: {reason}\n```{command}```\n",
        id = escape(&view.id),
        who = escape(&view.requester),
        target = escape(&view.target),
        rule = escape(&view.rule_id),
        reason = escape(&view.reason),
        command = code(&command),
    );
    if let Some(rows) = view.rows_sent {
        text.push_str(&format!("paused after {rows} rows\n"));
    }
    text.push_str(&format!(
        "needs {} approval(s) from {} — `loopgate approvals approve {}`",
        view.min_approvals,
        escape(&view.approver_group),
        escape(&view.id)
    ));
    if let Some(base) = link_base {
        text.push_str(&format!(" or {}{}", escape(base), escape(&view.id)));
    }
    text
}

/// Slack's control characters: `<` starts mentions and links, `&` entities.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Text for inside a code block: escaped, and without backticks, which
/// could close the block and let the rest be read as formatting.
fn code(s: &str) -> String {
    escape(s).replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(command: &str, requester: &str) -> ApprovalView {
        ApprovalView {
            id: "k7q2m9xd".into(),
            requested_unix_ms: 0,
            expires_unix_ms: 0,
            requester: requester.into(),
            process: Default::default(),
            target: "patients-db".into(),
            command: command.into(),
            parameters: vec![],
            rule_id: "hipaa.hold_phi_export".into(),
            reason: "COPY TO of PHI tables (patients) needs approval".into(),
            approver_group: "phi-approvers".into(),
            min_approvals: 1,
            approvals: vec![],
            rows_sent: None,
        }
    }

    #[test]
    fn the_message_names_request_rule_and_command() {
        let p = payload(
            &view("COPY patients TO STDOUT", "unix:ci"),
            Some("https://approvals.example/"),
        );
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("*k7q2m9xd*"), "{text}");
        assert!(text.contains("```COPY patients TO STDOUT```"), "{text}");
        assert!(text.contains("hipaa.hold_phi_export"), "{text}");
        assert!(text.contains("https://approvals.example/k7q2m9xd"), "{text}");
        assert_eq!(p["approval"]["id"], "k7q2m9xd");
        assert_eq!(p["approval"]["command"], "COPY patients TO STDOUT");
    }

    #[test]
    fn parameter_values_stay_on_the_host() {
        let mut v = view("SELECT * FROM patients WHERE last_name = $1", "unix:ci");
        v.parameters = vec!["'Okafor'".into(), "NULL".into()];
        let outcome = Resolution::TimedOut {
            after: std::time::Duration::from_secs(5),
        };
        for p in [payload(&v, None), outcome_payload(&v, &outcome)] {
            assert_eq!(p["approval"]["parameters"], json!(["?", "?"]));
            assert!(!p.to_string().contains("Okafor"), "{p}");
        }
    }

    #[test]
    fn outcomes_are_announced_escaped() {
        let denied = Resolution::Denied {
            approver: "unix:alice".into(),
            reason: Some("<!here> no ticket".into()),
        };
        let p = outcome_payload(&view("COPY patients TO STDOUT", "unix:ci"), &denied);
        assert_eq!(p["outcome"], "denied");
        assert_eq!(
            p["text"],
            "loopgate approval *k7q2m9xd* denied by unix:alice: &lt;!here&gt; no ticket"
        );
        let approved = Resolution::Approved {
            approvers: vec!["unix:alice".into(), "unix:bob".into()],
        };
        let p = outcome_payload(&view("x", "y"), &approved);
        assert!(p["text"].as_str().unwrap().contains("approved by unix:alice, unix:bob"));
    }

    #[test]
    fn a_command_cannot_forge_the_message() {
        let forged = "SELECT 1 ```\n*APPROVED by security* <!channel> <https://evil.example|click> &amp;";
        let text = text(&view(forged, "<@U123>"), None);
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(!text.contains("<https://"), "{text}");
        assert!(!text.contains("<@U123>"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("&amp;amp;"), "{text}");
        // The code block opens and closes exactly once: the command's own
        // backticks cannot end it early.
        assert_eq!(text.matches("```").count(), 2, "{text}");
    }
}
