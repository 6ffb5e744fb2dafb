//! `OidcValidator`: turns a bearer token into a `ValidatedToken`, or says
//! why not. Signature first (keys from the issuer's JWKS only), then claims.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, SignatureVerificationError};
use rustls::ClientConfig;

use super::binding;
use super::cache::{self, TokenCache};
use super::claims::{self, ClaimRules, ValidatedToken};
use super::config::{BindingRule, ConfigError, IdentityConfig, OidcConfig, validate_bindings};
use super::error::TokenError;
use super::jwt;
use super::keys::{KeyFetchError, KeyStore, has_kid};

/// How much work validations did; lets tests and `loopgate status` see the cache work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValidatorStats {
    /// Discovery + JWKS fetch attempts.
    pub key_fetches: u64,
    /// Signature verifications attempted.
    pub signature_checks: u64,
    /// Validations answered from the validated-token cache.
    pub cache_hits: u64,
}

pub struct OidcValidator {
    config: OidcConfig,
    bindings: Vec<BindingRule>,
    keys: KeyStore,
    cache: TokenCache,
    signature_checks: AtomicU64,
    cache_hits: AtomicU64,
}

impl OidcValidator {
    /// No network here: call [`refresh`](Self::refresh) (and
    /// [`spawn_refresh`](Self::spawn_refresh)) to fetch keys.
    pub fn new(config: OidcConfig, bindings: Vec<BindingRule>) -> Result<Self, ConfigError> {
        config.validate()?;
        validate_bindings(&bindings)?;
        let tls = tls_config(config.ca_file.as_deref())?;
        let keys = KeyStore::new(
            &config.issuer,
            tls,
            Duration::from_secs(config.http_timeout_secs),
            Duration::from_secs(config.min_refetch_secs),
        )
        .map_err(ConfigError::Issuer)?;
        let cache = TokenCache::new(config.token_cache_size, Duration::from_secs(config.leeway_secs));
        Ok(OidcValidator {
            config,
            bindings,
            keys,
            cache,
            signature_checks: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    pub fn from_config(config: &IdentityConfig) -> Result<Self, ConfigError> {
        Self::new(config.oidc.clone(), config.binding.clone())
    }

    /// Fetch discovery and the JWKS now. On failure the cached keys stay.
    pub async fn refresh(&self) -> Result<(), KeyFetchError> {
        self.keys.refresh().await
    }

    /// Refresh the keys every `refresh_secs` until the validator is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = Duration::from_secs(self.config.refresh_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(validator) = weak.upgrade() else { return };
                if let Err(error) = validator.refresh().await {
                    tracing::warn!(issuer = %validator.config.issuer, %error, "scheduled JWKS refresh failed; keeping cached keys");
                }
            }
        })
    }

    pub fn stats(&self) -> ValidatorStats {
        ValidatorStats {
            key_fetches: self.keys.fetches.load(Ordering::Relaxed),
            signature_checks: self.signature_checks.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }

    pub async fn validate(&self, token: &str) -> Result<ValidatedToken, TokenError> {
        let result = self.validate_inner(token).await;
        match &result {
            Ok(t) => tracing::debug!(subject = %t.subject, "token accepted"),
            Err(error) => tracing::info!(%error, "token refused"),
        }
        result
    }

    async fn validate_inner(&self, token: &str) -> Result<ValidatedToken, TokenError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let now = SystemTime::now();
        let key = cache::hash(token);
        if let Some(hit) = self.cache.get(&key, now) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let jws = jwt::parse(token)?;
        jwt::check_header(&jws.header, &self.config.allowed_algs)?;
        let alg: CoreJwsSigningAlgorithm = serde_json::from_value(serde_json::Value::String(jws.header.alg.clone()))
            .map_err(|_| TokenError::UnsupportedAlgorithm)?;
        let kid = jws.header.kid.as_deref();

        let mut set = match self.keys.current() {
            Some(set) => set,
            None => self
                .keys
                .refetch_on_demand(kid)
                .await
                .ok_or(TokenError::KeysUnavailable)?,
        };
        if let Some(kid) = kid
            && !has_kid(&set, kid)
        {
            set = self
                .keys
                .refetch_on_demand(Some(kid))
                .await
                .ok_or(TokenError::KeysUnavailable)?;
        }
        self.verify_signature(&set, kid, &alg, jws.signing_input, &jws.signature)?;

        let rules = ClaimRules {
            issuer: &self.config.issuer,
            audience: &self.config.audience,
            groups_claim: &self.config.groups_claim,
            leeway_secs: self.config.leeway_secs,
        };
        let validated = claims::check(&jws.claims, &rules, now)?;
        self.cache.insert(key, validated.clone());
        Ok(validated)
    }

    /// With a `kid`, only that key; without, every key of a matching type
    /// (issuers with one key often omit `kid`).
    fn verify_signature(
        &self,
        set: &CoreJsonWebKeySet,
        kid: Option<&str>,
        alg: &CoreJwsSigningAlgorithm,
        input: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let candidates = set
            .keys()
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.key_id().is_some_and(|id| id.as_str() == kid)));
        let mut any_compatible = false;
        let mut any_candidate = false;
        for key in candidates {
            any_candidate = true;
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            match key.verify_signature(alg, input, signature) {
                Ok(()) => return Ok(()),
                Err(SignatureVerificationError::InvalidKey(_)) => {}
                Err(_) => any_compatible = true,
            }
        }
        if !any_candidate {
            Err(TokenError::UnknownKey)
        } else if !any_compatible {
            // The named key exists but is of another type (or not for signing):
            // the header's alg does not belong to it.
            Err(TokenError::UnsupportedAlgorithm)
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// The second factor: a bound subject's token only from its process.
    pub fn check_binding(&self, token: &ValidatedToken, uid: u32, unit: Option<&str>) -> Result<(), TokenError> {
        binding::check(&self.bindings, token, uid, unit)
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConfigError> {
    crate::http::client_tls(ca_file).map_err(|reason| ConfigError::CaFile {
        path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
        reason,
    })
}
