//! Who the caller is, the same way for every protocol: the process the
//! kernel saw, and — on targets with `identity = "oidc"` — the token it
//! presented on its protocol's own channel (a PostgreSQL password, an SSH
//! password or keyboard-interactive answer, an HTTP bearer), validated and
//! bound to that process. A protocol only extracts the token.
use std::sync::Arc;

use super::OidcValidator;
use crate::audit::{Principal, ProcessInfo};

/// How a target establishes who the caller is (`[[target]] identity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The process the kernel saw is the identity (no token asked).
    Process,
    /// An OIDC token, presented on the protocol's own channel, validated,
    /// and bound to the process the kernel saw.
    Oidc,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Process => "process",
            Mode::Oidc => "oidc",
        }
    }
}

/// A target's way to turn a caller into a [`Principal`].
#[derive(Clone)]
pub enum Authenticator {
    Process,
    Oidc(Arc<OidcValidator>),
}

impl Authenticator {
    /// The authenticator for `mode`; `oidc` needs the validator.
    pub fn new(mode: Mode, oidc: Option<&Arc<OidcValidator>>) -> Result<Self, &'static str> {
        match mode {
            Mode::Process => Ok(Authenticator::Process),
            Mode::Oidc => oidc
                .cloned()
                .map(Authenticator::Oidc)
                .ok_or("identity = \"oidc\" without [identity.oidc]"),
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            Authenticator::Process => Mode::Process,
            Authenticator::Oidc(_) => Mode::Oidc,
        }
    }

    /// Whether the protocol must ask the client for a token.
    pub fn wants_token(&self) -> bool {
        matches!(self, Authenticator::Oidc(_))
    }

    /// The principal of the caller `process`, which presented `token` (if
    /// its protocol asked for one). `Err` is the reason to refuse, free of
    /// token contents.
    pub async fn principal(&self, process: &ProcessInfo, token: Option<&str>) -> Result<Principal, String> {
        let oidc = match self {
            Authenticator::Process => return Ok(of_process(process)),
            Authenticator::Oidc(oidc) => oidc,
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err("expected a token".to_owned());
        };
        let validated = oidc.validate(token).await.map_err(|e| format!("token refused: {e}"))?;
        oidc.check_binding(&validated, process.uid.unwrap_or(u32::MAX), process.unit.as_deref())
            .map_err(|e| format!("token refused: {e}"))?;
        Ok(Principal {
            subject: Some(validated.subject),
            issuer: Some(validated.issuer),
            email: validated.email,
            groups: validated.groups,
        })
    }
}

/// `unix:<user>` (or the uid when the name is unknown), vouched for by the
/// kernel.
fn of_process(process: &ProcessInfo) -> Principal {
    let user = process
        .user
        .clone()
        .unwrap_or_else(|| process.uid.map_or_else(|| "?".to_owned(), |u| u.to_string()));
    Principal {
        subject: Some(format!("unix:{user}")),
        issuer: Some("kernel".to_owned()),
        email: None,
        groups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_process_is_the_principal_without_a_token() {
        let process = ProcessInfo {
            uid: Some(1000),
            user: Some("etl".into()),
            ..ProcessInfo::default()
        };
        let p = Authenticator::Process.principal(&process, None).await.unwrap();
        assert_eq!(p.subject.as_deref(), Some("unix:etl"));
        assert_eq!(p.issuer.as_deref(), Some("kernel"));
        let nameless = ProcessInfo {
            uid: Some(4242),
            ..ProcessInfo::default()
        };
        let p = Authenticator::Process
            .principal(&nameless, Some("ignored"))
            .await
            .unwrap();
        assert_eq!(p.subject.as_deref(), Some("unix:4242"));
        assert!(!Authenticator::Process.wants_token());
        assert!(Authenticator::new(Mode::Oidc, None).is_err());
    }
}
