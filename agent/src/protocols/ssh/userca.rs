//! loopgate as an SSH user CA, for the upstream login without a stored
//! key: per session, a fresh key and a user certificate for the target's
//! login, valid for minutes, whose key id names the principal and the
//! session, so the server's own auth log ("Accepted publickey ... ID
//! loopgate principal=... session=...") ties back to the audit. The server
//! trusts the CA with `TrustedUserCAKeys` (the line `loopgate ssh user-ca`
//! prints).
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use russh::keys::{Certificate, PrivateKey, ssh_key::certificate};
use uuid::Uuid;

use super::hostca::{HostCaError, load_or_create_key, nonce, random_ed25519};

/// How long a login certificate is valid: it is used once, at login.
const LIFETIME: Duration = Duration::from_secs(300);
/// Slack for servers whose clock runs behind the agent's.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// What the certificate permits once logged in (forwards are loopgate's
/// decision, relayed over this login).
const EXTENSIONS: &[&str] = &["permit-pty", "permit-port-forwarding"];

/// The user CA kept in `<ca_dir>/ssh/user_ca`.
pub struct UserCa {
    key: PrivateKey,
}

/// A one-session key and its certificate.
pub struct Login {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

impl UserCa {
    pub const KEY_FILE: &str = "user_ca";

    /// Loads the CA, creating it (0600) on first use.
    pub fn load_or_create(ca_dir: &Path) -> Result<UserCa, HostCaError> {
        Ok(UserCa {
            key: load_or_create_key(ca_dir, Self::KEY_FILE)?,
        })
    }

    /// The line for the server's `TrustedUserCAKeys` file.
    pub fn trusted_line(&self) -> String {
        let key = self.key.public_key().to_openssh().unwrap_or_default();
        format!("{key} loopgate-user-ca")
    }

    /// A fresh key and a certificate for `login`, its key id naming
    /// `principal` and `session`.
    pub fn issue(&self, login: &str, principal: &str, session: Uuid) -> Result<Login, HostCaError> {
        let key = random_ed25519().map_err(HostCaError::Sign)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let sign = |e: russh::keys::ssh_key::Error| HostCaError::Sign(e.to_string());
        let mut builder = certificate::Builder::new(
            nonce().map_err(HostCaError::Sign)?,
            key.public_key().key_data().clone(),
            now.saturating_sub(CLOCK_SKEW).as_secs(),
            (now + LIFETIME).as_secs(),
        )
        .map_err(sign)?;
        builder.cert_type(certificate::CertType::User).map_err(sign)?;
        builder.key_id(key_id(principal, session)).map_err(sign)?;
        builder.valid_principal(login).map_err(sign)?;
        for extension in EXTENSIONS {
            builder.extension(*extension, "").map_err(sign)?;
        }
        let certificate = builder.sign(&self.key).map_err(sign)?;
        Ok(Login { key, certificate })
    }
}

/// `loopgate principal=SUBJECT session=UUID`, the subject without spaces
/// (a server log line is split on them).
fn key_id(principal: &str, session: Uuid) -> String {
    let subject: String = principal
        .chars()
        .map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c })
        .collect();
    format!("loopgate principal={subject} session={session}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_certificates_name_the_principal_and_session_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = UserCa::load_or_create(dir.path()).unwrap();
        assert!(ca.trusted_line().starts_with("ssh-ed25519 AAAA"));
        assert_eq!(
            UserCa::load_or_create(dir.path()).unwrap().trusted_line(),
            ca.trusted_line()
        );
        let session = Uuid::now_v7();
        let login = ca.issue("deploy", "oidc:alice smith", session).unwrap();
        let cert = &login.certificate;
        assert_eq!(cert.cert_type(), certificate::CertType::User);
        assert_eq!(cert.valid_principals(), ["deploy".to_owned()].as_slice());
        assert_eq!(
            cert.key_id(),
            format!("loopgate principal=oidc:alice_smith session={session}")
        );
        assert_eq!(cert.public_key(), login.key.public_key().key_data());
        assert!(cert.valid_before() - cert.valid_after() <= (LIFETIME + CLOCK_SKEW).as_secs());
        let fingerprint = ca.key.public_key().fingerprint(Default::default());
        cert.validate(&[fingerprint]).expect("signed by the CA and valid now");
        // Another session gets another key.
        let other = ca.issue("deploy", "unix:root", Uuid::now_v7()).unwrap();
        assert_ne!(other.key.public_key(), login.key.public_key());
    }
}
