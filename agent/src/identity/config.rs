//! `[identity.oidc]` and `[[identity.binding]]`: which issuer's tokens are
//! accepted, and which processes may present a given subject's token.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use url::{Host, Url};

/// The `[identity]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub oidc: OidcConfig,
    /// Tokens of a bound subject or client are accepted only from the listed
    /// processes, so a token copied out of one automation is useless elsewhere.
    #[serde(default)]
    pub binding: Vec<BindingRule>,
}

/// The `[identity.oidc]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Exact `iss` value; discovery is fetched from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` value (or one of them) a token must carry.
    pub audience: String,
    /// Claim holding the caller's groups; a dotted path (`realm_access.roles`)
    /// is followed when no claim has that exact name.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// How often the JWKS is refetched in the background.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Minimum time between JWKS fetches caused by an unknown `kid`, so a
    /// flood of tokens with made-up key ids cannot hammer the issuer.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_secs: u64,
    /// Signature algorithms accepted; symmetric ones and `none` are refused.
    #[serde(default = "default_algs")]
    pub allowed_algs: Vec<String>,
    /// PEM CA bundle for an issuer with a private CA; the public web roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of one discovery or JWKS request.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
    /// Validated tokens kept until they expire (bounded so memory is).
    #[serde(default = "default_cache_size")]
    pub token_cache_size: usize,
}

/// One `[[identity.binding]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRule {
    /// The token's `sub`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The token's `azp` / `client_id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// systemd units (`etl.service`) the caller must run in.
    #[serde(default)]
    pub units: Vec<String>,
    /// uids the caller must run as. With `units` too, both must match.
    #[serde(default)]
    pub uids: Vec<u32>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_refresh() -> u64 {
    3600
}
fn default_min_refetch() -> u64 {
    10
}
fn default_algs() -> Vec<String> {
    ["RS256", "RS384", "RS512", "PS256", "ES256"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_http_timeout() -> u64 {
    10
}
fn default_cache_size() -> usize {
    10_000
}

/// Algorithms a validator can check. HMAC is absent on purpose: an `HS256`
/// token "signed" with the issuer's public key must never verify.
pub(crate) const SUPPORTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The ceiling on leeway: beyond it `exp` stops meaning much.
const MAX_LEEWAY_SECS: u64 = 600;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("identity.oidc.issuer: {0}")]
    Issuer(String),
    #[error("identity.oidc.audience must not be empty")]
    EmptyAudience,
    #[error("identity.oidc.groups_claim must not be empty")]
    EmptyGroupsClaim,
    #[error("identity.oidc.allowed_algs: {0}")]
    Algs(String),
    #[error("identity.oidc.leeway_secs must be at most {MAX_LEEWAY_SECS}")]
    Leeway,
    #[error("identity.oidc.{0} must be greater than 0")]
    Zero(&'static str),
    #[error("identity.oidc.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("identity.binding[{index}]: {reason}")]
    Binding { index: usize, reason: &'static str },
}

impl IdentityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.oidc.validate()?;
        validate_bindings(&self.binding)
    }
}

