//! The `[target.upstream]` table of a PostgreSQL target: who loopgate logs in
//! as, where the password comes from, and how the connection is protected.
//!
//! ```toml
//! [target.upstream]
//! user = "app"
//! credential = "pg-app"            # $CREDENTIALS_DIRECTORY/pg-app (systemd)
//! # password_file = "/etc/loopgate/pg-app.pw"   # mode 0600
//! tls = "verify-full"              # disable | require | verify-full
//! ca_file = "/etc/loopgate/pg-ca.pem"
//! database = "clinic"              # optional: overrides the client's choice
//! ```
use std::{
    fmt, fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A PostgreSQL target's own settings.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    pub upstream: UpstreamConfig,
    /// Answer a client's SSLRequest with TLS (a certificate from loopgate's
    /// local CA); otherwise it is answered 'N'.
    pub client_tls: bool,
}

impl PostgresSettings {
    /// Checked settings: the upstream table must be usable.
    pub fn new(upstream: UpstreamConfig, client_tls: bool) -> Result<Self, UpstreamConfigError> {
        upstream.validate()?;
        Ok(PostgresSettings { upstream, client_tls })
    }
}

/// How loopgate protects its connection to the upstream server.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext. Only for servers on the same host or a trusted network.
    #[default]
    Disable,
    /// Encrypted, server not authenticated (protects against passive sniffing).
    Require,
    /// Encrypted, the chain is checked against `ca_file` and the host name.
    VerifyFull,
}

/// `[target.upstream]` as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The role loopgate logs in as; replaces whatever the client sent.
    pub user: String,
    /// A file holding the password (one line); must be mode 0600 or stricter.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/<name>`.
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM CA bundle the server's certificate must chain to (verify-full).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Database to connect to regardless of what the client asked for.
    #[serde(default)]
    pub database: Option<String>,
    /// The authentication methods the server may ask for (like libpq's
    /// `require_auth`); unset allows every method loopgate speaks. Without
    /// `tls = "verify-full"` an impostor could ask for `password` and read
    /// the secret: `["scram-sha-256"]` rules that out.
    #[serde(default)]
    pub require_auth: Option<Vec<AuthMethod>>,
}

/// An upstream authentication method, named as libpq's `require_auth` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// No authentication (`trust`).
    #[serde(rename = "none")]
    None,
    /// Cleartext password.
    #[serde(rename = "password")]
    Password,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream.user must not be empty")]
    EmptyUser,
    #[error("set either upstream.password_file or upstream.credential, not both")]
    TwoSecretSources,
    #[error("upstream.tls = \"verify-full\" needs upstream.ca_file")]
    MissingCaFile,
    #[error("upstream.ca_file is only used with tls = \"verify-full\"")]
    UnusedCaFile,
    #[error("upstream.require_auth must name at least one method")]
    NoAuthMethod,
    #[error("upstream.credential {0:?} must be a plain file name (no '/', not '.' or '..')")]
    BadCredentialName(String),
    #[error("password file {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600)")]
    SecretFileMode { path: PathBuf, mode: u32 },
    #[error("cannot read password file {path}: {source}")]
    SecretFileRead { path: PathBuf, source: io::Error },
    #[error("upstream.credential {0:?} is set but $CREDENTIALS_DIRECTORY is not (add LoadCredential= to the unit)")]
    NoCredentialsDirectory(String),
    #[error("password in {0} is empty")]
    EmptySecret(PathBuf),
    #[error("password in {0} is not valid UTF-8")]
    SecretNotUtf8(PathBuf),
}

impl UpstreamConfig {
    /// Checks what serde cannot: combinations of keys.
    pub fn validate(&self) -> Result<(), UpstreamConfigError> {
        if self.user.is_empty() {
            return Err(UpstreamConfigError::EmptyUser);
        }
        if self.password_file.is_some() && self.credential.is_some() {
            return Err(UpstreamConfigError::TwoSecretSources);
        }
        if self.require_auth.as_ref().is_some_and(Vec::is_empty) {
            return Err(UpstreamConfigError::NoAuthMethod);
        }
        if let Some(name) = &self.credential
            && (name.is_empty() || name.contains('/') || name == "." || name == "..")
        {
            return Err(UpstreamConfigError::BadCredentialName(name.clone()));
        }
        match (self.tls, &self.ca_file) {
            (TlsMode::VerifyFull, None) => Err(UpstreamConfigError::MissingCaFile),
            (TlsMode::Disable | TlsMode::Require, Some(_)) => Err(UpstreamConfigError::UnusedCaFile),
            _ => Ok(()),
        }
    }

