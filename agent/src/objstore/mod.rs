//! S3-compatible object storage: where a fleet keeps its audit evidence
//! (`[audit.remote]`) and its policy bundles (`[policy.bundle]`).
//!
//! One connection table, `[*.s3]`, names the endpoint and credentials;
//! requests go through object_store's S3 client on our own transport
//! ([`http`]). Without keys in the config, the usual AWS sources apply
//! (instance metadata; for command-line tools also `AWS_*` variables).
pub mod http;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, RetryConfig};
use serde::Deserialize;

/// `s3://bucket/prefix`: where objects go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!(
                "{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(format!("{url:?}: the prefix must be a plain path"));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The object key of `relative` (a `/`-separated path) under the prefix.
    pub fn key(&self, relative: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// `relative` as seen from the prefix, if `key` is under it.
    pub fn relative<'a>(&self, key: &'a ObjectPath) -> Option<&'a str> {
        let key = key.as_ref();
        if self.prefix.is_empty() {
            return Some(key);
        }
        key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }

    /// The prefix itself, for listing.
    pub fn root(&self) -> Option<ObjectPath> {
        (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()))
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// How to reach the store: the `[audit.remote.s3]` / `[policy.bundle.s3]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `https://host[:port]` of an S3-compatible store; AWS when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Static credentials: the key id here, the secret from a file (mode
    /// 0600) or a systemd credential. Without them: the instance's role.
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub secret_access_key_credential: Option<String>,
    /// PEM roots for a store with a private CA (else the public web roots).
    pub ca_file: Option<PathBuf>,
    /// Allow an `http://` endpoint (tests, a store on loopback).
    pub allow_http: bool,
    /// `bucket.host` instead of `host/bucket` URLs.
    pub virtual_hosted_style: bool,
    pub connect_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
}

impl S3Config {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = &self.endpoint {
            let url = url::Url::parse(e).map_err(|err| format!("endpoint {e:?}: {err}"))?;
            match url.scheme() {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => {
                    return Err(format!(
                        "endpoint {e:?} is plain http: set allow_http = true (--allow-http) to use it"
                    ));
                }
                other => return Err(format!("endpoint {e:?}: scheme {other:?} is not http(s)")),
            }
        }
        let secrets = usize::from(self.secret_access_key_file.is_some())
            + usize::from(self.secret_access_key_credential.is_some());
        match (self.access_key_id.is_some(), secrets) {
            (true, 1) | (false, 0) => Ok(()),
            (true, 0) => Err("access_key_id needs secret_access_key_file or secret_access_key_credential".into()),
            (false, _) => Err("a secret access key needs access_key_id".into()),
            (true, _) => Err("set one of secret_access_key_file and secret_access_key_credential".into()),
        }
    }

    fn timeouts(&self) -> http::Timeouts {
        http::Timeouts {
            connect: Duration::from_secs(self.connect_timeout_secs.unwrap_or(10).max(1)),
            request: Duration::from_secs(self.request_timeout_secs.unwrap_or(120).max(1)),
        }
    }

    /// The transport these settings describe.
    pub fn connector(&self) -> Result<http::Connector, String> {
        let tls = crate::http::client_tls(self.ca_file.as_deref()).map_err(|e| {
            format!(
                "ca_file {}: {e}",
                self.ca_file.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
        Ok(http::Connector::new(tls, self.timeouts()))
    }
}

/// Options of [`open`] that differ between the agent and a command-line tool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open {
    /// Read `AWS_*` variables (an auditor's shell); the agent uses its config only.
    pub from_env: bool,
    /// Retries of one request inside object_store (the shipper retries on top).
    pub max_retries: usize,
}

/// The S3 client for `url` with `config`.
pub fn open(url: &S3Url, config: &S3Config, how: Open) -> Result<Arc<AmazonS3>, String> {
    config.validate()?;
    let mut builder = if how.from_env {
        AmazonS3Builder::from_env()
    } else {
        AmazonS3Builder::new()
    };
    builder = builder
        .with_bucket_name(&url.bucket)
        .with_http_connector(config.connector()?)
        .with_checksum_algorithm(Checksum::SHA256)
        .with_virtual_hosted_style_request(config.virtual_hosted_style)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: how.max_retries,
            retry_timeout: Duration::from_secs(60),
        });
    if let Some(e) = &config.endpoint {
        builder = builder.with_endpoint(e).with_allow_http(config.allow_http);
    }
    match &config.region {
        Some(r) => builder = builder.with_region(r),
        None if config.endpoint.is_some()
            && builder
                .get_config_value(&object_store::aws::AmazonS3ConfigKey::Region)
                .is_none() =>
        {
            // S3-compatible stores sign with some region; this is theirs by convention.
            builder = builder.with_region("us-east-1");
        }
        None => {}
    }
    if let Some(id) = &config.access_key_id {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(read_secret(config)?);
    }
    builder.build().map(Arc::new).map_err(|e| e.to_string())
}

/// The secret access key, from its file (which must not be readable by
/// group or others) or systemd credential.
fn read_secret(config: &S3Config) -> Result<String, String> {
    let path = match (&config.secret_access_key_file, &config.secret_access_key_credential) {
        (Some(file), _) => {
            let mode = std::fs::metadata(file)
                .map_err(|e| format!("secret_access_key_file {}: {e}", file.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "secret_access_key_file {} has mode {:o}: make it 0600",
                    file.display(),
                    mode & 0o777
                ));
            }
            file.clone()
        }
        (None, Some(name)) => credential_path(name)?,
        (None, None) => return Err("no secret access key configured".into()),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// `$CREDENTIALS_DIRECTORY/<name>`: a systemd credential (`LoadCredential=`).
pub fn credential_path(name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("{name:?} is not a credential name"));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        format!("credential {name:?} is set but $CREDENTIALS_DIRECTORY is not (add LoadCredential= to the unit)")
    })?;
    Ok(PathBuf::from(dir).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let u = S3Url::parse("s3://audit-fleet/prod/eu/").expect("parses");
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("audit-fleet", "prod/eu"));
        assert_eq!(
            u.key("date=2024-01-01/host=h/x.parquet").as_ref(),
            "prod/eu/date=2024-01-01/host=h/x.parquet"
        );
        let key = u.key("a/b");
        assert_eq!(u.relative(&key), Some("a/b"));
        assert_eq!(u.relative(&ObjectPath::from("other/a")), None);
        let root = S3Url::parse("s3://bucket").expect("parses");
        assert_eq!(root.key("a").as_ref(), "a");
        assert!(root.root().is_none());
        for bad in [
            "https://b/p",
            "s3://B/p",
            "s3://ab/p",
            "s3://bucket/../x",
            "s3://bucket/a//b",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_settings_are_checked() {
        let ok = S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            allow_http: true,
            ..S3Config::default()
        };
        assert!(ok.validate().is_ok());
        let plain = S3Config {
            allow_http: false,
            ..ok.clone()
        };
        assert!(plain.validate().unwrap_err().contains("allow_http"));
        let half = S3Config {
            access_key_id: Some("k".into()),
            ..ok.clone()
        };
        assert!(half.validate().unwrap_err().contains("secret"));
        assert!(toml::from_str::<S3Config>("endpont = \"x\"").is_err());
    }

    #[test]
    fn a_readable_secret_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s3");
        std::fs::write(&file, "secret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let config = S3Config {
            access_key_id: Some("k".into()),
            secret_access_key_file: Some(file.clone()),
            ..S3Config::default()
        };
        assert!(read_secret(&config).unwrap_err().contains("0600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret(&config).expect("reads"), "secret");
    }
}
