//! The `[target.ssh]` table of an SSH target: who loopgate logs in as
//! upstream, with which secret, how the server's host key is pinned, and
//! what clients are shown.
//!
//! ```toml
//! [target.ssh]
//! user = "deploy"                                  # the upstream login
//! key_file = "/etc/loopgate/ssh/deploy_ed25519"   # or password_file (mode 0600),
//!                                                  # or user_certificate = true (loopgate's user CA)
//! known_hosts = "/etc/loopgate/ssh/known_hosts"   # or host_key = "ssh-ed25519 AAAA..."
//! mask_output = true                               # PHI detectors on exec/shell output
//! names = ["db1.internal"]                         # more names for the host certificate
//! # presented_key_file = "/etc/loopgate/ssh/db1_host_ed25519"  # present this host key instead
//! #                                                # of a certificate (the server's own: transparent)
//! record = true                                    # asciicast recordings of exec/shell output
//! record_max_bytes = 67108864                      # a recording is cut (and says so) beyond this
//! ```
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use russh::keys::{PrivateKey, PublicKey};
use serde::Deserialize;

/// `[target.ssh]` as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The login loopgate uses upstream, whatever the client asked for.
    pub user: String,
    /// An OpenSSH private key (unencrypted), mode 0600 or stricter.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file holding the upstream password (one line), mode 0600.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Log in with a per-session certificate of loopgate's SSH user CA
    /// (`<[tls] ca_dir>/ssh/user_ca`; the server trusts it with
    /// `TrustedUserCAKeys`) instead of a stored key or password.
    #[serde(default)]
    pub user_certificate: bool,
    /// An OpenSSH known_hosts file holding the server's host key.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// The server's host key, `ALGORITHM BASE64` as in a `.pub` file.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Mask PHI in exec and shell output (stdout and stderr).
    #[serde(default = "yes")]
    pub mask_output: bool,
    /// Names and addresses the host certificate is valid for, besides the
    /// target's addresses.
    #[serde(default)]
    pub names: Vec<String>,
    /// A private host key (OpenSSH format, mode 0600) the target presents
    /// to clients instead of a host certificate of loopgate's CA — a copy
    /// of the server's own key makes loopgate invisible to clients that
    /// already know the server.
    #[serde(default)]
    pub presented_key_file: Option<PathBuf>,
    /// Record exec and shell output (as masked) as asciicast files under
    /// the audit directory, hashed into the trail.
    #[serde(default = "yes")]
    pub record: bool,
    /// The largest a recording grows; beyond it, it ends with a marker.
    #[serde(default = "default_record_max_bytes")]
    pub record_max_bytes: u64,
}

fn yes() -> bool {
    true
}

fn default_record_max_bytes() -> u64 {
    64 << 20
}

/// The smallest `record_max_bytes` (a header and a few events).
const MIN_RECORD_BYTES: u64 = 4096;

/// How the upstream server's host key is pinned.
#[derive(Clone, Debug)]
pub enum HostKeyPin {
    /// Entries of a known_hosts file for the target's host and port.
    KnownHosts(PathBuf),
    /// One key, given in the config.
    Key(Box<PublicKey>),
}

/// Where loopgate's upstream secret comes from.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    KeyFile(PathBuf),
    PasswordFile(PathBuf),
    /// Per-session certificates of loopgate's user CA.
    UserCertificate,
}