impl OidcConfig {
    /// A config with defaults for everything but the issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            groups_claim: default_groups_claim(),
            leeway_secs: default_leeway(),
            refresh_secs: default_refresh(),
            min_refetch_secs: default_min_refetch(),
            allowed_algs: default_algs(),
            ca_file: None,
            http_timeout_secs: default_http_timeout(),
            token_cache_size: default_cache_size(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_fetch_url(&self.issuer, "issuer").map_err(ConfigError::Issuer)?;
        if self.audience.is_empty() {
            return Err(ConfigError::EmptyAudience);
        }
        if self.groups_claim.is_empty() {
            return Err(ConfigError::EmptyGroupsClaim);
        }
        if self.allowed_algs.is_empty() {
            return Err(ConfigError::Algs("must list at least one algorithm".into()));
        }
        for alg in &self.allowed_algs {
            if !SUPPORTED_ALGS.contains(&alg.as_str()) {
                return Err(ConfigError::Algs(format!(
                    "{alg:?} is not accepted (supported: {}; symmetric algorithms and none never are)",
                    SUPPORTED_ALGS.join(", ")
                )));
            }
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::Leeway);
        }
        for (name, value) in [
            ("refresh_secs", self.refresh_secs),
            ("http_timeout_secs", self.http_timeout_secs),
            ("token_cache_size", self.token_cache_size as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

pub(crate) fn validate_bindings(rules: &[BindingRule]) -> Result<(), ConfigError> {
    for (index, rule) in rules.iter().enumerate() {
        let err = |reason| Err(ConfigError::Binding { index, reason });
        match (&rule.subject, &rule.client_id) {
            (Some(_), Some(_)) | (None, None) => return err("set exactly one of subject or client_id"),
            (Some(s), None) | (None, Some(s)) if s.is_empty() => return err("subject/client_id must not be empty"),
            _ => {}
        }
        if rule.units.is_empty() && rule.uids.is_empty() {
            return err("list units, uids or both");
        }
    }
    Ok(())
}

/// An issuer or JWKS URL: https, or http to a loopback IP literal (tests,
/// a local IdP); never credentials, a query or a fragment.
pub(crate) fn check_fetch_url(raw: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{what} is not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} must not contain credentials"));
    }
    if url.fragment().is_some() {
        return Err(format!("{what} must not contain a fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                _ => false,
            };
            if !loopback {
                return Err(format!(
                    "{what} must use https (http is accepted only for a loopback IP address such as 127.0.0.1)"
                ));
            }
        }
        other => return Err(format!("{what} must use https, not {other}")),
    }
    if url.host().is_none() {
        return Err(format!("{what} has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<IdentityConfig, String> {
        #[derive(Deserialize)]
        struct Root {
            identity: IdentityConfig,
        }
        toml::from_str::<Root>(toml_text)
            .map(|r| r.identity)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bindings_parse() {
        let cfg = parse(
            r#"
            [identity.oidc]
            issuer = "https://idp.example.com/realms/x"
            audience = "loopgate"
            [[identity.binding]]
            subject = "etl-bot"
            units = ["etl.service"]
            [[identity.binding]]
            client_id = "reporter"
            uids = [1001]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.oidc.groups_claim, "groups");
        assert_eq!(cfg.oidc.leeway_secs, 60);
        assert_eq!(cfg.oidc.refresh_secs, 3600);
        assert_eq!(cfg.oidc.allowed_algs, ["RS256", "RS384", "RS512", "PS256", "ES256"]);
        assert_eq!(cfg.binding.len(), 2);
        assert_eq!(cfg.binding[1].uids, [1001]);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("[identity.oidc]\nissuer = \"https://a\"\naudience = \"b\"\nissuers = 1\n").unwrap_err();
        assert!(err.contains("issuers"), "{err}");
    }

    #[test]
    fn issuer_scheme_rules() {
        for ok in ["https://idp.example.com", "http://127.0.0.1:8080/x", "http://[::1]:9/"] {
            OidcConfig::new(ok, "a")
                .validate()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://idp.example.com",
            "http://localhost:8080",
            "http://10.0.0.1",
            "ftp://idp",
            "https://u:p@idp.example.com",
            "not a url",
        ] {
            let err = OidcConfig::new(bad, "a").validate().unwrap_err();
            assert!(matches!(err, ConfigError::Issuer(_)), "{bad}: {err}");
        }
        let msg = OidcConfig::new("http://idp.example.com", "a")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("must use https"), "{msg}");
    }

    #[test]
    fn symmetric_and_none_algs_are_refused() {
        for bad in ["HS256", "none", "rs256"] {
            let mut cfg = OidcConfig::new("https://idp", "a");
            cfg.allowed_algs = vec![bad.into()];
            assert!(matches!(cfg.validate(), Err(ConfigError::Algs(_))), "{bad}");
        }
    }

    #[test]
    fn binding_rules_need_one_selector_and_a_constraint() {
        let rule = |subject: Option<&str>, client: Option<&str>, units: &[&str], uids: &[u32]| BindingRule {
            subject: subject.map(Into::into),
            client_id: client.map(Into::into),
            units: units.iter().map(|u| u.to_string()).collect(),
            uids: uids.to_vec(),
        };
        assert!(validate_bindings(&[rule(Some("a"), None, &["x.service"], &[])]).is_ok());
        assert!(validate_bindings(&[rule(Some("a"), Some("b"), &["x.service"], &[])]).is_err());
        assert!(validate_bindings(&[rule(None, None, &["x.service"], &[])]).is_err());
        assert!(validate_bindings(&[rule(Some("a"), None, &[], &[])]).is_err());
        assert!(validate_bindings(&[rule(Some(""), None, &[], &[1])]).is_err());
    }
}
