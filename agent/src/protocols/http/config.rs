//! The `[target.http]` table of an `https` or `http` target: which API the
//! target serves (for policy fields and masking), how loopgate checks the
//! server and authenticates to it, and which certificate clients see.
//!
//! ```toml
//! [target.http]
//! api = "fhir"                              # fhir | kubernetes | json
//! ca_file = "/etc/loopgate/fhir-ca.pem"     # upstream CA; omitted: the public web roots
//! token_file = "/etc/loopgate/fhir.token"   # loopgate's bearer token upstream (0600)
//! # token_credential = "fhir-token"         # or $CREDENTIALS_DIRECTORY/fhir-token
//! # client_cert = "/etc/loopgate/k8s.crt"   # loopgate's client certificate upstream
//! # client_key = "/etc/loopgate/k8s.key"
//! # cert_file = "/etc/loopgate/serving.crt" # what clients see; omitted: issued
//! # key_file = "/etc/loopgate/serving.key"  #   by loopgate's local CA
//! # impersonate = true                      # kubernetes: Impersonate-User/-Group from the principal
//! # record = true                           # kubernetes: asciicast recordings of exec/attach (masked)
//! # record_max_bytes = 67108864             # a recording is cut (and says so) beyond this
//! ```
use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The API a target serves: what its requests mean to the policy and which
/// fields of its JSON are PHI.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// HL7 FHIR (REST): resource type, id, interaction, search parameters;
    /// Patient demographics masked by path.
    Fhir,
    /// The Kubernetes API: verb, group, version, resource, namespace, name;
    /// Secret `data` / `stringData` always masked.
    Kubernetes,
    /// Any JSON API: detectors on every string.
    #[default]
    Json,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Fhir => "fhir",
            Api::Kubernetes => "kubernetes",
            Api::Json => "json",
        }
    }
}

/// `[target.http]` as written in the config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default)]
    pub api: Api,
    /// PEM CA bundle the upstream certificate must chain to; without it,
    /// the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A file (0600) holding loopgate's bearer token for the upstream.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A systemd credential holding that token.
    #[serde(default)]
    pub token_credential: Option<String>,
    /// loopgate's client certificate (PEM chain) and key upstream.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The certificate (PEM chain) and key clients are shown; without them
    /// loopgate's local CA issues one for the target's names.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Kubernetes: send `Impersonate-User` / `Impersonate-Group` from the
    /// caller's principal, so the API server's RBAC and audit log see the
    /// real caller (loopgate's credential needs the `impersonate` verb).
    /// Default: on for `api = "kubernetes"`; other APIs refuse it.
    #[serde(default)]
    pub impersonate: Option<bool>,
    /// Kubernetes: record exec and attach sessions (output as masked,
    /// stdin, resizes) as asciicast files hashed into the trail. Default on.
    #[serde(default)]
    pub record: Option<bool>,
    /// The largest a recording grows; beyond it, it ends with a marker.
    #[serde(default)]
    pub record_max_bytes: Option<u64>,
}

/// The default bound of a recording (as SSH's).
const DEFAULT_RECORD_BYTES: u64 = 64 << 20;
/// The smallest `record_max_bytes` (a header and a few events).
const MIN_RECORD_BYTES: u64 = 4096;

/// An HTTP target's checked settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `https`: TLS on both sides; `http`: plaintext on both sides.
    pub tls: bool,
    pub config: HttpConfig,
    /// Add impersonation headers (Kubernetes).
    pub impersonate: bool,
    /// The size bound of exec/attach recordings; `None`: not recorded.
    pub record_max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("set either http.token_file or http.token_credential, not both")]
    TwoTokenSources,
    #[error("http.{0} needs http.{1}")]
    Pair(&'static str, &'static str),
    #[error("http.{0} is for https targets; a plain http target has no TLS")]
    NoTls(&'static str),
    #[error("http.token_credential {0:?} must be a plain file name (no '/', not '.' or '..')")]
    BadCredentialName(String),
    #[error("token file {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600)")]
    SecretFileMode { path: PathBuf, mode: u32 },
    #[error("cannot read token file {path}: {source}")]
    SecretFileRead { path: PathBuf, source: std::io::Error },
    #[error("http.token_credential {0:?} is set but $CREDENTIALS_DIRECTORY is not (add LoadCredential= to the unit)")]
    NoCredentialsDirectory(String),
    #[error("http.impersonate is for api = \"kubernetes\"")]
    ImpersonateNotKubernetes,
    #[error("http.record and http.record_max_bytes are for api = \"kubernetes\" (exec and attach)")]
    RecordNotKubernetes,
    #[error("http.record_max_bytes must be at least {MIN_RECORD_BYTES}")]
    RecordTooSmall,
    #[error("the token in {0} is empty or not one line of visible ASCII")]
    BadToken(PathBuf),
}