    /// Reads the password, or `None` when no source is configured (servers
    /// that trust the agent's host). A password file readable by anyone but
    /// its owner is refused: the secret must stay with the agent.
    pub fn load_secret(&self) -> Result<Option<Secret>, UpstreamConfigError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        self.load_secret_from(dir.as_deref())
    }

    fn load_secret_from(&self, credentials_dir: Option<&Path>) -> Result<Option<Secret>, UpstreamConfigError> {
        self.validate()?;
        if let Some(path) = &self.password_file {
            let meta = fs::metadata(path).map_err(|source| UpstreamConfigError::SecretFileRead {
                path: path.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(UpstreamConfigError::SecretFileMode {
                    path: path.clone(),
                    mode,
                });
            }
            return read_secret(path).map(Some);
        }
        if let Some(name) = &self.credential {
            // systemd makes the directory and files private to the service.
            let dir = credentials_dir.ok_or_else(|| UpstreamConfigError::NoCredentialsDirectory(name.clone()))?;
            return read_secret(&dir.join(name)).map(Some);
        }
        Ok(None)
    }
}

fn read_secret(path: &Path) -> Result<Secret, UpstreamConfigError> {
    let bytes = fs::read(path).map_err(|source| UpstreamConfigError::SecretFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|_| UpstreamConfigError::SecretNotUtf8(path.to_path_buf()))?;
    // One line: editors and `echo` add a newline that is not part of it.
    // Truncated in place, so no unwiped copy is left behind.
    text.truncate(text.trim_end_matches(['\n', '\r']).len());
    let secret = Secret::new(text);
    if secret.expose().is_empty() {
        return Err(UpstreamConfigError::EmptySecret(path.to_path_buf()));
    }
    Ok(secret)
}

/// A password. Debug never shows it and there is no Display, so it cannot
/// end up in a log line by accident; the memory is cleared on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The password itself, for the few places that send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: zero bytes are valid UTF-8; the string is dropped right after.
        for b in unsafe { self.0.as_bytes_mut() } {
            // Volatile so the compiler does not elide the wipe of dead memory.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(s: &str) -> Result<UpstreamConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn parses_full_table_and_defaults() {
        let c = parse(
            "user = \"app\"\ntls = \"verify-full\"\nca_file = \"/ca.pem\"\ndatabase = \"d\"\ncredential = \"pg\"",
        )
        .unwrap();
        assert_eq!(c.tls, TlsMode::VerifyFull);
        assert_eq!(c.database.as_deref(), Some("d"));
        c.validate().unwrap();
        let c = parse("user = \"app\"").unwrap();
        assert_eq!(c.tls, TlsMode::Disable);
        assert!(c.password_file.is_none() && c.credential.is_none());
    }

    #[test]
    fn rejects_unknown_keys_and_modes() {
        assert!(parse("user = \"app\"\npassword = \"x\"").is_err());
        assert!(parse("user = \"app\"\ntls = \"prefer\"").is_err());
    }

    #[test]
    fn validate_catches_bad_combinations() {
        let c = parse("user = \"app\"\ntls = \"verify-full\"").unwrap();
        assert!(matches!(c.validate(), Err(UpstreamConfigError::MissingCaFile)));
        let c = parse("user = \"app\"\npassword_file = \"/a\"\ncredential = \"b\"").unwrap();
        assert!(matches!(c.validate(), Err(UpstreamConfigError::TwoSecretSources)));
        let c = parse("user = \"app\"\ncredential = \"../etc/shadow\"").unwrap();
        assert!(matches!(c.validate(), Err(UpstreamConfigError::BadCredentialName(_))));
    }

    #[test]
    fn require_auth_names_libpq_methods() {
        let c = parse("user = \"app\"\nrequire_auth = [\"scram-sha-256\", \"none\"]").unwrap();
        assert_eq!(c.require_auth, Some(vec![AuthMethod::ScramSha256, AuthMethod::None]));
        c.validate().unwrap();
        assert!(parse("user = \"app\"\nrequire_auth = [\"kerberos\"]").is_err());
        let empty = parse("user = \"app\"\nrequire_auth = []").unwrap();
        assert!(matches!(empty.validate(), Err(UpstreamConfigError::NoAuthMethod)));
    }

    #[test]
    fn password_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let c = UpstreamConfig {
            user: "app".into(),
            password_file: Some(path.clone()),
            credential: None,
            tls: TlsMode::Disable,
            ca_file: None,
            database: None,
            require_auth: None,
        };
        let err = c.load_secret_from(None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("0644") && msg.contains(&path.display().to_string()),
            "{msg}"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let secret = c.load_secret_from(None).unwrap().unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn credential_read_from_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pg"), "pw-from-systemd").unwrap();
        let c = parse("user = \"app\"\ncredential = \"pg\"").unwrap();
        assert_eq!(
            c.load_secret_from(Some(dir.path())).unwrap().unwrap().expose(),
            "pw-from-systemd"
        );
        assert!(matches!(
            c.load_secret_from(None),
            Err(UpstreamConfigError::NoCredentialsDirectory(_))
        ));
        fs::write(dir.path().join("pg"), "\n").unwrap();
        assert!(matches!(
            c.load_secret_from(Some(dir.path())),
            Err(UpstreamConfigError::EmptySecret(_))
        ));
    }
}
