//! The issuer's signing keys: discovery, JWKS fetch, cache. Keys are replaced
//! only by a successful fetch, so an unreachable issuer leaves the last good
//! set in service; fetches caused by unknown `kid`s are rate limited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::JsonWebKey;
use openidconnect::core::CoreJsonWebKeySet;
use rustls::ClientConfig;
use serde::Deserialize;
use url::Url;

use super::config::check_fetch_url;
use crate::http::{FetchError, HttpClient, Timeouts};

/// Why the key set could not be (re)fetched; for logs, not for clients.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error("discovery document {url}: {source}")]
    Discovery {
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("JWKS {url}: {source}")]
    Jwks {
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("discovery document is not valid: {0}")]
    BadDiscovery(String),
    #[error("JWKS is not valid: {0}")]
    BadJwks(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

pub(crate) struct KeyStore {
    issuer: String,
    discovery_url: Url,
    http: HttpClient,
    min_refetch: Duration,
    keys: RwLock<Option<Arc<CoreJsonWebKeySet>>>,
    /// Serialises fetches (one in flight) and holds their bookkeeping.
    fetch: tokio::sync::Mutex<FetchState>,
    pub(crate) fetches: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    jwks_uri: Option<Url>,
    last_on_demand: Option<Instant>,
}

impl KeyStore {
    pub fn new(issuer: &str, tls: Arc<ClientConfig>, timeout: Duration, min_refetch: Duration) -> Result<Self, String> {
        let base = check_fetch_url(issuer, "issuer")?;
        // OIDC Discovery §4: the well-known path is appended to the issuer's path.
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            base.as_str().trim_end_matches('/')
        );
        let discovery_url = Url::parse(&discovery).map_err(|e| e.to_string())?;
        Ok(KeyStore {
            issuer: issuer.to_string(),
            discovery_url,
            http: HttpClient::new(tls, Timeouts::total(timeout)),
            min_refetch,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            fetches: AtomicU64::new(0),
        })
    }

    pub fn current(&self) -> Option<Arc<CoreJsonWebKeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Scheduled refresh: discovery, then the JWKS.
    pub async fn refresh(&self) -> Result<(), KeyFetchError> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// Fetch because a token named a key we do not have (or no key set was
    /// ever fetched). Returns the set to try; `None` if still nothing.
    pub async fn refetch_on_demand(&self, kid: Option<&str>) -> Option<Arc<CoreJsonWebKeySet>> {
        let mut state = self.fetch.lock().await;
        // Another task may have fetched while we waited for the lock.
        if let Some(set) = self.current()
            && kid.is_some_and(|kid| has_kid(&set, kid))
        {
            return Some(set);
        }
        if let Some(last) = state.last_on_demand
            && last.elapsed() < self.min_refetch
        {
            tracing::debug!(issuer = %self.issuer, "JWKS refetch skipped: rate limited");
            return self.current();
        }
        state.last_on_demand = Some(Instant::now());
        if let Err(error) = self.fetch_locked(&mut state).await {
            tracing::warn!(issuer = %self.issuer, %error, "JWKS refetch failed; keeping cached keys");
        }
        self.current()
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<(), KeyFetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        // Rediscover every time (the jwks_uri may move) but fall back to the
        // last known one when only discovery fails.
        let jwks_uri = match self.discover().await {
            Ok(uri) => {
                state.jwks_uri = Some(uri.clone());
                uri
            }
            Err(error) => match &state.jwks_uri {
                Some(uri) => {
                    tracing::warn!(issuer = %self.issuer, %error, "discovery failed; using the last known jwks_uri");
                    uri.clone()
                }
                None => return Err(error),
            },
        };
        let body = self.http.get(&jwks_uri).await.map_err(|source| KeyFetchError::Jwks {
            url: jwks_uri.to_string(),
            source,
        })?;
        let set: CoreJsonWebKeySet =
            serde_json::from_slice(&body).map_err(|e| KeyFetchError::BadJwks(e.to_string()))?;
        // A set without one usable key is a broken answer, not a rotation.
        if set.keys().is_empty() {
            return Err(KeyFetchError::BadJwks("no usable keys".into()));
        }
        tracing::info!(issuer = %self.issuer, keys = set.keys().len(), "JWKS fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
        Ok(())
    }

    async fn discover(&self) -> Result<Url, KeyFetchError> {
        let body = self
            .http
            .get(&self.discovery_url)
            .await
            .map_err(|source| KeyFetchError::Discovery {
                url: self.discovery_url.to_string(),
                source,
            })?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| KeyFetchError::BadDiscovery(e.to_string()))?;
        // OIDC Discovery §4.3: the document must name the issuer we asked.
        if doc.issuer != self.issuer {
            return Err(KeyFetchError::BadDiscovery(format!(
                "issuer {:?} does not match the configured issuer",
                doc.issuer
            )));
        }
        check_fetch_url(&doc.jwks_uri, "jwks_uri").map_err(KeyFetchError::BadDiscovery)
    }
}

pub(crate) fn has_kid(set: &CoreJsonWebKeySet, kid: &str) -> bool {
    set.keys()
        .iter()
        .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
}
