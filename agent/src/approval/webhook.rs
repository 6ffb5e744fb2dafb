//! The notification of a new request: a JSON POST whose `text` field is a
//! Slack-compatible message and whose `approval` field is the request as
//! `loopgate approvals show --json` prints it. Everything interpolated into
//! the text is escaped, so a command cannot forge mentions, links or
//! formatting in the message.
use std::{sync::Arc, time::Duration};

use rustls::ClientConfig;
use serde_json::json;
use url::Url;

use super::ApprovalView;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The command is cut in the message; the full masked text is in `approval`.
const COMMAND_IN_TEXT: usize = 500;

pub struct Webhook {
    url: Url,
    tls: Arc<ClientConfig>,
    link_base: Option<String>,
}

impl Webhook {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>, link_base: Option<String>) -> Result<Webhook, String> {
        Ok(Webhook {
            url: Url::parse(url).map_err(|e| e.to_string())?,
            tls: crate::http::client_tls(ca_file)?,
            link_base,
        })
    }

    /// Posts the announcement in the background; a failure is logged (the
    /// request stands: approvers can still list it).
    pub fn announce(&self, view: ApprovalView) {
        let body = payload(&view, self.link_base.as_deref()).to_string().into_bytes();
        let (url, tls) = (self.url.clone(), self.tls.clone());
        tokio::spawn(async move {
            match crate::http::post_json(&url, &tls, &body, TIMEOUT).await {
                Ok(_) => tracing::debug!(approval = %view.id, "approval webhook delivered"),
                Err(e) => tracing::warn!(approval = %view.id, error = %e, "approval webhook failed"),
            }
        });
    }
}

fn payload(view: &ApprovalView, link_base: Option<&str>) -> serde_json::Value {
    json!({ "text": text(view, link_base), "approval": view })
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