impl HttpSettings {
    /// Checked settings: keys that come in pairs come together, TLS keys
    /// only on `https` targets.
    pub fn new(config: HttpConfig, tls: bool) -> Result<HttpSettings, HttpConfigError> {
        if config.token_file.is_some() && config.token_credential.is_some() {
            return Err(HttpConfigError::TwoTokenSources);
        }
        if let Some(name) = &config.token_credential
            && (name.is_empty() || name.contains('/') || name == "." || name == "..")
        {
            return Err(HttpConfigError::BadCredentialName(name.clone()));
        }
        for (a, b, x, y) in [
            ("client_cert", "client_key", &config.client_cert, &config.client_key),
            ("cert_file", "key_file", &config.cert_file, &config.key_file),
        ] {
            match (x, y) {
                (Some(_), None) => return Err(HttpConfigError::Pair(a, b)),
                (None, Some(_)) => return Err(HttpConfigError::Pair(b, a)),
                _ => {}
            }
        }
        if !tls {
            let tls_keys = [
                ("ca_file", config.ca_file.is_some()),
                ("client_cert", config.client_cert.is_some()),
                ("cert_file", config.cert_file.is_some()),
            ];
            if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return Err(HttpConfigError::NoTls(key));
            }
        }
        let impersonate = match (config.impersonate, config.api) {
            (Some(true), api) if api != Api::Kubernetes => return Err(HttpConfigError::ImpersonateNotKubernetes),
            (Some(on), _) => on,
            (None, api) => api == Api::Kubernetes,
        };
        let kubernetes = config.api == Api::Kubernetes;
        if !kubernetes && (config.record.is_some() || config.record_max_bytes.is_some()) {
            return Err(HttpConfigError::RecordNotKubernetes);
        }
        if config.record_max_bytes.is_some_and(|b| b < MIN_RECORD_BYTES) {
            return Err(HttpConfigError::RecordTooSmall);
        }
        let record_max_bytes = (kubernetes && config.record != Some(false))
            .then(|| config.record_max_bytes.unwrap_or(DEFAULT_RECORD_BYTES));
        Ok(HttpSettings {
            tls,
            config,
            impersonate,
            record_max_bytes,
        })
    }

    /// loopgate's bearer token for the upstream, if one is configured.
    pub fn load_token(&self) -> Result<Option<Token>, HttpConfigError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        self.load_token_from(dir.as_deref())
    }

    fn load_token_from(&self, credentials_dir: Option<&Path>) -> Result<Option<Token>, HttpConfigError> {
        let path = match (&self.config.token_file, &self.config.token_credential) {
            (Some(path), _) => {
                let meta = fs::metadata(path).map_err(|source| HttpConfigError::SecretFileRead {
                    path: path.clone(),
                    source,
                })?;
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(HttpConfigError::SecretFileMode {
                        path: path.clone(),
                        mode,
                    });
                }
                path.clone()
            }
            (None, Some(name)) => credentials_dir
                .ok_or_else(|| HttpConfigError::NoCredentialsDirectory(name.clone()))?
                .join(name),
            (None, None) => return Ok(None),
        };
        let text = fs::read_to_string(&path).map_err(|source| HttpConfigError::SecretFileRead {
            path: path.clone(),
            source,
        })?;
        let token = text.trim_end_matches(['\n', '\r']);
        // It goes into a header: visible ASCII only, so it cannot split one.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HttpConfigError::BadToken(path));
        }
        Ok(Some(Token(token.to_owned())))
    }
}

/// loopgate's bearer token. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str, tls: bool) -> Result<HttpSettings, HttpConfigError> {
        HttpSettings::new(toml::from_str(text).expect("parses"), tls)
    }

    #[test]
    fn defaults_and_full_table() {
        let s = settings("", true).unwrap();
        assert_eq!(s.config.api, Api::Json);
        assert!(s.load_token().unwrap().is_none());
        let s = settings(
            "api = \"fhir\"\nca_file = \"/ca\"\ntoken_credential = \"t\"\ncert_file = \"/c\"\nkey_file = \"/k\"",
            true,
        )
        .unwrap();
        assert_eq!(s.config.api, Api::Fhir);
        assert!(toml::from_str::<HttpConfig>("api = \"soap\"").is_err());
        assert!(toml::from_str::<HttpConfig>("token = \"x\"").is_err());
    }

    #[test]
    fn bad_combinations_are_refused() {
        let err = |t, tls| settings(t, tls).unwrap_err().to_string();
        assert!(err("token_file = \"/a\"\ntoken_credential = \"b\"", true).contains("not both"));
        assert!(err("client_cert = \"/a\"", true).contains("client_key"));
        assert!(err("key_file = \"/a\"", true).contains("cert_file"));
        assert!(err("ca_file = \"/a\"", false).contains("plain http"));
        assert!(err("token_credential = \"../x\"", true).contains("plain file name"));
        assert!(err("api = \"fhir\"\nimpersonate = true", true).contains("kubernetes"));
        assert!(settings("api = \"kubernetes\"", true).unwrap().impersonate);
        assert!(
            !settings("api = \"kubernetes\"\nimpersonate = false", true)
                .unwrap()
                .impersonate
        );
        assert!(!settings("", true).unwrap().impersonate);
        assert!(err("record = true", true).contains("kubernetes"));
        assert!(err("api = \"kubernetes\"\nrecord_max_bytes = 10", true).contains("at least"));
        let k = |t: &str| {
            settings(&format!("api = \"kubernetes\"\n{t}"), true)
                .unwrap()
                .record_max_bytes
        };
        assert_eq!(k(""), Some(64 << 20));
        assert_eq!(k("record_max_bytes = 8192"), Some(8192));
        assert_eq!(k("record = false"), None);
    }

    #[test]
    fn token_file_must_be_private_and_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "abc.def\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!("token_file = \"{}\"", path.display());
        let s = settings(&text, true).unwrap();
        assert!(matches!(s.load_token(), Err(HttpConfigError::SecretFileMode { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let token = s.load_token().unwrap().unwrap();
        assert_eq!(token.expose(), "abc.def");
        assert!(!format!("{token:?}").contains("abc"));
        fs::write(&path, "two\r\nlines").unwrap();
        assert!(matches!(s.load_token(), Err(HttpConfigError::BadToken(_))));
    }

    #[test]
    fn credential_comes_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t"), "tok").unwrap();
        let s = settings("token_credential = \"t\"", true).unwrap();
        assert_eq!(s.load_token_from(Some(dir.path())).unwrap().unwrap().expose(), "tok");
        assert!(matches!(
            s.load_token_from(None),
            Err(HttpConfigError::NoCredentialsDirectory(_))
        ));
    }
}