/// An SSH target's checked settings.
#[derive(Clone, Debug)]
pub struct SshSettings {
    pub user: String,
    pub credential: CredentialSource,
    pub host_key: HostKeyPin,
    pub mask_output: bool,
    pub names: Vec<String>,
    /// The host key clients are shown, when not a certificate.
    pub presented_key_file: Option<PathBuf>,
    /// The size bound of recordings; `None`: not recorded.
    pub record_max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SshConfigError {
    #[error("ssh.user must not be empty")]
    EmptyUser,
    #[error("set one of ssh.key_file, ssh.password_file and ssh.user_certificate")]
    NoCredential,
    #[error("set only one of ssh.key_file, ssh.password_file and ssh.user_certificate")]
    TwoCredentials,
    #[error(
        "set one of ssh.known_hosts and ssh.host_key: the upstream host key must be pinned (ssh-keyscan HOST > FILE)"
    )]
    NoHostKey,
    #[error("set either ssh.known_hosts or ssh.host_key, not both")]
    TwoHostKeys,
    #[error("ssh.host_key is not an OpenSSH public key (\"ssh-ed25519 AAAA...\"): {0}")]
    BadHostKey(String),
    #[error("ssh.names entry {0:?} is empty or has spaces or commas")]
    BadName(String),
    #[error("{path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600)")]
    SecretFileMode { path: PathBuf, mode: u32 },
    #[error("cannot read {path}: {reason}")]
    SecretFileRead { path: PathBuf, reason: String },
    #[error("{0} is empty")]
    EmptySecret(PathBuf),
    #[error("ssh.record_max_bytes must be at least {MIN_RECORD_BYTES}")]
    SmallRecordBound,
}

impl SshSettings {
    /// Checks what serde cannot: one credential, one pin, a usable key.
    pub fn new(raw: SshConfig) -> Result<Self, SshConfigError> {
        if raw.user.trim().is_empty() {
            return Err(SshConfigError::EmptyUser);
        }
        let credential = match (raw.key_file, raw.password_file, raw.user_certificate) {
            (Some(k), None, false) => CredentialSource::KeyFile(k),
            (None, Some(p), false) => CredentialSource::PasswordFile(p),
            (None, None, true) => CredentialSource::UserCertificate,
            (None, None, false) => return Err(SshConfigError::NoCredential),
            _ => return Err(SshConfigError::TwoCredentials),
        };
        let host_key = match (raw.known_hosts, raw.host_key) {
            (Some(_), Some(_)) => return Err(SshConfigError::TwoHostKeys),
            (Some(path), None) => HostKeyPin::KnownHosts(path),
            (None, Some(text)) => HostKeyPin::Key(Box::new(
                PublicKey::from_openssh(text.trim()).map_err(|e| SshConfigError::BadHostKey(e.to_string()))?,
            )),
            (None, None) => return Err(SshConfigError::NoHostKey),
        };
        if let Some(bad) = raw.names.iter().find(|n| n.is_empty() || n.contains([' ', ',', '\t'])) {
            return Err(SshConfigError::BadName(bad.clone()));
        }
        if raw.record && raw.record_max_bytes < MIN_RECORD_BYTES {
            return Err(SshConfigError::SmallRecordBound);
        }
        Ok(SshSettings {
            user: raw.user,
            credential,
            host_key,
            mask_output: raw.mask_output,
            names: raw.names,
            presented_key_file: raw.presented_key_file,
            record_max_bytes: raw.record.then_some(raw.record_max_bytes),
        })
    }
}

/// loopgate's upstream secret, read at agent start.
pub enum Credential {
    Key(std::sync::Arc<PrivateKey>),
    Password(String),
    /// A fresh certificate per session.
    Certificate(std::sync::Arc<super::userca::UserCa>),
}

impl CredentialSource {
    /// Reads the secret (a file readable by group or others is refused:
    /// the secret must stay with the agent), or loads the user CA from
    /// `ca_dir`.
    pub fn load(&self, ca_dir: &Path) -> Result<Credential, SshConfigError> {
        match self {
            CredentialSource::UserCertificate => super::userca::UserCa::load_or_create(ca_dir)
                .map(|ca| Credential::Certificate(std::sync::Arc::new(ca)))
                .map_err(|e| SshConfigError::SecretFileRead {
                    path: ca_dir
                        .join(super::hostca::HostCa::DIR)
                        .join(super::userca::UserCa::KEY_FILE),
                    reason: e.to_string(),
                }),
            CredentialSource::KeyFile(path) => Ok(Credential::Key(std::sync::Arc::new(private_key(path)?))),
            CredentialSource::PasswordFile(path) => {
                let text = read_private(path)?;
                let password = text.trim_end_matches(['\n', '\r']).to_owned();
                if password.is_empty() {
                    return Err(SshConfigError::EmptySecret(path.clone()));
                }
                Ok(Credential::Password(password))
            }
        }
    }
}

