//! `[approvals]`: where approvers reach the agent and where it tells them.
use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// The approvals socket unless the config moves it (`[approvals] socket`).
pub const DEFAULT_SOCKET: &str = "/run/loopgate/approvals.sock";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Unix socket for `loopgate approvals`. Anyone may connect; what they
    /// may see and decide follows from their peer credentials.
    pub socket: PathBuf,
    /// Pending requests are journalled here, so a restart records them.
    pub state_dir: PathBuf,
    /// Loopback address of the HTTP API (OIDC bearer tokens); off if unset.
    pub http_listen: Option<SocketAddr>,
    /// Loopback address of the approvals page (sign-in by one-time links
    /// from `loopgate approvals web`); off if unset.
    pub web_listen: Option<SocketAddr>,
    /// Where each new request is POSTed (JSON; Slack-compatible `text`).
    pub webhook_url: Option<String>,
    /// CA bundle for an https webhook with a private CA.
    pub webhook_ca_file: Option<PathBuf>,
    /// A web page for approvals; the webhook links to `<link_base><id>`.
    pub link_base: Option<String>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/loopgate/approvals"),
            http_listen: None,
            web_listen: None,
            webhook_url: None,
            webhook_ca_file: None,
            link_base: None,
        }
    }
}

impl ApprovalsConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self, oidc_configured: bool) -> Result<(), String> {
        if let Some(addr) = self.http_listen {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "http_listen = \"{addr}\" is not a loopback address; the API is for a local web page or reverse proxy"
                ));
            }
            if !oidc_configured {
                return Err("http_listen needs [identity.oidc]: the API takes OIDC bearer tokens".into());
            }
        }
        if let Some(addr) = self.web_listen
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "web_listen = \"{addr}\" is not a loopback address; the approvals page signs in by the kernel's word, which holds on this host only"
            ));
        }
        if let Some(url) = &self.webhook_url {
            let parsed = url::Url::parse(url).map_err(|e| format!("webhook_url: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err("webhook_url must be an http(s) URL with a host".into());
            }
        }
        if !self.socket.is_absolute() || !self.state_dir.is_absolute() {
            return Err("socket and state_dir must be absolute paths".into());
        }
        Ok(())
    }
}