/// An unencrypted OpenSSH private key from a file only the agent can read.
pub fn private_key(path: &Path) -> Result<PrivateKey, SshConfigError> {
    let text = read_private(path)?;
    let key = PrivateKey::from_openssh(text.trim()).map_err(|e| SshConfigError::SecretFileRead {
        path: path.to_path_buf(),
        reason: format!("not an unencrypted OpenSSH private key: {e}"),
    })?;
    if key.is_encrypted() {
        return Err(SshConfigError::SecretFileRead {
            path: path.to_path_buf(),
            reason: "the key is encrypted; loopgate needs it without a passphrase".into(),
        });
    }
    Ok(key)
}

fn read_private(path: &Path) -> Result<String, SshConfigError> {
    let read_err = |reason: String| SshConfigError::SecretFileRead {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SshConfigError::SecretFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = fs::read(path).map_err(|e| read_err(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| read_err("not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINazRXOCpouM1+WUJbwK8KYoG7kO4radcH9VDulimEvn";

    fn raw(toml_text: &str) -> SshConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_credential_and_a_pin_are_required() {
        let ok = SshSettings::new(raw(&format!(
            "user = \"deploy\"\nkey_file = \"/k\"\nhost_key = \"{KEY}\""
        )))
        .unwrap();
        assert!(ok.mask_output);
        assert_eq!(ok.record_max_bytes, Some(64 << 20));
        assert!(matches!(ok.host_key, HostKeyPin::Key(_)));
        let err = |text: &str| SshSettings::new(raw(text)).unwrap_err().to_string();
        assert!(err("user = \"d\"\nknown_hosts = \"/h\"").contains("key_file"));
        assert!(err("user = \"d\"\nkey_file = \"/k\"").contains("pinned"));
        assert!(
            err("user = \"d\"\nkey_file = \"/k\"\npassword_file = \"/p\"\nknown_hosts = \"/h\"").contains("only one")
        );
        assert!(err("user = \"\"\nkey_file = \"/k\"\nknown_hosts = \"/h\"").contains("user"));
        assert!(err("user = \"d\"\nkey_file = \"/k\"\nhost_key = \"ssh-ed25519 nonsense\"").contains("host_key"));
        assert!(err("user = \"d\"\nkey_file = \"/k\"\nknown_hosts = \"/h\"\nnames = [\"a b\"]").contains("names"));
        assert!(toml::from_str::<SshConfig>("user = \"d\"\nkey = \"/k\"").is_err());
        let certified = SshSettings::new(raw("user = \"d\"\nuser_certificate = true\nknown_hosts = \"/h\"")).unwrap();
        assert!(matches!(certified.credential, CredentialSource::UserCertificate));
        assert!(
            err("user = \"d\"\nkey_file = \"/k\"\nuser_certificate = true\nknown_hosts = \"/h\"").contains("only one")
        );
        let base = "user = \"d\"\nkey_file = \"/k\"\nknown_hosts = \"/h\"\n";
        assert!(err(&format!("{base}record_max_bytes = 100")).contains("record_max_bytes"));
        let unrecorded = SshSettings::new(raw(&format!("{base}record = false\nrecord_max_bytes = 100"))).unwrap();
        assert_eq!(unrecorded.record_max_bytes, None);
    }

    #[test]
    fn secrets_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        fs::write(&path, "hunter2\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let source = CredentialSource::PasswordFile(path.clone());
        assert!(matches!(
            source.load(dir.path()),
            Err(SshConfigError::SecretFileMode { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let Ok(Credential::Password(p)) = source.load(dir.path()) else {
            panic!("password not read")
        };
        assert_eq!(p, "hunter2");
        fs::write(&path, "not a key").unwrap();
        assert!(CredentialSource::KeyFile(path).load(dir.path()).is_err());
    }
}
